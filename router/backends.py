"""Where the router sends work: the backend interface and its implementations.

A backend serves one request at a time per slot and streams :class:`Delta` events ending with
one :class:`Final`. ``kind`` is what residency checks: ``cloud`` backends never see an
``edge_only`` request; ``edge`` backends belong to one site.

- :class:`EngineBackend` runs a model engine in this process (a thread per slot), e.g. the
  edge engine on a bundle, until the Ray Serve cloud worker takes over.
- :class:`GrpcBackend` forwards to any server speaking ``fleetvl.v1.Router`` (the cloud
  worker, another router, a site agent's relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fleetvl.engines import Engine
from fleetvl.errors import UpstreamError
from fleetvl.policy import SlaPolicy
from fleetvl.protocol.request import ChatRequest
from fleetvl.sampling import CancelToken
from fleetvl.threaded_stream import stream_in_thread
from fleetvl.vlm.confidence import TokenLogprob
from fleetvl.vlm.scope import ScopeScore

__all__ = [
    "Backend",
    "BackendError",
    "BackendRequest",
    "Delta",
    "EngineBackend",
    "Final",
]

BackendKind = Literal["cloud", "edge"]


@dataclass
class BackendRequest:
    """A request as dispatched: the request (sampling capped by its policy), the policy that
    resolved for it, its absolute deadline (``time.monotonic()``) and a cancel flag."""

    id: str  # the scheduler's id of this dispatch
    chat: ChatRequest
    policy: SlaPolicy = field(default_factory=SlaPolicy)
    deadline: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Delta:
    text: str
    index: int
    token_prob: float | None = None
    logprob: TokenLogprob | None = None  # when the request asked for log-probabilities


@dataclass(frozen=True)
class Final:
    text: str
    finish_reason: str  # stop | length | low_confidence | cancelled | out_of_scope
    confidence: float | None
    confidence_signal: str
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int = 0
    ttft_s: float = 0.0  # service time to the first token, queue excluded
    served_by: str = ""  # edge | cloud | cache (set by the router if empty)
    # answer | unanswerable: the serving model refused the input as out of its scope (no
    # text; ``scope`` says why). An answer, not an error: the backend did its job.
    verdict: str = "answer"
    scope: ScopeScore | None = None  # the serving model's out-of-scope score, when it has one
    cached_images: int = 0  # images whose vision-encoder output came from the shared cache


Event = Delta | Final


class BackendError(UpstreamError):
    """The backend failed to serve a request it accepted (the router answers 502)."""

    def __init__(self, message: str) -> None:
        super().__init__("backend_error", message)


class Backend(Protocol):
    name: str
    kind: BackendKind
    site: str | None
    slots: int
    models: tuple[str, ...]

    def generate(self, req: BackendRequest) -> AsyncGenerator[Event, None]: ...

    async def close(self) -> None: ...


class EngineBackend:
    """Runs :class:`fleetvl.engines.Engine` s (edge or cloud) in worker threads, ``slots``
    engines in parallel."""

    def __init__(
        self,
        name: str,
        engines: list[Engine],
        *,
        kind: BackendKind = "cloud",
        site: str | None = None,
        models: tuple[str, ...] = (),
        confidence_signal: str = "mean_logprob",
    ) -> None:
        if not engines:
            raise ValueError("EngineBackend needs at least one engine")
        self.name = name
        self.kind = kind
        self.site = site
        self.slots = len(engines)
        self.models = models
        self.signal = confidence_signal
        self._free: asyncio.Queue[Engine] | None = None
        self._engines = engines

    def _pool(self) -> asyncio.Queue[Engine]:
        if self._free is None:
            self._free = asyncio.Queue()
            for e in self._engines:
                self._free.put_nowait(e)
        return self._free

    async def generate(self, req: BackendRequest) -> AsyncGenerator[Event, None]:
        pool = self._pool()
        engine = await pool.get()
        token = CancelToken()

        def events() -> Iterator[Event]:
            chat = req.chat
            prompt = engine.encode(chat.messages, [i.decoded or i.data for i in chat.images])
            gen = engine.stream(prompt, chat.params, cancel=token)
            for ev in gen:
                prob = ev.confidence.prob if ev.confidence is not None else None
                yield Delta(ev.text, ev.index, prob, ev.logprob)
                if req.cancel.is_set():
                    token.cancel()
            res = gen.result
            assert res is not None  # set when the stream ends
            conf = res.confidence.as_dict().get(self.signal) if res.token_ids else None
            refused = res.finish_reason == "out_of_scope"
            yield Final(
                text=res.text,
                finish_reason=res.finish_reason,
                confidence=conf,
                confidence_signal=self.signal,
                prompt_tokens=res.prompt_tokens,
                completion_tokens=len(res.token_ids),
                image_tokens=sum(i.num_tokens(2) for i in prompt.images),
                ttft_s=res.ttft_s,
                verdict="unanswerable" if refused else "answer",
                scope=res.scope,
            )

        try:
            # Leaving early (the caller went away, the deadline passed) stops the engine at
            # its next step; the engine goes back to the pool once its thread is done.
            async with contextlib.aclosing(stream_in_thread(events, token)) as stream:
                async for ev in stream:
                    yield ev
        finally:
            pool.put_nowait(engine)

    async def close(self) -> None:
        return None
