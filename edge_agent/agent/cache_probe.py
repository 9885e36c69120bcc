"""Ask the fleet's answer cache while the local model runs.

A question the cloud answered before (another site asked it about the same image, or this
one did a minute ago) is answered from the shared cache in one uplink round trip instead of
seconds of local inference followed, often, by an escalation anyway; the probe runs beside
the local attempt (:func:`first_answer`), so a miss delays nothing. The agent holds no
credential for the shared Redis: it asks the router with ``cache_only`` set, sending image
digests only, and the router answers from the cache or NOT_FOUND at once (tenant isolation and
residency are the router's, as for any escalation). Never for ``edge_only`` requests (their
text must not leave the site) or a policy whose cache mode is ``off``; a probe that fails or
takes longer than ``router.cache_probe_ms`` costs that much and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TypeVar

from edge_agent.agent import metrics
from edge_agent.agent.config import AgentConfig
from edge_agent.agent.escalation import CloudClient, EscalationError
from edge_agent.agent.requests import to_generate_request
from fleetvl.cache.answers import answer_digest
from fleetvl.errors import NO_ANSWER_CACHE
from fleetvl.policy import CacheMode, SlaPolicy
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.request import ChatRequest

__all__ = ["CacheHit", "first_answer", "probe_cache"]

log = logging.getLogger("fleetvl.edge")
T = TypeVar("T")
NO_CACHE_PAUSE_S = 60.0


@dataclass(frozen=True)
class CacheHit:
    final: pb.Final
    took_s: float


async def probe_cache(
    cloud: CloudClient, req: ChatRequest, pol: SlaPolicy, config: AgentConfig, budget_s: float
) -> CacheHit | None:
    """The cached answer to ``req``, or None (not cached, not allowed, or no answer in time)."""
    link = config.router
    if link is None or link.cache_probe_ms <= 0 or pol.cache is CacheMode.OFF:
        return None
    if not pol.residency.allows_cloud or answer_digest(req) is None:
        return None  # never read where it must not go, or not an answer the cache keeps
    if time.monotonic() < cloud.probe_off_until:
        return None
    wire = to_generate_request(req, pol, None, "cache_probe", config)
    wire.ClearField("idempotency_key")  # a probe is not the request: nothing to record
    wire.cache_only = True  # the client sends digests first, and a cache_only call needs no more
    t0 = time.monotonic()
    timeout = min(link.cache_probe_ms / 1000, budget_s)
    try:
        async for chunk in cloud.generate(wire, timeout):
            if chunk.WhichOneof("kind") == "final":
                metrics.CACHE_PROBES.labels("hit").inc()
                return CacheHit(chunk.final, time.monotonic() - t0)
    except EscalationError as exc:
        outcome = "miss" if exc.code == "NOT_FOUND" else "failed"
        metrics.CACHE_PROBES.labels(outcome).inc()
        if exc.details == NO_ANSWER_CACHE:  # this router keeps none: stop asking a while
            cloud.probe_off_until = time.monotonic() + NO_CACHE_PAUSE_S
        if outcome == "failed":
            log.info("cache probe failed: %s", exc)
        return None
    metrics.CACHE_PROBES.labels("failed").inc()
    return None


async def first_answer(
    probe: Coroutine[object, object, CacheHit | None] | None,
    local: Coroutine[object, object, T],
) -> CacheHit | T:
    """The probe beside the local attempt, so a miss costs the local answer nothing: a hit that
    comes first ends the local attempt (its engine stops at the next token); otherwise the
    local attempt's result (or error), the probe dropped."""
    if probe is None:
        return await local
    probe_t, local_t = asyncio.ensure_future(probe), asyncio.ensure_future(local)
    try:
        done, _ = await asyncio.wait({probe_t, local_t}, return_when=asyncio.FIRST_COMPLETED)
        if probe_t in done and (hit := probe_t.result()) is not None:
            local_t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await local_t
            return hit
        return await local_t
    finally:
        for t in (probe_t, local_t):
            if not t.done():
                t.cancel()
