"""The Ray Serve application: one :class:`CloudEngine` per replica, fed by async calls.

It speaks ``fleetvl.v1.Router.Generate`` through Serve's gRPC proxy (the servicer function is
in the Serve config), so the router reaches it with its ordinary gRPC backend (``type:
grpc``, remote dispatch): images by digest first, deadlines as the gRPC deadline. Replicas
scale on ongoing requests; ``max_ongoing_requests`` is twice the engine's batch so that a
replica always has the next requests queued when slots free. ``check_health`` fails when the
engine thread has died, and Serve replaces the replica.

Every ``Final`` carries a verdict: ``unanswerable`` when the engine's out-of-scope score
refused the input (``finish_reason`` ``out_of_scope``, no text), else ``answer``; ``scope``
holds the score whenever the engine scored the request. Refusals are counted in
``fleetvl_cloud_unanswerable_total`` (Ray's metrics, scraped with the replica's), and each
request ends with one JSON log line (``fleetvl.cloud``) that names its verdict.

    serve run cloud_worker/serve_config.yaml        # locally or in a KubeRay RayService
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ray import serve
from ray.serve.metrics import Counter

from cloud_worker.engine import CloudEngine, CloudResult, EngineConfig, TokenEvent
from fleetvl.cache.responses import StoredAnswer
from fleetvl.policy import CacheMode
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import logprob_message, scope_message
from fleetvl.protocol.request import ChatRequest, RequestLimits
from fleetvl.protocol.stored_images import chat_from_pb
from fleetvl.sampling import CancelToken
from fleetvl.threaded_stream import stream_in_thread
from fleetvl.vlm.scope import ScopeScore

__all__ = ["VLMWorker", "build_app"]

log = logging.getLogger("fleetvl.cloud")
_RANK = {"critical": 0, "standard": 1, "batch": 2}
PUBLISH_EVERY_S = 10.0


@serve.deployment(
    name="VLMWorker",
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_wait_loop_s=2,
    graceful_shutdown_timeout_s=60,
)
class VLMWorker:
    def __init__(
        self,
        model_dir: str,
        max_slots: int = 8,
        max_context: int = 4096,
        redis_url: str | None = None,
        model_name: str = "fleet-cloud",
    ) -> None:
        from fleetvl.cache import CacheConfig, FleetCache
        from fleetvl.cache.answers import AnswerCache

        # FLEETVL_REDIS_URL over the argument (the one settings convention); None: no cache.
        cache_config = CacheConfig.for_service(redis_url)
        fleet_cache = FleetCache(cache_config) if cache_config is not None else None
        self.engine = CloudEngine(
            model_dir, EngineConfig(max_slots=max_slots, max_context=max_context), cache=fleet_cache
        )
        self.model_name = model_name
        self.limits = RequestLimits(max_prompt_tokens=max_context)
        # Created in the replica, so Serve tags them with the deployment and replica.
        self.unanswerable = Counter(
            "fleetvl_cloud_unanswerable_total",
            description="Requests refused as out of the model's scope (the verdict "
            "unanswerable), by the part of the score that said so",
            tag_keys=("part",),
        )
        self.cache_events = Counter(
            "fleetvl_cloud_cache_total",
            description="The worker's use of the shared cache: vision-encoder outputs (hit | "
            "miss per image) and answers stored (stored)",
            tag_keys=("kind", "result"),  # type: ignore[arg-type]  # Ray annotates Tuple[str]
        )
        # Answers stored under one model (and its out-of-scope score) are not answers under
        # another: the epoch the router and agents look answers up under says which.
        scope_key = ""
        if self.engine.scope is not None:
            from cloud_worker.engine.scope import SCOPE_FILE
            from fleetvl.vlm.bundle_manifest import file_sha256

            scope_key = file_sha256(Path(model_dir) / SCOPE_FILE)
        self.epoch = hashlib.sha256(f"{self.engine.digest}:{scope_key}".encode()).hexdigest()
        self.answers = AnswerCache(cache_config) if cache_config is not None else None
        self.blobs = fleet_cache.images() if fleet_cache is not None else None
        self._published = -math.inf

    def stats(self) -> dict[str, float]:
        """Engine state, and deadline attainment: answers finished by their deadline of those
        completed, and requests refused at the slot as unable to make theirs."""
        a = self.engine.admission
        return {"running": self.engine.running, "decode_steps": self.engine.decode_steps,
                "out_of_scope": int(self.engine.timings["out_of_scope"]),
                "deadline_attainment": a.attainment, "deadline_dropped": a.dropped}  # fmt: skip

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("engine thread died")

    async def Generate(  # noqa: N802 - the gRPC method name, as Serve's proxy calls it
        self, request: pb.GenerateRequest
    ) -> AsyncIterator[pb.GenerateChunk]:
        req, missing, _ = await chat_from_pb(request, self.limits, self.blobs, keep_inline=False)
        if missing:
            yield pb.GenerateChunk(need_images=pb.NeedImages(digests=missing))
            return
        params = req.params
        pol = request.sla if request.HasField("sla") else None
        rank = _RANK.get(pol.priority, 1) if pol is not None else 1
        mode = CacheMode(pol.cache) if pol is not None and pol.cache else CacheMode.READ_WRITE
        deadline = req.arrival + req.deadline_s if req.deadline_s else None
        images = [i.data for i in req.images]
        prompt = await asyncio.to_thread(self.engine.encode, req.messages, images)
        cancel = CancelToken()
        events = self.engine.submit(prompt, params, rank=rank, deadline=deadline, cancel=cancel,
                                    tenant=req.tenant, cache=mode.value)  # fmt: skip
        t0 = time.monotonic()
        # Leaving early (the caller went away, the deadline passed) cancels: the slot frees.
        async with contextlib.aclosing(stream_in_thread(lambda: events, cancel)) as stream:
            async for ev in stream:
                if isinstance(ev, TokenEvent):
                    prob = ev.confidence.prob if ev.confidence else None
                    yield pb.GenerateChunk(delta=pb.Delta(
                        text=ev.text, index=ev.index, token_prob=prob,
                        logprob=logprob_message(ev.logprob)))  # fmt: skip
                elif isinstance(ev, CloudResult):
                    total_s = time.monotonic() - t0
                    final = _final(ev, total_s)
                    if final.verdict == "unanswerable" and ev.scope is not None:
                        self.unanswerable.inc(tags={"part": ev.scope.part})
                    self._count_vision(len(prompt.images), ev.vision_cache_hits)
                    _log_line(request, "cloud", ev.finish_reason, final.verdict, ev.scope,
                              len(ev.token_ids), total_s)  # fmt: skip
                    yield pb.GenerateChunk(final=final)
                    if ev.finish_reason in ("stop", "length"):  # never refusals or cut answers
                        await self._store(req, ev, mode)
                    return

    def _count_vision(self, images: int, hits: int) -> None:
        if self.engine.vision is None or images == 0:
            return
        if hits:
            self.cache_events.inc(hits, tags={"kind": "vision", "result": "hit"})
        if images - hits:
            self.cache_events.inc(images - hits, tags={"kind": "vision", "result": "miss"})

    async def _store(self, req: ChatRequest, r: CloudResult, mode: CacheMode) -> None:
        """Write the answer where the router and the sites' agents look first."""
        if self.answers is None:
            return
        answer: StoredAnswer = {"text": r.text, "token_ids": r.token_ids,
                                "finish_reason": r.finish_reason,
                                "confidence": r.confidence.as_dict()}  # fmt: skip
        if await self.answers.put(req, self.epoch, answer, mode):
            self.cache_events.inc(tags={"kind": "answer", "result": "stored"})
            now = time.monotonic()
            if now - self._published > PUBLISH_EVERY_S:  # an evicted epoch comes back soon
                self._published = now
                await self.answers.publish(self.model_name, self.epoch)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _final(r: CloudResult, total_s: float) -> pb.Final:
    """The engine's result on the wire: ``verdict`` ``unanswerable`` for a refusal (no
    text), else ``answer``; ``scope`` set when the request was scored."""
    conf = r.confidence.mean_logprob if r.confidence.num_tokens else math.nan
    final = pb.Final(
        text=r.text,
        finish_reason=r.finish_reason,
        served_by="cloud",
        confidence=conf,
        confidence_signal="mean_logprob",
        verdict="unanswerable" if r.finish_reason == "out_of_scope" else "answer",
        usage=pb.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=len(r.token_ids),
                       cached_images=r.vision_cache_hits),  # fmt: skip
        timings=pb.Timings(
            queue_ms=r.queue_s * 1000, ttft_ms=r.ttft_s * 1000, total_ms=total_s * 1000
        ),
    )
    if r.scope is not None:
        final.scope.CopyFrom(scope_message(r.scope))
    return final


def _log_line(
    request: pb.GenerateRequest,
    served_by: str,
    finish_reason: str,
    verdict: str,
    scope: ScopeScore | None,
    completion_tokens: int,
    total_s: float,
) -> None:
    """One JSON line per answered request."""
    fields = {
        "id": request.request_id, "tenant": request.tenant, "site": request.site,
        "source": request.source, "served_by": served_by, "finish_reason": finish_reason,
        "verdict": verdict, "completion_tokens": completion_tokens,
        "total_ms": round(total_s * 1000, 2),
    }  # fmt: skip
    if scope is not None:
        fields.update(scope_score=round(scope.score, 4), scope_part=scope.part)
    log.info(json.dumps(fields, separators=(",", ":")))


def build_app(args: dict[str, object]) -> serve.Application:
    """Serve config entry point (``import_path: cloud_worker.serve_app:build_app``)."""
    return VLMWorker.bind(**args)  # type: ignore[attr-defined]  # added by @serve.deployment
