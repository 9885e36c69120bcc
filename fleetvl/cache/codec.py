"""Cache values: raw array bytes behind a small versioned header. Never pickle.

A value is read from a shared Redis that other processes (and, in the worst case, an attacker
with network access to it) can write, so decoding trusts nothing: every length, dtype and shape
is checked against the bytes actually present, a checksum covers the body, and a tag ties the
value to the key it was written under (a value copied to another key is rejected). Anything
off raises :class:`CacheEntryError` with the reason; callers count it and recompute.

Layout (little-endian)::

    header  magic "FVLC" | version u8 | kind u8 | quant u8 | n_arrays u8
            | part u16 | n_parts u16 | layer_start u16 | layer_end u16 | tag 16B | body_len u64
    arrays  n_arrays x (dtype u8 | ndim u8 | ndim x u32)
    check   blake2b-64 of body
    body    the arrays' bytes, C order, concatenated
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

__all__ = [
    "CacheEntryError",
    "EntryKind",
    "Quant",
    "Value",
    "decode_value",
    "encode_value",
    "key_tag",
]

MAGIC = b"FVLC"
VERSION = 1
_HEADER = struct.Struct("<4sBBBBHHHH16sQ")
_ARRAY = struct.Struct("<BB")
_CHECK_LEN = 8
MAX_ARRAYS = 8
MAX_NDIM = 6

_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("u1"),
    5: np.dtype("<i4"),
    6: np.dtype("<i8"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}


class EntryKind(IntEnum):
    KV = 1
    VISION = 2
    RESPONSE = 3
    IMAGE = 4


class Quant(IntEnum):
    NONE = 0
    INT8_KV = 1  # keys per-channel, values per-token symmetric scales (fleetvl/cache/kv_quant.py)


class CacheEntryError(ValueError):
    """A cache value that cannot be trusted; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def key_tag(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


@dataclass
class Value:
    kind: EntryKind
    arrays: list[np.ndarray]
    quant: Quant = Quant.NONE
    part: int = 0
    n_parts: int = 1
    layer_start: int = 0
    layer_end: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def encode_value(key: str, value: Value) -> bytes:
    if len(value.arrays) > MAX_ARRAYS:
        raise ValueError(f"at most {MAX_ARRAYS} arrays per value")
    descs = []
    bodies = []
    for a in value.arrays:
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt not in _CODES:
            raise ValueError(f"dtype {a.dtype} cannot be cached")
        if a.ndim > MAX_NDIM:
            raise ValueError(f"at most {MAX_NDIM} dimensions")
        descs.append(_ARRAY.pack(_CODES[dt], a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
        bodies.append(np.ascontiguousarray(a, dtype=dt).tobytes())
    body = b"".join(bodies)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        int(value.kind),
        int(value.quant),
        len(value.arrays),
        value.part,
        value.n_parts,
        value.layer_start,
        value.layer_end,
        key_tag(key),
        len(body),
    )
    check = hashlib.blake2b(body, digest_size=_CHECK_LEN).digest()
    return b"".join([header, *descs, check, body])


def decode_value(key: str, data: bytes, kind: EntryKind) -> Value:
    """Parse and verify ``data`` read from ``key``; arrays are read-only views of ``data``."""
    if len(data) < _HEADER.size:
        raise CacheEntryError("truncated", f"{len(data)} bytes is shorter than the header")
    (magic, version, k, quant, n_arrays, part, n_parts, l0, l1, tag, body_len) = (
        _HEADER.unpack_from(data, 0)
    )
    if magic != MAGIC:
        raise CacheEntryError("bad_magic", "not a FleetVL cache value")
    if version != VERSION:
        raise CacheEntryError("bad_version", f"format version {version}, expected {VERSION}")
    if k != kind:
        raise CacheEntryError("wrong_kind", f"entry kind {k}, expected {int(kind)}")
    if tag != key_tag(key):
        raise CacheEntryError("wrong_key", "value was written under another key")
    try:
        quant_e = Quant(quant)
    except ValueError:
        raise CacheEntryError("bad_quant", f"unknown quantization {quant}") from None
    if not 0 < n_arrays <= MAX_ARRAYS or not 0 <= part < n_parts:
        raise CacheEntryError("bad_header", f"{n_arrays} arrays, part {part}/{n_parts}")
    off = _HEADER.size
    shapes: list[tuple[np.dtype, tuple[int, ...]]] = []
    for _ in range(n_arrays):
        if off + _ARRAY.size > len(data):
            raise CacheEntryError("truncated", "array table cut short")
        code, ndim = _ARRAY.unpack_from(data, off)
        off += _ARRAY.size
        if code not in _DTYPES or ndim > MAX_NDIM or off + 4 * ndim > len(data):
            raise CacheEntryError("bad_header", f"dtype code {code}, ndim {ndim}")
        shape = struct.unpack_from(f"<{ndim}I", data, off)
        off += 4 * ndim
        shapes.append((_DTYPES[code], shape))
    need = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize for dt, s in shapes)
    if need != body_len or off + _CHECK_LEN + body_len != len(data):
        raise CacheEntryError(
            "size_mismatch",
            f"header says {body_len} body bytes, arrays need {need}, "
            f"value holds {len(data) - off - _CHECK_LEN}",
        )
    check = data[off : off + _CHECK_LEN]
    off += _CHECK_LEN
    mv = memoryview(data)[off:]
    if hashlib.blake2b(mv, digest_size=_CHECK_LEN).digest() != check:
        raise CacheEntryError("checksum", "body does not match its checksum")
    arrays = []
    pos = 0
    for dt, shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(mv, dtype=dt, count=n, offset=pos).reshape(shape))
        pos += n * dt.itemsize
    return Value(EntryKind(k), arrays, quant_e, part, n_parts, l0, l1)
