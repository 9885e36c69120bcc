"""Delivers spooled escalations when the uplink is back: backoff, exactly-once, webhooks.

A loop wakes when something is spooled, when the uplink comes back, or every ``poll_s``; it
takes due rows oldest first, up to ``concurrency`` at once, and sends each with its request
id as idempotency key. The answer is committed to the spool (``done``) before the row counts
as delivered; a crash in between sends it again, and the router answers the replay from its
record without dispatching it twice. A retryable failure backs off exponentially (with
jitter) per row; a refusal the router gives for the request itself marks the row ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.request
from collections.abc import Callable, Mapping

from edge_agent.agent import metrics
from edge_agent.agent.answers import Answer, completion_body
from edge_agent.agent.config import SpoolConfig
from edge_agent.agent.escalation import CloudClient, EscalationError
from edge_agent.agent.spool import Spool, SpoolEntry
from fleetvl.protocol import fleetvl_pb2 as pb

__all__ = ["Forwarder"]

log = logging.getLogger("fleetvl.edge")


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        cloud: CloudClient,
        config: SpoolConfig,
        link_up: Callable[[], bool],
        wakeup: asyncio.Event,
        poll_s: float = 0.25,
    ) -> None:
        self.spool = spool
        self.cloud = cloud
        self.config = config
        self.link_up = link_up
        self.wakeup = wakeup
        self.poll_s = poll_s
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    async def run(self) -> None:
        """Deliver until cancelled."""
        try:
            while True:
                self._tick()
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.poll_s)
        finally:
            for t in list(self._tasks):
                t.cancel()

    def _tick(self) -> None:
        for rid in self.spool.expire():
            metrics.SPOOL_DELIVERIES.labels("expired").inc()
            log.warning("spooled request %s expired before the uplink returned", rid)
        # Finished rows stay pollable for keep_s, then go: the file does not grow forever.
        self.spool.purge()
        counts = self.spool.counts()
        metrics.SPOOL_PENDING.set(counts.get("pending", 0))
        metrics.SPOOL_BYTES.set(self.spool.pending_bytes())
        if not self.link_up():
            return
        room = self.config.concurrency - len(self._inflight)
        if room <= 0:
            return
        for entry in self.spool.due(limit=room + len(self._inflight)):
            if entry.id in self._inflight or room <= 0:
                continue
            room -= 1
            self._inflight.add(entry.id)
            task = asyncio.create_task(self._deliver(entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, e: SpoolEntry) -> None:
        try:
            req = pb.GenerateRequest.FromString(e.payload)
            timeout = min(self.config.attempt_timeout_s, e.expires - time.time())
            final = None
            try:
                async for chunk in self.cloud.generate(req, timeout):
                    if chunk.WhichOneof("kind") == "final":
                        final = chunk.final
            except EscalationError as exc:
                if not exc.retryable:
                    self.spool.fail(e.id, str(exc))
                    metrics.SPOOL_DELIVERIES.labels("failed").inc()
                    return
                delay = min(
                    self.config.retry_backoff_s * 2**e.attempts, self.config.max_retry_backoff_s
                ) * (0.5 + random.random())
                self.spool.retry_later(e.id, delay, str(exc))
                metrics.SPOOL_DELIVERIES.labels("retry").inc()
                return
            if final is None:
                self.spool.retry_later(e.id, self.config.retry_backoff_s, "no answer")
                return
            body = completion_body(_answer(e, req, final))
            if self.spool.complete(e.id, body):
                self.delivered += 1
                metrics.SPOOL_DELIVERIES.labels("done").inc()
                hook = e.meta.get("webhook")
                if hook:
                    await asyncio.to_thread(_post_webhook, hook, e.id, body)
        finally:
            self._inflight.discard(e.id)
            self.wakeup.set()  # room for the next one


def _answer(e: SpoolEntry, req: pb.GenerateRequest, f: pb.Final) -> Answer:
    return Answer.from_cloud(
        f,
        answer_id=e.id,
        model=e.meta.get("model", req.model),
        min_confidence=req.sla.min_confidence,
        escalation_reason=f"{e.meta.get('reason', '')}; delivered from the spool",
        local_tokens=int(e.meta.get("local_tokens", 0)),
        local_max_tokens=int(e.meta.get("local_max_tokens", 0)),
        policy=e.meta.get("policy", {}),
        gate=e.meta.get("gate"),
    )


def _post_webhook(url: str, rid: str, body: Mapping[str, object]) -> None:
    """Best effort, three tries: the answer stays pollable whatever happens here."""
    data = json.dumps({"id": rid, "status": "completed", "response": body}).encode()
    for i in range(3):
        try:
            r = urllib.request.Request(url, data, {"content-type": "application/json"})
            with urllib.request.urlopen(r, timeout=5):  # noqa: S310 - operator-configured URL
                return
        except OSError as exc:
            log.warning("webhook %s for %s failed (%s), try %d", url, rid, exc, i + 1)
            time.sleep(0.5 * 2**i)
