"""Cache values: exact round trips, and every kind of damage rejected with a reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fleetvl.cache.codec import (
    CacheEntryError,
    EntryKind,
    Quant,
    Value,
    decode_value,
    encode_value,
)
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import ImageSpan, Namespace, block_hashes, request_digest
from fleetvl.cache.kv_quant import bytes_per_token, dequantize, quantize

KEY = "fleetvl:cache:1:abc:kv:fp16:b64:00:0-4"


def _value() -> Value:
    rng = np.random.default_rng(0)
    return Value(
        EntryKind.KV,
        [rng.standard_normal((2, 3, 4, 5)).astype(np.float16), np.arange(6, dtype=np.int8)],
        layer_start=2,
        layer_end=4,
    )


def test_round_trip_is_exact() -> None:
    v = _value()
    out = decode_value(KEY, encode_value(KEY, v), EntryKind.KV)
    assert (out.layer_start, out.layer_end) == (2, 4)
    for a, b in zip(v.arrays, out.arrays, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-1], "size_mismatch"),
        (lambda d: d + b"\0", "size_mismatch"),
        (lambda d: _flip(d, len(d) - 1), "checksum"),
        (lambda d: b"XXXX" + d[4:], "bad_magic"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "bad_version"),
        (lambda d: d[:5] + bytes([EntryKind.IMAGE]) + d[6:], "wrong_kind"),
        (lambda d: d[:6] + bytes([77]) + d[7:], "bad_quant"),
        (lambda d: b"\x80\x04\x95" + d[3:], "bad_magic"),  # a pickle is not a value
    ],
)
def test_damaged_values_are_rejected(damage, reason: str) -> None:  # noqa: ANN001
    data = encode_value(KEY, _value())
    with pytest.raises(CacheEntryError) as err:
        decode_value(KEY, damage(data), EntryKind.KV)
    assert err.value.reason == reason


def test_a_shape_claiming_more_bytes_than_present_is_rejected() -> None:
    data = bytearray(encode_value(KEY, _value()))
    # First array's first dimension: right after the fixed header and its dtype/ndim bytes.
    off = struct.calcsize("<4sBBBBHHHH16sQ") + 2
    struct.pack_into("<I", data, off, 1 << 30)
    with pytest.raises(CacheEntryError, match="size_mismatch"):
        decode_value(KEY, bytes(data), EntryKind.KV)


def test_value_copied_to_another_key_is_rejected() -> None:
    data = encode_value(KEY, _value())
    with pytest.raises(CacheEntryError) as err:
        decode_value(KEY.replace("b64:00", "b64:01"), data, EntryKind.KV)
    assert err.value.reason == "wrong_key"


def test_int8_kv_error_is_bounded_and_bytes_about_half_of_fp16() -> None:
    rng = np.random.default_rng(1)
    k = rng.standard_normal((3, 2, 64, 64)).astype(np.float32)
    k[:, :, :, 5] *= 20  # an outlier channel, as real keys have
    v = rng.standard_normal((3, 2, 64, 64)).astype(np.float32)
    arrays, quant = quantize(k, v, "int8")
    assert quant == Quant.INT8_KV
    k2, v2 = dequantize(arrays, quant)
    # Per-channel key scales: the outlier channel does not blow up the others' error.
    assert np.abs(k2 - k)[:, :, :, :5].max() < 0.03
    assert np.abs(v2 - v).max() <= np.abs(v).max() / 127
    stored = sum(a.nbytes for a in arrays)
    fp16 = sum(a.nbytes for a in quantize(k, v, "fp16")[0])
    assert stored / fp16 == pytest.approx(bytes_per_token("int8", 3, 2, 64, 64) / (3 * 2 * 64 * 4))
    assert stored / fp16 < 0.55


def test_fp32_kv_is_lossless() -> None:
    k = np.random.default_rng(2).standard_normal((1, 2, 8, 4)).astype(np.float32)
    k2, v2 = dequantize(*quantize(k, -k, "fp32"))
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(v2, -k)


def test_chain_hashes_cover_parents_tokens_and_images() -> None:
    root = Namespace("ab" * 32).root_hash
    ids = np.arange(10, 42)
    base = block_hashes(root, ids, 8, [ImageSpan(9, 20, "aa")])
    assert len(base) == 4
    changed = ids.copy()
    changed[12] = 0
    alt = block_hashes(root, changed, 8, [ImageSpan(9, 20, "aa")])
    assert alt[0] == base[0]
    assert alt[1] != base[1]
    assert alt[3] != base[3]
    # Same tokens, another image: every block from the image on differs.
    other = block_hashes(root, ids, 8, [ImageSpan(9, 20, "bb")])
    assert other[0] == base[0]
    assert all(a != b for a, b in zip(other[1:], base[1:], strict=True))
    # Another model's namespace shares nothing.
    assert not set(block_hashes(Namespace("cd" * 32).root_hash, ids, 8)) & set(base)


def test_namespaces_separate_models_and_tenants() -> None:
    a, b = Namespace("ab" * 32), Namespace("ab" * 32, tenant="acme")
    assert a.response("x") != b.response("x")
    assert "acme" not in b.prefix  # hashed, never raw text in keys
    with pytest.raises(ValueError, match="hex digest"):
        Namespace("../../etc")


def test_request_digest_depends_on_every_part() -> None:
    base = request_digest("m", [{"role": "user", "content": "q"}], {"temperature": 0})
    assert base != request_digest("m2", [{"role": "user", "content": "q"}], {"temperature": 0})
    assert base != request_digest("m", [{"role": "user", "content": "q?"}], {"temperature": 0})
    assert base != request_digest("m", [{"role": "user", "content": "q"}], {"temperature": 1})


def test_config_refuses_unknown_formats_and_schemes() -> None:
    with pytest.raises(ValueError, match="kv_format"):
        CacheConfig(kv_format="int3")
    with pytest.raises(ValueError, match="redis://"):
        CacheConfig(url="http://127.0.0.1:6379")
