"""Image decoding safety and preprocessing parity with transformers' Qwen2-VL processor."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fleetvl.errors import ImageError, ImageTooLarge, UnsupportedImageFormat
from fleetvl.vlm.image import ImageConfig, decode_image, preprocess, smart_resize
from tests.helpers import png_bytes, random_image


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [(448, 448, (448, 448)), (100, 150, (112, 140)), (10, 10, (56, 56)), (4000, 3000, (1148, 840))],
)
def test_smart_resize_keeps_multiples_and_budget(h: int, w: int, expected: tuple[int, int]) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    got = smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280)
    assert got == expected == ref(h, w, 28, 56 * 56, 28 * 28 * 1280)
    assert got[0] % 28 == 0
    assert got[1] % 28 == 0
    assert got[0] * got[1] <= 28 * 28 * 1280


def test_smart_resize_refuses_extreme_aspect() -> None:
    with pytest.raises(ImageError, match="aspect ratio"):
        smart_resize(10, 5000)


@pytest.mark.parametrize(("h", "w"), [(100, 150), (300, 200), (57, 431), (28, 28), (640, 480)])
def test_pixels_match_transformers_bit_for_bit(h: int, w: int) -> None:
    from transformers import Qwen2VLImageProcessorPil

    cfg = ImageConfig(min_pixels=3136, max_pixels=28 * 28 * 256)
    ref_proc = Qwen2VLImageProcessorPil(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    img = random_image(h, w, seed=h * w)
    ref = ref_proc(images=[img], return_tensors="np")
    ours = preprocess(img, cfg)
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0])
    np.testing.assert_array_equal(ours.pixel_values, ref["pixel_values"])


def test_digest_depends_on_pixels_and_settings() -> None:
    img = random_image(64, 64, seed=1)
    a = preprocess(img, ImageConfig())
    b = preprocess(random_image(64, 64, seed=2), ImageConfig())
    c = preprocess(img, ImageConfig(max_pixels=28 * 28 * 4))
    assert a.digest == preprocess(img, ImageConfig()).digest
    assert len({a.digest, b.digest, c.digest}) == 3


def test_decode_rejects_empty_and_garbage() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"this is not an image at all" * 10)


def test_decode_rejects_truncated_png() -> None:
    data = png_bytes(random_image(200, 200))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_decode_rejects_unsupported_format() -> None:
    import io

    buf = io.BytesIO()
    random_image(32, 32).save(buf, format="TIFF")
    with pytest.raises(UnsupportedImageFormat, match="TIFF"):
        decode_image(buf.getvalue())


def _png_declaring(width: int, height: int) -> bytes:
    """A syntactically valid PNG header that declares a huge canvas (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as err:
        decode_image(_png_declaring(60_000, 60_000), max_input_pixels=40_000_000)
    assert err.value.width == 60_000
    assert "over the budget" in str(err.value)


def test_decode_converts_to_rgb() -> None:
    gray = random_image(40, 30).convert("L")
    img = decode_image(png_bytes(gray))
    assert img.mode == "RGB"
    assert img.size == (30, 40)
