"""Content-addressed cache keys, namespaced by model bundle digest (and tenant if isolated).

    fleetvl:cache:1:<model>[:t=<tenant>]:kv:<fmt>:b<block>:<chain hash>:<layers>   prefix KV
    fleetvl:cache:1:<model>[:t=<tenant>]:vis:<fmt>:<image digest>:<part>    vision encoder output
    fleetvl:cache:1:<model>[:t=<tenant>]:resp:<request digest>              final answer
    fleetvl:cache:1:img[:t=<tenant>]:<sha256 of the bytes>:<part>           image blob (all models)

(the root is fleetvl.redis_keys.CACHE: every FleetVL key starts with ``fleetvl:``).

Prefix blocks are chained as in vLLM: a block's hash covers its parent's hash, its token ids
and the digests of the images whose placeholder tokens fall inside it, so equal hashes mean an
equal prompt prefix, images and MRoPE positions included.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleetvl.redis_keys import CACHE

__all__ = [
    "ImageSpan",
    "Namespace",
    "block_hashes",
    "image_key",
    "request_digest",
]

ROOT = CACHE
_DIGEST = re.compile(r"^[0-9a-f]{16,128}$")


def _tenant_part(tenant: str | None) -> str:
    if tenant is None:
        return ""
    # Hashed: tenant names are free text and must not shape the key space.
    return ":t=" + hashlib.sha256(tenant.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Namespace:
    """Keys of one model (bundle digest), optionally isolated per tenant."""

    model_digest: str
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not _DIGEST.match(self.model_digest):
            raise ValueError(f"model digest {self.model_digest!r} is not a hex digest")

    @property
    def prefix(self) -> str:
        return f"{ROOT}:{self.model_digest[:32]}{_tenant_part(self.tenant)}"

    @property
    def root_hash(self) -> bytes:
        return hashlib.sha256(self.prefix.encode()).digest()

    def kv(self, fmt: str, block: int, block_hash: bytes, layers: tuple[int, int]) -> str:
        return f"{self.prefix}:kv:{fmt}:b{block}:{block_hash.hex()}:{layers[0]}-{layers[1]}"

    def vision(self, fmt: str, image_digest: str, part: int) -> str:
        return f"{self.prefix}:vis:{fmt}:{image_digest}:{part}"

    def response(self, request_digest: str) -> str:
        return f"{self.prefix}:resp:{request_digest}"


def image_key(digest: str, part: int, tenant: str | None = None) -> str:
    if not _DIGEST.match(digest):
        raise ValueError(f"image digest {digest!r} is not a hex digest")
    return f"{ROOT}:img{_tenant_part(tenant)}:{digest}:{part}"


@dataclass(frozen=True)
class ImageSpan:
    """An image's placeholder tokens ``[start, end)`` in the prompt and its digest."""

    start: int
    end: int
    digest: str


def block_hashes(
    root: bytes, token_ids: np.ndarray, block_size: int, images: Sequence[ImageSpan] = ()
) -> list[bytes]:
    """Chain hashes of the prompt's full blocks."""
    ids = np.ascontiguousarray(token_ids, dtype="<i8")
    out = []
    parent = root
    for b in range(len(ids) // block_size):
        lo, hi = b * block_size, (b + 1) * block_size
        h = hashlib.sha256(parent)
        h.update(ids[lo:hi].tobytes())
        for span in images:
            if span.start < hi and span.end > lo:
                h.update(span.digest.encode())
        parent = h.digest()
        out.append(parent)
    return out


def request_digest(model_digest: str, messages: object, params: Mapping[str, object]) -> str:
    """Digest of (model, messages, generation parameters); images must be given as digests."""
    canon = json.dumps(
        {"model": model_digest, "messages": messages, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canon.encode()).hexdigest()
