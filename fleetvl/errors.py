"""The error hierarchy every tier raises and every API edge maps to a status.

Each error carries structured fields so an API layer can render a precise message (HTTP 4xx,
gRPC status) without parsing strings. Input errors are the caller's fault and are safe to
show; everything else is ours.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "FleetVLError",
    "GenerationCancelled",
    "ImageError",
    "ImageTooLarge",
    "InputError",
    "PromptError",
    "UnsupportedImageFormat",
]


class FleetVLError(Exception):
    """Base of every error FleetVL raises on purpose."""


class InputError(FleetVLError):
    """The request itself is invalid; retrying it unchanged cannot succeed (HTTP 4xx)."""


class ImageError(InputError):
    """Image bytes that cannot be decoded: corrupt, truncated or empty."""


class UnsupportedImageFormat(ImageError):
    """A decodable container whose format is not on the allow-list."""

    def __init__(self, fmt: str | None, allowed: tuple[str, ...]) -> None:
        self.format = fmt
        self.allowed = allowed
        super().__init__(
            f"image format {fmt or 'unknown'!r} is not supported; send one of {', '.join(allowed)}"
        )


class ImageTooLarge(ImageError):
    """More pixels than the configured budget: refused before decoding (decompression bombs)."""

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        self.width = width
        self.height = height
        self.max_pixels = max_pixels
        super().__init__(
            f"image is {width}x{height} = {width * height} pixels, over the budget of "
            f"{max_pixels} pixels; downscale it before sending"
        )


class PromptError(InputError):
    """Empty prompt, too many tokens for the model's context, or malformed messages."""


class BundleError(FleetVLError):
    """A model bundle directory that is missing files, inconsistent or corrupt."""


class GenerationCancelled(FleetVLError):
    """The caller cancelled a generation; tokens produced so far were already delivered."""
