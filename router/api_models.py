"""The OpenAI-compatible bodies live in :mod:`fleetvl.protocol.openai_api` (the edge agent
serves the same surface); re-exported here for the router's modules."""

from fleetvl.protocol.openai_api import (
    ChatCompletionRequest,
    ChatMessage,
    ImageUrl,
    ImageUrlPart,
    TextPart,
)

__all__ = ["ChatCompletionRequest", "ChatMessage", "ImageUrl", "ImageUrlPart", "TextPart"]
