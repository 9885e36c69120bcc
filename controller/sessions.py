"""Agent sessions: soft state rebuilt from what agents report (never persisted).

One :class:`AgentSession` per site holds the agent's last registration and heartbeats, a
window of metric summaries tagged with the bundle that served them (the rollout gate compares
bundles on these), and the outgoing queue of pushes with what each push is waiting for.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TypedDict

from fleetvl.protocol import control_pb2 as cpb

__all__ = ["AgentSession", "MetricSample", "SessionRegistry", "aggregate"]

WINDOW = 720  # heartbeats kept per site (an hour at 5 s)


@dataclass(frozen=True)
class MetricSample:
    ts: float
    bundle: str
    requests: float
    errors: float
    escalation_rate: float
    sla_attainment: float
    p95_ms: float
    cache_rate: float = 0.0  # answered from the fleet's answer cache


@dataclass
class PendingPush:
    kind: str  # policies | bundle | command
    sent_at: float
    version: int = 0
    digest: str = ""


class Hardware(TypedDict, total=False):
    """The agent's machine, as it registered (empty until it does)."""

    cpu: str
    cores: int
    memory_bytes: int
    accelerator: str


class BundleRefusal(TypedDict):
    """The agent refused a pushed bundle (failed download, digest or load)."""

    digest: str
    error: str
    ts: float


@dataclass
class AgentSession:
    site: str
    agent_version: str = ""
    hardware: Hardware = field(default_factory=lambda: Hardware())
    connected: bool = False
    connected_at: float = 0.0
    last_heartbeat: float = 0.0
    active_bundle: str = ""
    bundles_held: list[str] = field(default_factory=list)
    policy_version: int = 0  # last version the agent acknowledged
    sent_policy: str = ""  # layers JSON last pushed in this connection
    sent_bundle: str = ""  # digest last pushed in this connection
    bundle_error: BundleRefusal | None = None  # last refused bundle
    samples: deque[MetricSample] = field(default_factory=lambda: deque(maxlen=WINDOW))
    pending: dict[str, PendingPush] = field(default_factory=dict)
    queue: asyncio.Queue[cpb.ControllerMessage | None] = field(default_factory=asyncio.Queue)
    generation: int = 0  # distinguishes a reconnect's session from the one it replaced

    def since(self, t: float) -> list[MetricSample]:
        """Samples received at or after ``t``, oldest first (scans only those: the window
        holds an hour and the status page and rollout gate ask every second)."""
        out = []
        for x in reversed(self.samples):
            if x.ts < t:
                break
            out.append(x)
        out.reverse()
        return out

    def recent(self, seconds: float, now: float) -> list[MetricSample]:
        return self.since(now - seconds)

    def public(self, now: float, stale_after_s: float) -> dict[str, object]:
        """The status view of this site's agent."""
        window = self.recent(60.0, now)
        agg = aggregate(window)
        healthy = self.connected and now - self.last_heartbeat <= stale_after_s
        return {
            "connected": self.connected,
            "healthy": healthy and self.bundle_error is None,
            "agent_version": self.agent_version,
            "hardware": self.hardware,
            "last_heartbeat": self.last_heartbeat or None,
            "last_heartbeat_age_s": round(now - self.last_heartbeat, 1)
            if self.last_heartbeat
            else None,
            "active_bundle": self.active_bundle,
            "bundles_held": self.bundles_held,
            "policy_version": self.policy_version,
            "bundle_error": self.bundle_error,
            "requests_per_min": round(agg["requests"], 1),  # the window is one minute
            "escalation_rate": agg["escalation_rate"],
            "sla_attainment": agg["sla_attainment"],
            "error_rate": agg["error_rate"],
            "p95_ms": agg["p95_ms"],
            "cache_rate": agg["cache_rate"],
        }


def aggregate(samples: list[MetricSample]) -> dict[str, float]:
    """Request-weighted rates over samples (rates of empty windows are reported as NaN)."""
    req = sum(s.requests for s in samples)
    nan = float("nan")
    if req <= 0:
        return {
            "requests": 0.0,
            "error_rate": nan,
            "escalation_rate": nan,
            "sla_attainment": nan,
            "p95_ms": nan,
            "cache_rate": nan,
        }
    return {
        "requests": req,
        "error_rate": sum(s.errors for s in samples) / req,
        "escalation_rate": sum(s.escalation_rate * s.requests for s in samples) / req,
        "sla_attainment": sum(s.sla_attainment * s.requests for s in samples) / req,
        # The worst window's p95 is an upper bound of the aggregate's; honest enough for a page.
        "p95_ms": max(s.p95_ms for s in samples if s.requests > 0),
        "cache_rate": sum(s.cache_rate * s.requests for s in samples) / req,
    }


class SessionRegistry:
    """Sessions by site. A reconnecting agent replaces its old session (the old stream ends)."""

    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}
        self._generation = 0

    def open(self, reg: cpb.Register, now: float) -> AgentSession:
        old = self.sessions.get(reg.site)
        if old is not None and old.connected:
            old.queue.put_nowait(None)  # ends the replaced stream
        self._generation += 1
        s = AgentSession(site=reg.site, generation=self._generation)
        if old is not None:  # keep the metric window across reconnects
            s.samples = old.samples
            s.bundle_error = old.bundle_error
        s.agent_version = reg.agent_version
        s.hardware = {
            "cpu": reg.hardware.cpu,
            "cores": reg.hardware.cores,
            "memory_bytes": reg.hardware.memory_bytes,
            "accelerator": reg.hardware.accelerator,
        }
        s.bundles_held = list(reg.bundles_held)
        s.active_bundle = reg.active_bundle
        s.policy_version = reg.policy_version
        s.connected, s.connected_at, s.last_heartbeat = True, now, now
        self.sessions[reg.site] = s
        return s

    def close(self, session: AgentSession) -> None:
        current = self.sessions.get(session.site)
        if current is not None and current.generation == session.generation:
            current.connected = False

    def connected(self) -> list[AgentSession]:
        return [s for s in self.sessions.values() if s.connected]

    def heartbeat(self, s: AgentSession, hb: cpb.Heartbeat, now: float) -> None:
        s.last_heartbeat = now
        s.active_bundle = hb.active_bundle
        s.bundles_held = list(hb.bundles_held)
        m = hb.metrics
        s.samples.append(
            MetricSample(
                now,
                hb.active_bundle,
                m.requests,
                m.errors,
                m.escalation_rate,
                m.sla_attainment,
                m.p95_ms,
                m.cache_rate,
            )
        )


def now_s() -> float:
    return time.time()
