"""The engine boundary: what every model engine offers a server, and how a server finds one.

The edge engine (ONNX Runtime), the cached edge engine (the shared Redis cache around it) and
the cloud engine (PyTorch, continuous batching) all satisfy :class:`Engine`: ``encode`` a chat
into a :class:`Prompt`, ``stream`` it as :class:`TokenEvent` with an :class:`EngineResult` at the
end. A server (the router's in-process backend, the uplink's call handler) is written against
this protocol only, so it imports no tier.

Engines are found by name through the ``fleetvl.engines`` entry-point group (the way vLLM and
pytest find plugins): the package that ships an engine registers a factory ``(model_dir) ->
Engine`` in its ``pyproject.toml``, and a config names it (``engine: edge``). A third-party
engine registers the same way; nothing in the core changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fleetvl.errors import InputError

if TYPE_CHECKING:  # a router that only names engines need not import the model stack
    from fleetvl.sampling import CancelToken, SamplingParams
    from fleetvl.vlm.confidence import AnswerConfidence, TokenConfidence, TokenLogprob
    from fleetvl.vlm.image import ImageInput
    from fleetvl.vlm.processor import Prompt
    from fleetvl.vlm.scope import ScopeScore

__all__ = [
    "ENTRY_POINT_GROUP",
    "Engine",
    "EngineFactory",
    "EngineResult",
    "EngineStream",
    "TokenEvent",
    "engine_factory",
    "engine_names",
]

ENTRY_POINT_GROUP = "fleetvl.engines"


@dataclass(frozen=True)
class TokenEvent:
    """One streamed token: its id, the text it completes, and its confidence."""

    index: int
    token_id: int
    text: str  # new text since the previous event (may be "" while a UTF-8 char is partial)
    confidence: TokenConfidence | None
    logprob: TokenLogprob | None = None  # when ``SamplingParams.logprobs`` asked for it


class EngineResult(Protocol):
    """How a generation ended (the edge's ``GenerationResult``, the cloud's ``CloudResult``)."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    # stop | length | low_confidence | cancelled | deadline | out_of_scope
    @property
    def finish_reason(self) -> str: ...
    @property
    def confidence(self) -> AnswerConfidence: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def ttft_s(self) -> float: ...
    @property
    def scope(self) -> ScopeScore | None: ...


class EngineStream(Protocol):
    """A generation in progress: iterate for tokens; ``result`` is set once iteration ends."""

    def __iter__(self) -> Iterator[TokenEvent]: ...
    @property
    def result(self) -> EngineResult | None: ...


@runtime_checkable
class Engine(Protocol):
    """A loaded model that answers chats. Thread-safe: calls from several threads queue."""

    @property
    def digest(self) -> str: ...

    def encode(
        self, messages: Sequence[Mapping[str, object]], images: Sequence[ImageInput] = ()
    ) -> Prompt: ...

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> EngineStream: ...


EngineFactory = Callable[[Path], Engine]


def engine_names() -> list[str]:
    """The engines installed packages register (``fleetvl.engines`` entry points)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def engine_factory(name: str) -> EngineFactory:
    """The factory registered as ``name``.

    Raises:
        InputError: no installed package registers that name (the message lists those that do).
    """
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = ", ".join(engine_names()) or "none"
        raise InputError(
            f"no engine named {name!r} is installed (registered in the {ENTRY_POINT_GROUP!r} "
            f"entry-point group: {known})"
        )
    factory: EngineFactory = next(iter(found)).load()
    return factory
