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
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fleetvl.policy import SlaPolicy
from fleetvl.sampling import CancelToken, SamplingParams
from fleetvl.vlm.scope import ScopeScore

__all__ = [
    "Backend",
    "BackendError",
    "BackendRequest",
    "Delta",
    "EngineBackend",
    "Final",
    "ImageInput",
]

BackendKind = Literal["cloud", "edge"]


@dataclass(frozen=True)
class ImageInput:
    digest: str  # sha256 of data
    data: bytes


@dataclass
class BackendRequest:
    """A request as dispatched: messages in the chat-template shape (images as ``{"type":
    "image"}`` parts, in order), their image bytes, sampling, the resolved policy."""

    id: str
    tenant: str
    site: str | None
    model: str
    messages: list[dict[str, Any]]
    images: list[ImageInput]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    policy: SlaPolicy = field(default_factory=SlaPolicy)
    deadline: float = 0.0  # absolute, time.monotonic()
    cancel: threading.Event = field(default_factory=threading.Event)
    edge_attempt: dict[str, Any] | None = None
    source: str | None = None  # the camera or application at the site the image came from


@dataclass(frozen=True)
class Delta:
    text: str
    index: int
    token_prob: float | None = None


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


Event = Delta | Final


class BackendError(Exception):
    """The backend failed to serve a request it accepted (the router answers 502)."""


class Backend(Protocol):
    name: str
    kind: BackendKind
    site: str | None
    slots: int
    models: tuple[str, ...]

    def generate(self, req: BackendRequest) -> AsyncIterator[Event]: ...

    async def close(self) -> None: ...


class EngineBackend:
    """Runs an engine with ``encode(messages, images)`` and ``stream(prompt, params, cancel=)``
    (the edge engine's interface) in worker threads, ``slots`` engines in parallel."""

    def __init__(
        self,
        name: str,
        engines: list[Any],
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
        self._free: asyncio.Queue[Any] | None = None
        self._engines = engines

    def _pool(self) -> asyncio.Queue[Any]:
        if self._free is None:
            self._free = asyncio.Queue()
            for e in self._engines:
                self._free.put_nowait(e)
        return self._free

    async def generate(self, req: BackendRequest) -> AsyncIterator[Event]:
        pool = self._pool()
        engine = await pool.get()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        token = CancelToken()

        def work() -> None:
            try:
                prompt = engine.encode(req.messages, [i.data for i in req.images])
                params = SamplingParams(
                    max_tokens=req.max_tokens,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    top_k=req.top_k,
                    seed=req.seed,
                    stop=tuple(req.stop),
                )
                gen = engine.stream(prompt, params, cancel=token)
                for ev in gen:
                    prob = ev.confidence.prob if ev.confidence is not None else None
                    loop.call_soon_threadsafe(events.put_nowait, Delta(ev.text, ev.index, prob))
                    if req.cancel.is_set():
                        token.cancel()
                res = gen.result
                conf = res.confidence.as_dict().get(self.signal) if res.token_ids else None
                refused = res.finish_reason == "out_of_scope"
                final = Final(
                    text=res.text,
                    finish_reason=res.finish_reason,
                    confidence=conf,
                    confidence_signal=self.signal,
                    prompt_tokens=res.timings.prompt_tokens,
                    completion_tokens=len(res.token_ids),
                    image_tokens=sum(i.num_tokens(2) for i in prompt.images),
                    ttft_s=res.timings.ttft_s,
                    verdict="unanswerable" if refused else "answer",
                    scope=res.scope,
                )
                loop.call_soon_threadsafe(events.put_nowait, final)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(events.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(events.put_nowait, None)

        worker = loop.run_in_executor(None, work)
        try:
            while (ev := await events.get()) is not None:
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
        finally:
            # The caller went away (or the deadline passed): stop the engine at its next step.
            token.cancel()
            await asyncio.shield(worker)
            pool.put_nowait(engine)

    async def close(self) -> None:
        return None
