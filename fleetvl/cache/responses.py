"""Final answers by digest of (model, messages, generation parameters).

Only deterministic requests are cached (greedy decoding, or sampling with a fixed seed):
replaying a sampled answer to a request that asked for fresh randomness would be wrong.
Values are JSON inside the checked container, validated on read.
"""

from __future__ import annotations

import json
from typing import NotRequired, TypedDict, cast

import numpy as np

from fleetvl.cache import metrics
from fleetvl.cache.codec import CacheEntryError, EntryKind, Value, decode_value, encode_value
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import Namespace
from fleetvl.cache.store import RedisStore

__all__ = ["ResponseCache", "StoredAnswer", "decode_answer", "encode_answer"]


class StoredAnswer(TypedDict):
    """A cached answer's JSON (``confidence``: the :class:`AnswerConfidence` summary; older
    entries may lack it or some of its fields)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    confidence: NotRequired[dict[str, float]]


_REQUIRED = {"text": str, "token_ids": list, "finish_reason": str}


class ResponseCache:
    kind = "response"

    def __init__(self, store: RedisStore, ns: Namespace, config: CacheConfig) -> None:
        self.store = store
        self.ns = ns
        self.ttl = config.ttl_response_s
        self.max_bytes = config.max_value_bytes

    def get(self, request_digest: str) -> StoredAnswer | None:
        key = self.ns.response(request_digest)
        raw = self.store.mget([key])
        if not raw or raw[0] is None:
            if raw is not None:
                metrics.MISSES.labels(self.kind).inc()
            return None
        try:
            answer = decode_answer(key, raw[0])
        except CacheEntryError as exc:
            metrics.REJECTED.labels(self.kind, exc.reason).inc()
            self.store.delete([key])
            return None
        metrics.HITS.labels(self.kind).inc()
        metrics.BYTES_READ.labels(self.kind).inc(len(raw[0]))
        return answer

    def put_async(self, request_digest: str, answer: StoredAnswer) -> bool:
        key = self.ns.response(request_digest)
        data = encode_answer(key, answer, self.max_bytes)
        if data is None:
            return False

        def job() -> None:
            if self.store.set_many([(key, data)], self.ttl):
                metrics.BYTES_WRITTEN.labels(self.kind).inc(len(data))

        return self.store.submit(job)


def encode_answer(key: str, answer: StoredAnswer, max_bytes: int) -> bytes | None:
    """``answer`` as the checked value stored under ``key``; None when it is too long to be
    worth a Redis slot."""
    body = np.frombuffer(json.dumps(answer, separators=(",", ":")).encode(), np.uint8)
    if body.nbytes > max_bytes - 512:
        return None
    return encode_value(key, Value(EntryKind.RESPONSE, [body]))


def decode_answer(key: str, raw: bytes) -> StoredAnswer:
    """The answer stored under ``key``.

    Raises:
        CacheEntryError: not a checked answer for this key, or it lacks a required field.
    """
    value = decode_value(key, raw, EntryKind.RESPONSE)
    try:
        obj = json.loads(value.arrays[0].tobytes())
    except ValueError as exc:
        raise CacheEntryError("bad_json", str(exc)) from None
    if not isinstance(obj, dict) or any(
        not isinstance(obj.get(f), t) for f, t in _REQUIRED.items()
    ):
        raise CacheEntryError("bad_json", "response lacks text/token_ids/finish_reason")
    return cast(StoredAnswer, obj)
