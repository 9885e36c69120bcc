"""Final answers shared by every tier, asked for at the first place that can answer.

A deterministic request (greedy, or sampled with a seed; no log-probabilities asked) that was
answered before is answered again from Redis: by the router before admission (a hit takes no
slot and teaches the latency predictor nothing), and by a site's agent before its local model
runs (through the router: sites hold no credential for the shared Redis). The cloud worker
writes what it answers.

Keys: ``Namespace(epoch, tenant).response(digest)`` — per tenant always (a hit's timing must
not tell one tenant what another asked), and per *epoch*: the digest of the model a name is
served by now (and its out-of-scope score), which each cloud worker publishes at
``fleetvl:cache:1:served:<model>``. A new model version is a new epoch, so no answer of the
old one is served for it. ``digest`` covers the messages (images by their sha256) and the
sampling parameters as the cloud worker runs them (after every tier's policy cap).

Every call is async (``redis.asyncio``), bounded by the cache's timeout, and goes through the
same backoff breaker as :class:`fleetvl.cache.store.RedisStore`: a dead Redis costs at most one
timeout, then nothing, and never fails a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis

from fleetvl.cache import metrics
from fleetvl.cache.codec import CacheEntryError
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import Namespace, request_digest
from fleetvl.cache.responses import StoredAnswer, decode_answer, encode_answer
from fleetvl.cache.store import FAILURES, Breaker
from fleetvl.redis_keys import CACHE

if TYPE_CHECKING:
    from fleetvl.policy import CacheMode
    from fleetvl.protocol.request import ChatRequest

__all__ = ["AnswerCache", "answer_digest"]

KIND = "answer"
EPOCH_TTL_S = 2.0  # how long a tier trusts the epoch it read (a rollout flips it)


def answer_digest(chat: ChatRequest) -> str | None:
    """The request's answer key, or None when a stored answer would be wrong for it."""
    p = chat.params
    if (p.temperature > 0 and p.seed is None) or p.logprobs is not None:
        return None
    params = asdict(p)
    params["stop"] = list(p.stop)
    return request_digest("", {"messages": chat.messages, "images": chat.digests}, params)


class AnswerCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._redis = aioredis.Redis.from_url(
            config.url,
            socket_timeout=config.op_timeout_s,
            socket_connect_timeout=config.connect_timeout_s,
        )
        self._epochs: dict[str, tuple[float, str | None]] = {}
        self._breaker = Breaker(config, clock)

    # -- the served model's epoch -----------------------------------------------------------

    @staticmethod
    def epoch_key(model: str) -> str:
        return f"{CACHE}:served:{model}"

    async def publish(self, model: str, epoch: str) -> None:
        """Say that ``model`` is served by ``epoch`` now (a cloud worker, at start)."""
        await self._call("publish", lambda r: r.set(self.epoch_key(model), epoch))
        self._epochs[model] = (self._clock(), epoch)

    async def epoch(self, model: str) -> str | None:
        now = self._clock()
        seen = self._epochs.get(model)
        if seen is not None and now - seen[0] < EPOCH_TTL_S:
            return seen[1]
        raw = await self._call("epoch", lambda r: r.get(self.epoch_key(model)))
        epoch = raw.decode() if isinstance(raw, bytes) else None
        self._epochs[model] = (now, epoch)
        return epoch

    # -- answers ----------------------------------------------------------------------------

    async def get(self, chat: ChatRequest, mode: CacheMode) -> StoredAnswer | None:
        """The stored answer to ``chat``, when its policy reads the cache and there is one."""
        digest = answer_digest(chat) if mode != "off" else None
        epoch = await self.epoch(chat.model) if digest else None
        if digest is None or epoch is None:
            return None
        key = Namespace(epoch, chat.tenant).response(digest)
        raw = await self._call("get", lambda r: r.get(key))
        if not isinstance(raw, bytes):
            metrics.MISSES.labels(KIND).inc()
            return None
        try:
            answer = decode_answer(key, raw)
        except CacheEntryError as exc:
            metrics.REJECTED.labels(KIND, exc.reason).inc()
            await self._call("delete", lambda r: r.delete(key))
            return None
        metrics.HITS.labels(KIND).inc()
        metrics.BYTES_READ.labels(KIND).inc(len(raw))
        return answer

    async def put(
        self, chat: ChatRequest, epoch: str, answer: StoredAnswer, mode: CacheMode
    ) -> bool:
        """Store ``answer`` (``read`` and ``off`` store nothing)."""
        digest = answer_digest(chat) if mode == "read_write" else None
        if digest is None:
            return False
        key = Namespace(epoch, chat.tenant).response(digest)
        data = encode_answer(key, answer, self.config.max_value_bytes)
        if data is None:
            return False
        ttl = self.config.ttl_response_s
        if await self._call("set", lambda r: r.set(key, data, ex=ttl)) is None:
            return False
        metrics.BYTES_WRITTEN.labels(KIND).inc(len(data))
        return True

    async def close(self) -> None:
        await self._redis.aclose()

    # -- the breaker ------------------------------------------------------------------------

    async def _call(self, op: str, fn: Callable[[aioredis.Redis], object]) -> object | None:
        """``fn(client)`` awaited under the cache's breaker (:class:`Breaker`); None when Redis
        is unavailable or refuses."""
        if not self._breaker.admit(op):
            return None
        try:
            out: object = await fn(self._redis)  # type: ignore[misc]  # redis-py's awaitables
        except FAILURES as exc:
            self._breaker.failed(op, exc)
            return None
        except redis.ResponseError as exc:
            self._breaker.refused(op, exc)
            return None
        self._breaker.succeeded()
        return out
