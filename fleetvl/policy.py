"""SLA policies: the policy model, partial overrides, and their resolution.

A policy is resolved per request from four levels, global < tenant < site < request: a field
set at a later level overrides the earlier value. The exception is ``residency``, a compliance
field, which a later level may only tighten. Strictness is measured by how much image data may
leave the site::

    edge_only (never)  >  prefer_edge (only escalations)  >  cloud_ok == cloud_only (any)

``cloud_only`` sits level with ``cloud_ok``: it lets every image leave the site, like
``cloud_ok``, and only pins the route. So it may replace ``cloud_ok`` (and the other way round),
but never ``prefer_edge`` or ``edge_only``: an ``edge_only`` site can never be turned into a
``cloud_only`` request.

A *request* that tries to loosen residency is refused (:class:`ResidencyLoosened`, an
:class:`~fleetvl.errors.InputError` the API edge maps to HTTP 422): silently answering under a
different residency than the caller asked for would hide the conflict from them. A tenant or
site *configuration* that tries to loosen it is clamped instead (the stricter value stays, the
clamp is recorded and logged): a misconfigured site must not fail every request it receives;
the controller should validate policies when they are written, with :func:`resolve_policy`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fleetvl.errors import InputError

__all__ = [
    "CacheMode",
    "Clamp",
    "OutOfScopeAction",
    "PolicyError",
    "PolicyLevel",
    "PolicyOverride",
    "Priority",
    "ResidencyLoosened",
    "Residency",
    "ResolvedPolicy",
    "SlaPolicy",
    "UplinkDownAction",
    "error_details",
    "resolve_policy",
]

log = logging.getLogger(__name__)

MAX_DEADLINE_MS = 3_600_000  # an hour: anything longer is a job, not an answer
MAX_OUTPUT_TOKENS = 32_768


class Residency(StrEnum):
    """Where a request's image may be processed (see the module docstring for the order)."""

    EDGE_ONLY = "edge_only"
    PREFER_EDGE = "prefer_edge"
    CLOUD_OK = "cloud_ok"
    CLOUD_ONLY = "cloud_only"

    @property
    def strictness(self) -> int:
        """Higher is stricter; a lower level may only keep or raise it."""
        return _STRICTNESS[self]

    @property
    def allows_cloud(self) -> bool:
        return self is not Residency.EDGE_ONLY

    @property
    def allows_edge(self) -> bool:
        return self is not Residency.CLOUD_ONLY


_STRICTNESS = {
    Residency.EDGE_ONLY: 2,
    Residency.PREFER_EDGE: 1,
    Residency.CLOUD_OK: 0,
    Residency.CLOUD_ONLY: 0,
}


class Priority(StrEnum):
    """Scheduling class; a queue serves every critical item before any standard one."""

    CRITICAL = "critical"
    STANDARD = "standard"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 for critical: queues sort ascending."""
        return _RANK[self]


_RANK = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.BATCH: 2}


class UplinkDownAction(StrEnum):
    """What the client of an escalated request gets while the site's uplink is down."""

    ANSWER_LOCAL = "answer_local"  # the edge answer, flagged low confidence
    QUEUE = "queue"  # 202 + request id to poll; delivered when the link returns
    FAIL = "fail"  # an error at once


class OutOfScopeAction(StrEnum):
    """What a request gets when its input is out of the model's scope (a covered, misaimed or
    broken camera, a scene of another kind): see :mod:`fleetvl.vlm.scope`."""

    REFUSE = "refuse"  # the verdict ``unanswerable`` with its reason, at once
    ESCALATE = "escalate"  # let the cloud model judge it (it refuses by its own score too)


class CacheMode(StrEnum):
    """Use of the shared response/KV caches for this request."""

    OFF = "off"
    READ = "read"  # reuse entries, store nothing (e.g. requests with sensitive answers)
    READ_WRITE = "read_write"


class PolicyLevel(StrEnum):
    GLOBAL = "global"
    TENANT = "tenant"
    SITE = "site"
    REQUEST = "request"


def _no_bool(v: object) -> object:
    # pydantic's lax int accepts True as 1; a boolean deadline is always a caller's mistake.
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return v


_Int = Annotated[int, BeforeValidator(_no_bool)]
_Ms = Annotated[_Int, Field(gt=0, le=MAX_DEADLINE_MS)]
_Tokens = Annotated[_Int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
_Confidence = Annotated[float, BeforeValidator(_no_bool), Field(ge=0.0, le=1.0)]

_DESC = {
    "deadline_ms": "Time from arrival to the complete answer, milliseconds.",
    "ttft_target_ms": "Target time to the first streamed token, milliseconds; <= deadline_ms.",
    "min_confidence": "Edge answers below this confidence (0..1) are escalated.",
    "residency": "Where the image may be processed; lower levels may only tighten it.",
    "priority": "Scheduling class: critical, standard or batch.",
    "on_uplink_down": "Answer for escalations while the site's uplink is down.",
    "max_output_tokens": "Upper bound on generated tokens.",
    "cache": "Use of shared caches: off, read or read_write.",
    "on_out_of_scope": "An input the model was not trained to answer: refuse (the verdict "
    "unanswerable, with its reason) or escalate (the cloud model judges it by its own score).",
}


def _check_ttft(ttft: int | None, deadline: int | None) -> int | None:
    if ttft is not None and deadline is not None and ttft > deadline:
        raise ValueError(
            f"ttft_target_ms ({ttft}) exceeds deadline_ms ({deadline}); "
            "the first token cannot be due after the whole answer"
        )
    return ttft


class SlaPolicy(BaseModel):
    """A complete policy: the global level, and the result of resolution.

    The defaults are the shipped global policy; deployments set theirs in the controller.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deadline_ms: _Ms = Field(10_000, description=_DESC["deadline_ms"])
    ttft_target_ms: _Ms | None = Field(None, description=_DESC["ttft_target_ms"])
    min_confidence: _Confidence = Field(0.6, description=_DESC["min_confidence"])
    residency: Residency = Field(Residency.PREFER_EDGE, description=_DESC["residency"])
    priority: Priority = Field(Priority.STANDARD, description=_DESC["priority"])
    on_uplink_down: UplinkDownAction = Field(
        UplinkDownAction.ANSWER_LOCAL, description=_DESC["on_uplink_down"]
    )
    max_output_tokens: _Tokens = Field(256, description=_DESC["max_output_tokens"])
    cache: CacheMode = Field(CacheMode.READ_WRITE, description=_DESC["cache"])
    on_out_of_scope: OutOfScopeAction = Field(
        OutOfScopeAction.REFUSE, description=_DESC["on_out_of_scope"]
    )

    @field_validator("ttft_target_ms")
    @classmethod
    def _ttft_within_deadline(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_ttft(v, info.data.get("deadline_ms"))


class PolicyOverride(BaseModel):
    """One level's partial policy (tenant, site or request): ``None`` inherits.

    A lower level cannot unset an inherited ``ttft_target_ms``; it can only set another.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deadline_ms: _Ms | None = Field(None, description=_DESC["deadline_ms"])
    ttft_target_ms: _Ms | None = Field(None, description=_DESC["ttft_target_ms"])
    min_confidence: _Confidence | None = Field(None, description=_DESC["min_confidence"])
    residency: Residency | None = Field(None, description=_DESC["residency"])
    priority: Priority | None = Field(None, description=_DESC["priority"])
    on_uplink_down: UplinkDownAction | None = Field(None, description=_DESC["on_uplink_down"])
    max_output_tokens: _Tokens | None = Field(None, description=_DESC["max_output_tokens"])
    cache: CacheMode | None = Field(None, description=_DESC["cache"])
    on_out_of_scope: OutOfScopeAction | None = Field(None, description=_DESC["on_out_of_scope"])

    @field_validator("ttft_target_ms")
    @classmethod
    def _ttft_within_deadline(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_ttft(v, info.data.get("deadline_ms"))


class PolicyError(InputError):
    """A policy that validates field by field but is refused as a whole (HTTP 422)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ResidencyLoosened(PolicyError):
    """A request asked for a residency looser than the one its tenant or site imposes."""

    def __init__(self, requested: Residency, current: Residency, set_by: PolicyLevel) -> None:
        self.requested = requested
        self.current = current
        self.set_by = set_by
        allowed = sorted(r.value for r in Residency if r.strictness >= current.strictness)
        super().__init__(
            "residency",
            f"request asks for {requested.value!r}, which would loosen {current.value!r} "
            f"set by the {set_by.value} policy; residency can only be tightened "
            f"(allowed: {', '.join(allowed)})",
        )


@dataclass(frozen=True)
class Clamp:
    """A configuration level's attempt to loosen a compliance field, which was ignored."""

    field: str
    level: PolicyLevel
    requested: str
    kept: str
    kept_from: PolicyLevel


@dataclass(frozen=True)
class ResolvedPolicy:
    """The effective policy and, per field, the level whose value won."""

    policy: SlaPolicy
    sources: dict[str, PolicyLevel]
    clamps: tuple[Clamp, ...] = ()

    def explain(self) -> dict[str, dict[str, object]]:
        """``{field: {"value": ..., "set_by": level}}`` for an answer's explanation."""
        values = self.policy.model_dump(mode="json")
        return {k: {"value": values[k], "set_by": self.sources[k].value} for k in values}


def resolve_policy(
    global_policy: SlaPolicy,
    *,
    tenant: PolicyOverride | None = None,
    site: PolicyOverride | None = None,
    request: PolicyOverride | None = None,
) -> ResolvedPolicy:
    """Resolve global < tenant < site < request into one policy.

    Returns:
        The effective policy, which level set each field, and any configuration clamps.
    Raises:
        ResidencyLoosened: the request override loosens residency (see the module docstring).
    """
    values: dict[str, object] = dict(global_policy)
    sources = dict.fromkeys(values, PolicyLevel.GLOBAL)
    clamps: list[Clamp] = []
    for level, override in (
        (PolicyLevel.TENANT, tenant),
        (PolicyLevel.SITE, site),
        (PolicyLevel.REQUEST, request),
    ):
        if override is None:
            continue
        for name, value in override:
            if value is None:
                continue
            kept = values[name]
            if (
                isinstance(value, Residency)
                and isinstance(kept, Residency)
                and value.strictness < kept.strictness
            ):
                if level is PolicyLevel.REQUEST:
                    raise ResidencyLoosened(value, kept, sources[name])
                clamps.append(Clamp(name, level, value.value, kept.value, sources[name]))
                log.warning(
                    "%s policy sets residency %r looser than %r from the %s policy; kept %r",
                    level.value, value.value, kept.value, sources[name].value, kept.value,
                )  # fmt: skip
                continue
            values[name] = value
            sources[name] = level
    # A lower level may shorten the deadline below an inherited TTFT target; the target then
    # becomes the deadline (a stricter TTFT than asked for is never a violation).
    ttft, deadline = values["ttft_target_ms"], values["deadline_ms"]
    if isinstance(ttft, int) and isinstance(deadline, int) and ttft > deadline:
        values["ttft_target_ms"] = deadline
        sources["ttft_target_ms"] = sources["deadline_ms"]
    return ResolvedPolicy(SlaPolicy.model_validate(values), sources, tuple(clamps))


def error_details(exc: ValidationError | PolicyError, prefix: str = "") -> list[dict[str, str]]:
    """``[{"field": ..., "reason": ...}]`` for a 422 body, one entry per problem.

    Args:
        exc: from validating a policy/override, or from :func:`resolve_policy`.
        prefix: prepended to field names, e.g. ``"sla."`` when the policy is nested in a body.
    """
    if isinstance(exc, PolicyError):
        return [{"field": prefix + exc.field, "reason": exc.reason}]
    out = []
    for e in exc.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"])
        reason = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            reason = f"unknown field; known fields: {', '.join(SlaPolicy.model_fields)}"
        elif e["type"] not in ("missing", "value_error") and isinstance(
            e.get("input"), str | int | float | None
        ):  # our own value errors quote the value already
            reason += f" (got {e['input']!r})"
        out.append({"field": (prefix + field) or "(policy)", "reason": reason})
    return out
