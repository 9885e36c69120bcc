"""One local attempt: run the edge engine under the gate, stopping early when it is pointless.

Runs in a worker thread (the engine is synchronous). After every token the attempt asks two
questions, but only while escalating is still possible and affordable (``can_escalate``):

* can this answer still pass the gate? (:meth:`fleetvl.vlm.gate.Gate.watch`, exact bounds);
* can it still finish before the deadline? (measured per-token time times the tokens left).

If either is no, decoding stops at once (``stopped`` says why) and the caller escalates. When
escalation is not possible (``edge_only``, no budget for a round trip, uplink down with
``answer_local``) the attempt always runs to the end, so there is an answer to flag.

Before any of that, the bundle's out-of-scope score (when it has one) judges the input; an
input out of scope is not answered at all (``stopped="out_of_scope"``, no tokens): the
caller refuses it or escalates it as the policy says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fleetvl.engines import Engine
from fleetvl.sampling import CancelToken, SamplingParams
from fleetvl.vlm.confidence import ConfidenceTracker, TokenLogprob
from fleetvl.vlm.gate import Gate, GateVerdict
from fleetvl.vlm.scope import ScopeModel, ScopeScore

if TYPE_CHECKING:
    from edge_agent.engine.engine import Generation
    from edge_agent.engine.types import EarlyStop
    from fleetvl.vlm.image import ImageInput
    from fleetvl.vlm.processor import Prompt

__all__ = ["LocalAttempt", "run_local"]


@dataclass(frozen=True)
class LocalAttempt:
    text: str
    finish_reason: str  # the engine's: stop | length | low_confidence | cancelled
    tokens: int  # generated
    max_tokens: int
    verdict: GateVerdict
    stopped: str | None  # why decoding stopped early: low_confidence | deadline | out_of_scope
    scope: ScopeScore | None  # the out-of-scope verdict (None: the bundle has no scope model)
    prompt_tokens: int
    ttft_s: float  # attempt start (image decode included) to the first token
    total_s: float
    scope_s: float = 0.0  # spent on the out-of-scope score
    logprobs: list[TokenLogprob] | None = None  # each token's, when the request asked

    @property
    def complete(self) -> bool:
        """An answer the model finished (not cut short by the gate or the deadline)."""
        return self.stopped is None

    @property
    def out_of_scope(self) -> bool:
        return self.scope is not None and self.scope.out_of_scope


class LocalEngine(Engine, Protocol):
    """What the agent needs of an engine: the core :class:`Engine` whose ``stream`` also takes
    the gate's hooks, as :class:`edge_agent.engine.EdgeEngine` and, with the cache in front,
    :class:`edge_agent.engine.CachedEngine` do."""

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        stop_when: EarlyStop | None = None,
        cancel: CancelToken | None = None,
        scope: ScopeModel | None = None,
        refuse_out_of_scope: bool = False,
    ) -> Generation: ...


def run_local(
    engine: LocalEngine,
    messages: Sequence[Mapping[str, object]],
    images: Sequence[ImageInput],  # bytes or decoded images
    params: SamplingParams,
    gate: Gate,
    *,
    deadline: float,
    can_escalate: Callable[[float], bool],
    early: bool = True,
    cancel: CancelToken | None = None,
    clock: Callable[[], float] = time.monotonic,
    scope: ScopeModel | None = None,
) -> LocalAttempt:
    """Generate a local answer under ``gate``. ``deadline`` and ``can_escalate(now)`` use
    ``clock``. Raises what the engine raises for bad input (InputError, PromptError)."""
    t0 = clock()
    prompt = engine.encode(messages, images)
    encode_s = clock() - t0
    hopeless = gate.watch(params.max_tokens)
    stopped: list[str] = []
    first: list[float] = []

    def stop_when(tracker: ConfidenceTracker) -> bool:
        now = clock()
        if not first:
            first.append(now)
        if not early or not can_escalate(now):
            return False
        if hopeless(tracker.tokens):
            stopped.append("low_confidence")
            return True
        n = len(tracker.tokens)
        if n > 1:
            per_token = (now - first[0]) / (n - 1)
            if now + per_token * (params.max_tokens - n) > deadline:
                stopped.append("deadline")
                return True
        return False

    gen = engine.stream(prompt, params, stop_when=stop_when, cancel=cancel, scope=scope,
                        refuse_out_of_scope=True)  # fmt: skip
    for _ in gen:
        pass
    r = gen.result
    assert r is not None  # set by the generation's last step
    verdict = gate.verdict(r.tokens, r.last_hidden)
    if r.finish_reason == "out_of_scope":
        stopped.insert(0, "out_of_scope")
    return LocalAttempt(
        text=r.text,
        finish_reason=r.finish_reason,
        tokens=len(r.token_ids),
        max_tokens=params.max_tokens,
        verdict=verdict,
        stopped=stopped[0] if stopped else None,
        scope=r.scope,
        prompt_tokens=len(prompt),
        # From the attempt's start (image decode included) to the first token.
        ttft_s=first[0] - t0 if first else encode_s + r.timings.ttft_s,
        scope_s=r.timings.scope_s,
        total_s=clock() - t0,
        logprobs=r.logprobs,
    )
