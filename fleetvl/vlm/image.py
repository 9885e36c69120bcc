"""Qwen2-VL / Qwen2.5-VL image preprocessing in NumPy + Pillow, without transformers.

The arithmetic mirrors transformers' PIL backend (`Qwen2VLImageProcessorPil`) step for step —
bicubic resize on uint8, rescale in float64 then cast to float32, normalize in float32,
patchify to ``[patches, C * T * P * P]`` — so the edge engine feeds the vision encoder exactly
what the cloud's transformers model sees. Parity is tested against transformers.

Decoding is defensive: the header is read first and the pixel budget enforced before any
pixel is decoded, so a 100k x 100k PNG costs nothing but an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from PIL import Image, UnidentifiedImageError

from fleetvl.errors import ImageError, ImageTooLarge, UnsupportedImageFormat
from fleetvl.vlm.camera import camera_vector, thumbnail

__all__ = [
    "ImageConfig",
    "ImageInput",
    "PreprocessedImage",
    "PreprocessorConfig",
    "decode_image",
    "prepare_image",
    "preprocess",
    "smart_resize",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class PreprocessorConfig(TypedDict, total=False):
    """The keys of a Hugging Face ``preprocessor_config.json`` read here (others are ignored);
    ``size``: ``shortest_edge`` / ``longest_edge`` in pixels (the newer convention)."""

    size: dict[str, int]
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: list[float]
    image_std: list[float]


@dataclass(frozen=True)
class ImageConfig:
    """Preprocessing settings; part of every image digest and of the bundle digest."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN  # per RGB channel
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    # Refuse to decode anything larger: the decompression-bomb guard.
    max_input_pixels: int = 40_000_000

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_preprocessor_config(cls, cfg: PreprocessorConfig) -> ImageConfig:
        """Read a Hugging Face ``preprocessor_config.json`` dict (either size convention)."""
        size = cfg.get("size") or {}
        min_pixels = cfg.get("min_pixels", size.get("shortest_edge", cls.min_pixels))
        max_pixels = cfg.get("max_pixels", size.get("longest_edge", cls.max_pixels))
        return cls(
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            patch_size=int(cfg.get("patch_size", cls.patch_size)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", cls.temporal_patch_size)),
            merge_size=int(cfg.get("merge_size", cls.merge_size)),
            image_mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        )

    def fingerprint(self) -> str:
        """Stable text form of every setting that changes the pixels fed to the encoder."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "max_input_pixels"}
        return json.dumps(d, sort_keys=True)


@dataclass
class PreprocessedImage:
    """One image ready for the vision encoder."""

    pixel_values: np.ndarray  # float32 [grid_t * grid_h * grid_w, patch_dim]
    grid_thw: tuple[int, int, int]
    digest: str = field(default="")  # sha256 over decoded pixels + preprocessing settings
    # uint8 [THUMB, THUMB, 3] of the resized image, for the out-of-scope score's camera part
    # (fleetvl.vlm.scope); None for images built elsewhere.
    thumb: np.ndarray | None = field(default=None, repr=False)
    camera: np.ndarray | None = field(default=None, repr=False)  # scope.camera_vector(thumb)
    scope_s: float = 0.0  # time preprocessing spent on the two fields above

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w

    def num_tokens(self, merge_size: int = 2) -> int:
        """Placeholder tokens this image occupies in the prompt (after the 2x2 merger)."""
        return self.num_patches // (merge_size * merge_size)


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Target size: both sides multiples of ``factor``, area within [min, max], aspect kept."""
    if min(height, width) <= 0:
        raise ImageError(f"image has an empty side: {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ImageError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is over 200:1"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def decode_image(data: bytes, max_input_pixels: int = ImageConfig.max_input_pixels) -> Image.Image:
    """Decode untrusted bytes into an RGB image, or raise a typed :class:`ImageError`.

    The header is parsed first; the pixel budget is checked before the pixels are decoded.
    """
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x errors) on its own bomb limit; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
    except UnidentifiedImageError as exc:
        raise ImageError("image bytes are not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image header declares an absurd size: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image header is corrupt: {exc}") from exc
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedImageFormat(fmt, ALLOWED_FORMATS)
    if width * height > max_input_pixels:
        raise ImageTooLarge(width, height, max_input_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # our own budget above replaces Pillow's
            img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image data is truncated or corrupt: {exc}") from exc
    return img.convert("RGB") if img.mode != "RGB" else img


def _to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode != "RGB" else image
        arr = np.asarray(image)
    else:
        arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


def image_digest(rgb: np.ndarray, cfg: ImageConfig) -> str:
    """Content address of an image: decoded pixels + the preprocessing that will be applied."""
    h = hashlib.sha256()
    h.update(f"{rgb.shape[0]}x{rgb.shape[1]}|".encode())
    h.update(cfg.fingerprint().encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def preprocess(
    image: Image.Image | np.ndarray, cfg: ImageConfig | None = None
) -> PreprocessedImage:
    """Resize, normalize and patchify one RGB image for the Qwen-VL vision encoder."""
    cfg = cfg or ImageConfig()
    rgb = _to_rgb_array(image)
    height, width = rgb.shape[:2]
    rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    if (rh, rw) != (height, width):
        resized = Image.fromarray(rgb).resize((rw, rh), resample=Image.Resampling.BICUBIC)
        arr = np.asarray(resized)
    else:
        arr = rgb
    chw = np.moveaxis(arr, -1, 0)
    # transformers rescales in float64 and casts, then normalizes in float32: same here, so
    # the encoder inputs match bit for bit.
    x = (chw.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
    x = (x - mean) / std
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = rh // p, rw // p
    patches = x.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(
        patches[:, :, :, :, :, None, :, :], (*patches.shape[:5], t, *patches.shape[5:])
    )
    flat = np.ascontiguousarray(patches.reshape(gh * gw, 3 * t * p * p), dtype=np.float32)
    digest = image_digest(rgb, cfg)
    t0 = time.perf_counter()
    thumb = thumbnail(arr)
    camera = camera_vector(thumb)
    return PreprocessedImage(
        pixel_values=flat,
        grid_thw=(1, gh, gw),
        digest=digest,
        thumb=thumb,
        camera=camera,
        scope_s=time.perf_counter() - t0,
    )


ImageInput = bytes | bytearray | Image.Image | np.ndarray | PreprocessedImage


def prepare_image(image: ImageInput, cfg: ImageConfig) -> PreprocessedImage:
    """An image of any kind an engine accepts, preprocessed; bytes are untrusted (see
    :func:`decode_image`), and an already preprocessed image is passed through."""
    if isinstance(image, PreprocessedImage):
        return image
    if isinstance(image, bytes | bytearray):
        return preprocess(decode_image(bytes(image), cfg.max_input_pixels), cfg)
    return preprocess(image, cfg)
