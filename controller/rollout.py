"""Staged bundle rollouts: waves gated by canary health, automatic rollback.

A rollout assigns its bundle to a growing share of the matching sites (e.g. 10% -> 50% ->
100%). Each wave waits until every wave site *runs* the new bundle, observes them for
``gate.bake_s``, then compares them (canaries) with the matching sites still on the old
bundle (baseline) on error rate, SLA attainment and escalation rate. A failing gate, a site
refusing the bundle, or a wave that does not converge in time rolls every wave site back to
its previous assignment. Every state change goes to the rollout's history and the audit log.

State lives in Redis (hard); the metric samples the gate reads are soft and re-accumulate
after a controller restart (the bake restarts with them).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from controller import metrics as m
from controller.desired import DesiredState
from controller.sessions import MetricSample, SessionRegistry, aggregate
from controller.spec import Gate, RolloutPlan
from controller.store import ControllerStore, JsonObject

__all__ = ["RolloutManager", "RolloutState", "judge", "wave_sites"]

Status = Literal["running", "paused", "completed", "aborted", "rolled_back"]
ACTIVE = ("running", "paused")


class RolloutError(ValueError):
    """A rollout request that cannot be honoured (HTTP 409/422)."""


class RolloutState(BaseModel):
    plan: RolloutPlan
    digest: str
    status: Status = "running"
    wave: int = 0
    wave_sites: list[str] = Field(default_factory=list)
    previous: dict[str, str | None] = Field(default_factory=dict)
    wave_started_at: float = 0.0
    converged_at: float | None = None
    baseline: dict[str, float] | None = None  # last baseline seen, for the 100% wave
    last_gate: JsonObject | None = None  # ok, reasons, canary, baseline, ts
    history: list[JsonObject] = Field(default_factory=list)  # audit entries, oldest first

    def public(self, n_sites: int) -> JsonObject:
        d = self.model_dump(mode="json")
        d["id"] = self.plan.id
        d["progress"] = {
            "wave": self.wave + 1,
            "waves": len(self.plan.waves),
            "percent": self.plan.waves[min(self.wave, len(self.plan.waves) - 1)],
            "sites_on_new": len(self.wave_sites) if self.status != "rolled_back" else 0,
            "matching_sites": n_sites,
        }
        return d


def wave_sites(rollout_id: str, sites: list[str], percent: float) -> list[str]:
    """The first ``percent`` of ``sites`` in a per-rollout pseudo-random, stable order."""
    order = sorted(sites, key=lambda s: hashlib.sha256(f"{rollout_id}/{s}".encode()).digest())
    n = min(len(order), max(1, math.ceil(len(order) * percent / 100.0 - 1e-9)))
    return order[:n]


def _finite(x: float) -> bool:
    return not math.isnan(x)


def judge(
    canary: dict[str, float], baseline: dict[str, float] | None, gate: Gate
) -> tuple[bool | None, list[str]]:
    """Compare canaries with the baseline.

    Returns:
        (None, [why]) while canaries have served fewer than ``gate.min_requests``;
        (True, []) when healthy; (False, reasons) when worse beyond a tolerance.
    """
    if canary["requests"] < max(gate.min_requests, 1):
        return None, [f"canaries served {canary['requests']:.0f} of {gate.min_requests} requests"]
    if baseline is None or baseline["requests"] <= 0:
        return True, []  # nothing left on the old bundle to compare with (documented)
    reasons = []
    d_err = canary["error_rate"] - baseline["error_rate"]
    if _finite(d_err) and d_err > gate.max_error_rate_increase:
        reasons.append(
            f"error rate {canary['error_rate']:.3f} vs baseline "
            f"{baseline['error_rate']:.3f} (+{d_err:.3f} > {gate.max_error_rate_increase})"
        )
    d_sla = baseline["sla_attainment"] - canary["sla_attainment"]
    if _finite(d_sla) and d_sla > gate.max_sla_drop:
        reasons.append(
            f"SLA attainment {canary['sla_attainment']:.3f} vs baseline "
            f"{baseline['sla_attainment']:.3f} (-{d_sla:.3f} > {gate.max_sla_drop})"
        )
    d_esc = canary["escalation_rate"] - baseline["escalation_rate"]
    if _finite(d_esc) and d_esc > gate.max_escalation_increase:
        reasons.append(
            f"escalation rate {canary['escalation_rate']:.3f} vs baseline "
            f"{baseline['escalation_rate']:.3f} (+{d_esc:.3f} > {gate.max_escalation_increase})"
        )
    return not reasons, reasons


class RolloutManager:
    def __init__(
        self,
        desired: DesiredState,
        registry: SessionRegistry,
        store: ControllerStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.desired = desired
        self.registry = registry
        self.store = store
        self.clock = clock
        self.rollouts: dict[str, RolloutState] = {}

    async def load(self) -> None:
        self.rollouts = {
            k: RolloutState.model_validate(v) for k, v in (await self.store.rollouts()).items()
        }

    def matching(self, plan: RolloutPlan) -> list[str]:
        return sorted(s.id for s in self.desired.sites().values() if plan.selector.matches(s))

    async def _save(self, r: RolloutState, who: str, what: str, why: str, **kw: object) -> None:
        entry = await self.store.audit(who, f"rollout.{what}", why, rollout=r.plan.id, **kw)
        r.history.append(entry)
        await self.store.put_rollout(r.plan.id, r.model_dump(mode="json"))
        m.ROLLOUT_TRANSITIONS.labels(what).inc()

    async def start(self, plan: RolloutPlan, who: str, why: str) -> RolloutState:
        """Create and start a rollout; raises RolloutError if the id exists or sites overlap."""
        ref = self.desired.bundle_ref(plan.bundle)
        if not self.matching(plan):
            raise RolloutError(f"rollout {plan.id!r}: its selector matches no site")
        busy = {
            s for r in self.rollouts.values() if r.status in ACTIVE for s in self.matching(r.plan)
        } & set(self.matching(plan))
        if busy:
            raise RolloutError(
                f"rollout {plan.id!r}: sites {sorted(busy)[:5]} are in another "
                "active rollout; finish or abort it first"
            )
        r = RolloutState(plan=plan, digest=ref.digest)
        if not await self.store.add_rollout(plan.id, r.model_dump(mode="json")):
            raise RolloutError(f"rollout {plan.id!r} already exists")
        self.rollouts[plan.id] = r
        await self._save(r, who, "start", why, digest=ref.digest)
        await self._start_wave(r)
        return r

    async def _start_wave(self, r: RolloutState) -> None:
        target = wave_sites(r.plan.id, self.matching(r.plan), r.plan.waves[r.wave])
        new = [s for s in target if s not in r.wave_sites]
        for s in new:
            r.previous[s] = self.desired.assignments.get(s)
        r.wave_sites = sorted(set(r.wave_sites) | set(new))
        r.wave_started_at, r.converged_at = self.clock(), None
        await self._save(
            r,
            f"rollout:{r.plan.id}",
            "wave",
            f"wave {r.wave + 1} of {len(r.plan.waves)}: {r.plan.waves[r.wave]}%",
            sites=new,
        )
        await self.desired.assign(
            dict.fromkeys(new, r.digest), f"rollout:{r.plan.id}", f"wave {r.wave + 1}"
        )

    async def set_status(self, rollout_id: str, action: str, who: str, why: str) -> RolloutState:
        r = self.rollouts.get(rollout_id)
        if r is None:
            raise KeyError(rollout_id)
        if action == "pause" and r.status == "running":
            r.status = "paused"
        elif action == "resume" and r.status == "paused":
            r.status = "running"
            r.wave_started_at, r.converged_at = self.clock(), None
        elif action == "abort" and r.status in ACTIVE:
            await self._revert(r, "aborted", who, why)
            return r
        else:
            raise RolloutError(f"cannot {action} rollout {rollout_id!r} while it is {r.status}")
        await self._save(r, who, action, why)
        return r

    async def _revert(self, r: RolloutState, status: Status, who: str, why: str) -> None:
        r.status = status
        await self._save(r, who, status, why, sites=r.wave_sites)
        known = self.desired.sites()  # a site removed from the spec meanwhile has nothing to revert
        await self.desired.assign(
            {s: r.previous.get(s) for s in r.wave_sites if s in known}, who, why
        )

    async def tick(self) -> None:
        """Advance every running rollout by what the agents report now."""
        for r in list(self.rollouts.values()):
            if r.status == "running":
                await self._step(r)

    async def _step(self, r: RolloutState) -> None:
        now, who = self.clock(), f"rollout:{r.plan.id}"
        sessions = self.registry.sessions
        refused = [
            s
            for s in r.wave_sites
            if (x := sessions.get(s))
            and x.bundle_error
            and x.bundle_error.get("digest") == r.digest
        ]
        if refused:
            err = sessions[refused[0]].bundle_error
            error = err["error"] if err else None
            await self._revert(
                r, "rolled_back", who, f"site {refused[0]} refused the bundle: {error}"
            )
            return
        waiting = [
            s for s in r.wave_sites if not (x := sessions.get(s)) or x.active_bundle != r.digest
        ]
        if waiting:
            if now - r.wave_started_at > r.plan.gate.install_timeout_s:
                await self._revert(
                    r,
                    "rolled_back",
                    who,
                    f"sites {waiting[:5]} did not run "
                    f"the bundle within {r.plan.gate.install_timeout_s:.0f} s",
                )
            return
        if r.converged_at is None:
            r.converged_at = now
            await self._save(r, who, "converged", f"wave {r.wave + 1} sites run the bundle")
            return
        if now - r.converged_at < r.plan.gate.bake_s:
            return
        canary, baseline = self._samples(r, r.converged_at)
        base = aggregate(baseline) if baseline else r.baseline
        ok, reasons = judge(aggregate(canary), base, r.plan.gate)
        r.last_gate = {
            "ok": ok,
            "reasons": reasons,
            "canary": aggregate(canary),
            "baseline": base,
            "ts": now,
        }
        if ok is None:
            return
        if not ok:
            await self._revert(r, "rolled_back", who, "gate failed: " + "; ".join(reasons))
            return
        if baseline:
            r.baseline = aggregate(baseline)
        if r.wave + 1 >= len(r.plan.waves):
            r.status = "completed"
            await self._save(r, who, "completed", "gate passed on the last wave")
            return
        await self._save(r, who, "gate_passed", f"wave {r.wave + 1} healthy")
        r.wave += 1
        await self._start_wave(r)

    def _samples(self, r: RolloutState, since: float) -> tuple[list[MetricSample], ...]:
        wave = set(r.wave_sites)
        canary: list[MetricSample] = []
        baseline: list[MetricSample] = []
        for site in self.matching(r.plan):
            s = self.registry.sessions.get(site)
            if s is None:
                continue
            for x in s.since(since):
                if site in wave and x.bundle == r.digest:
                    canary.append(x)
                elif site not in wave and x.bundle != r.digest:
                    baseline.append(x)
        return canary, baseline
