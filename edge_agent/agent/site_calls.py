"""Requests the router sends down the agent's outbound connection (flow 4): ``edge_only``
requests entering the cloud, answered here and never anywhere else.

They run through the same local queue and engines as the box's own clients, to the end (there
is nowhere to escalate them), and report the gate's signal and value with the answer. An input
the bundle's scope score calls out of scope gets the verdict ``unanswerable`` (nowhere to
escalate it either), counted per source like the box's own requests.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator

from edge_agent.agent.scope_verdicts import count_verdict
from edge_agent.agent.service import AgentService
from fleetvl.errors import InputError
from fleetvl.policy import PolicyOverride, Residency
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import scope_message
from fleetvl.protocol.request import ChatRequest

__all__ = ["site_call_handler"]

log = logging.getLogger("fleetvl.edge.requests")


def site_call_handler(service: AgentService):  # noqa: ANN201 - edge_agent.uplink.Handler
    async def handle(
        req: pb.GenerateRequest, cancel: threading.Event
    ) -> AsyncIterator[pb.GenerateChunk]:
        areq, missing = ChatRequest.from_pb(
            req, service.config.limits, id=req.request_id or f"call-{uuid.uuid4().hex[:20]}",
            tenant=req.tenant or service.config.tenant, decode=True,
        )  # fmt: skip
        if missing:
            raise InputError(f"call without the bytes of images {missing}")
        # Whatever the cloud side resolved, this request stays on the box.
        areq.sla = PolicyOverride(residency=Residency.EDGE_ONLY)
        resolved = service.resolve(areq.sla)
        pol = resolved.policy
        areq.capped(pol.max_output_tokens)
        deadline = areq.arrival + pol.deadline_ms / 1000.0
        attempt = await service.run_local(areq, pol, deadline, early=False)
        count_verdict(service.config.site, service.health, areq, attempt)
        v = attempt.verdict
        verdict = "unanswerable" if attempt.out_of_scope else "answer"
        log.info(json.dumps({"site": service.config.site, "id": areq.id, "api": "uplink",
                             "status": 200, "outcome": "edge", "verdict": verdict,
                             "confidence": v.value, "signal": v.signal,
                             "local_tokens": attempt.tokens,
                             "total_ms": round(attempt.total_s * 1000, 2)}))  # fmt: skip
        if attempt.text:
            yield pb.GenerateChunk(delta=pb.Delta(text=attempt.text, index=0))
        yield pb.GenerateChunk(final=pb.Final(
            text=attempt.text, finish_reason=attempt.finish_reason, served_by="edge",
            confidence=v.value, confidence_signal=v.signal, verdict=verdict,
            scope=scope_message(attempt.scope) if attempt.scope is not None else None,
            usage=pb.Usage(prompt_tokens=attempt.prompt_tokens, completion_tokens=attempt.tokens),
            timings=pb.Timings(ttft_ms=attempt.ttft_s * 1000, total_ms=attempt.total_s * 1000),
        ))  # fmt: skip

    return handle
