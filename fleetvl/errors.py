"""The error hierarchy every tier raises and every API edge maps to a status.

Each error carries structured fields so an API layer can render a precise message without
parsing strings. The core and the tiers raise these and never a transport's status: one table
per transport maps them (HTTP and OpenAI's error envelope: :mod:`fleetvl.protocol.http_front`;
gRPC: :mod:`fleetvl.protocol.grpc_status`). Input errors are the caller's fault and are safe
to show; :class:`ServiceError` and its kinds say what went wrong on our side; anything else
is a bug (500, logged).
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "FleetVLError",
    "GenerationCancelled",
    "ImageError",
    "ImageTooLarge",
    "InputError",
    "InvalidFields",
    "ModelNotFound",
    "NO_ANSWER_CACHE",
    "NotCached",
    "PromptError",
    "ServiceError",
    "StorageFull",
    "TooManyImages",
    "Unavailable",
    "Unsupported",
    "UnsupportedImageFormat",
    "UpstreamError",
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


class ContextLengthExceeded(PromptError):
    """The prompt (estimated or counted) does not fit the model's context."""

    def __init__(self, tokens: int, limit: int, estimated: bool = True) -> None:
        self.tokens = tokens
        self.limit = limit
        how = "about " if estimated else ""
        super().__init__(
            f"the prompt is {how}{tokens} tokens, over this model's context of {limit} "
            "tokens; shorten the messages or send fewer images"
        )


class TooManyImages(InputError):
    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"{count} images in one request; at most {limit} images per request")


class ModelNotFound(InputError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = known
        super().__init__(f"model {model!r} is not served here; known models: {known}")


class Unsupported(InputError):
    """A request field this server does not implement (refused, never silently ignored)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


class InvalidFields(InputError):
    """Fields that do not validate, each with its reason (``details``: field, reason)."""

    def __init__(self, message: str, details: list[dict[str, object]]) -> None:
        self.details = details
        super().__init__(message)


class ServiceError(FleetVLError):
    """We could not serve a valid request. ``reason`` names what happened (a stable word for
    metrics and clients); ``retry_after_s`` says when trying again may work."""

    def __init__(self, reason: str, message: str, retry_after_s: float | None = None,
                 **extra: object) -> None:  # fmt: skip
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.extra = extra


class Unavailable(ServiceError):
    """No capacity now (overloaded, queue full, deadline unmeetable, uplink down)."""


class DeadlineExceeded(ServiceError):
    """Accepted, then its deadline passed before the answer was complete."""


class UpstreamError(ServiceError):
    """The next hop (a backend, the router behind an agent) failed or refused the request."""


# What a router without an answer cache tells a ``cache_only`` request (its agents stop asking).
NO_ANSWER_CACHE = "this router keeps no answer cache"


class NotCached(ServiceError):
    """A ``cache_only`` request (answer from the cache or not at all) whose answer is not
    stored: the caller runs it another way."""

    def __init__(
        self, reason: str = "answer_not_cached", message: str = "no cached answer for this request"
    ) -> None:
        super().__init__(reason, message)


class StorageFull(ServiceError):
    """A durable store is over its quota (e.g. the agent's store-and-forward spool)."""


class BundleError(FleetVLError):
    """A model bundle directory that is missing files, inconsistent or corrupt."""


class GenerationCancelled(FleetVLError):
    """The caller cancelled a generation; tokens produced so far were already delivered."""
