"""``fleetvl.v1`` request fields to what engines take, shared by every tier that serves
``Generate`` (the cloud worker, a site agent answering over its uplink)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.confidence import TokenLogprob

if TYPE_CHECKING:
    from fleetvl.policy import SlaPolicy
    from fleetvl.vlm.scope import ScopeScore

__all__ = [
    "delta_logprob",
    "logprob_message",
    "sampling_message",
    "sampling_params",
    "scope_dict",
    "scope_message",
    "sla_message",
]


def sampling_params(s: pb.Sampling, default_max_tokens: int = 256) -> SamplingParams:
    """Unset fields take SamplingParams' defaults (greedy)."""
    return SamplingParams(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else default_max_tokens,
        temperature=s.temperature if s.HasField("temperature") else 0.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        logprobs=s.top_logprobs if s.HasField("top_logprobs") else None,
    )


def sampling_message(s: SamplingParams) -> pb.Sampling:
    """The inverse of :func:`sampling_params`; a ``None`` seed or logprobs stays unset."""
    return pb.Sampling(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop=list(s.stop),
        top_logprobs=s.logprobs,
    )


def logprob_message(lp: TokenLogprob | None) -> pb.TokenLogprob | None:
    """A token's log-probabilities on the wire (``Delta.logprob``)."""
    if lp is None:
        return None
    return pb.TokenLogprob(token=lp.token, logprob=lp.logprob,
                           top=[pb.TopLogprob(token=t, logprob=v) for t, v in lp.top])  # fmt: skip


def delta_logprob(d: pb.Delta) -> TokenLogprob | None:
    """The inverse of :func:`logprob_message`, from a wire delta (None when it has none)."""
    if not d.HasField("logprob"):
        return None
    lp = d.logprob
    return TokenLogprob(lp.token, lp.logprob, tuple((t.token, t.logprob) for t in lp.top))


def sla_message(policy: SlaPolicy) -> pb.Sla:
    """A resolved policy as the ``Sla`` of a forwarded request: the fields the next hop may
    tighten but must not loosen (the deadline travels as the gRPC deadline)."""
    return pb.Sla(
        min_confidence=policy.min_confidence,
        residency=policy.residency.value,
        priority=policy.priority.value,
        max_output_tokens=policy.max_output_tokens,
        cache=policy.cache.value,
        on_out_of_scope=policy.on_out_of_scope.value,
    )


def scope_message(score: ScopeScore) -> pb.OutOfScope:
    """A scope verdict on the wire (``Final.scope``, ``EdgeAttempt.scope``)."""
    return pb.OutOfScope(score=score.score, threshold=score.threshold, part=score.part,
                         scene=score.scene)  # fmt: skip


def scope_dict(msg: pb.OutOfScope) -> dict[str, object]:
    """A wire scope verdict as the JSON of an answer's ``fleetvl.out_of_scope``."""
    return {"score": round(msg.score, 4), "threshold": round(msg.threshold, 4),
            "out_of_scope": msg.score >= msg.threshold, "part": msg.part,
            "scene": msg.scene}  # fmt: skip
