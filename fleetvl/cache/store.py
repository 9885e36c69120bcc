"""The Redis connection: bounded calls, a backoff breaker, and a background writer.

A cache outage slows requests down and never fails them: every call is bounded by a socket
timeout, a failure opens a breaker so later requests skip Redis at once instead of each waiting
out the timeout, and after the backoff the next call tries again (redis-py reconnects pooled
connections by itself). Writes go through a bounded queue drained by one thread, off the
request's critical path; when the queue is full the write is dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import redis

from fleetvl.cache import metrics
from fleetvl.cache.config import CacheConfig

__all__ = ["FAILURES", "Breaker", "RedisStore"]

log = logging.getLogger("fleetvl.cache")
T = TypeVar("T")
FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)  # an outage, not a refusal


class Breaker:
    """The cache's backoff breaker, shared by the synchronous store and the async answer
    cache: a failure (timeout, refused connection) opens it for a backoff that doubles up to
    ``max_backoff_s``; while open, calls are skipped at once (counted); the first success after
    it resets the backoff. A server-side refusal (OOM without eviction, wrong type) is counted
    but is not an outage."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._backoff = config.backoff_s

    @property
    def closed(self) -> bool:
        return self._clock() >= self._open_until

    def admit(self, op: str) -> bool:
        """Whether to try ``op`` now (False: skipped, counted as bypassed)."""
        if self.closed:
            return True
        metrics.BYPASSED.labels(op).inc()
        return False

    def failed(self, op: str, exc: BaseException) -> None:
        metrics.ERRORS.labels(op).inc()
        metrics.AVAILABLE.set(0)
        with self._lock:
            wait = self._backoff
            self._open_until = self._clock() + wait
            self._backoff = min(self._backoff * 2, self.config.max_backoff_s)
        log.warning("cache unavailable (%s: %s); bypassing it for %.1fs", op, exc, wait)

    def refused(self, op: str, exc: BaseException) -> None:
        metrics.ERRORS.labels(op).inc()
        log.warning("cache %s refused by Redis: %s", op, exc)

    def succeeded(self) -> None:
        if self._backoff != self.config.backoff_s:
            log.info("cache reachable again")
        with self._lock:
            self._backoff = self.config.backoff_s
        metrics.AVAILABLE.set(1)


class RedisStore:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        kw: dict[str, float | str | None] = {
            "socket_timeout": config.op_timeout_s,
            "socket_connect_timeout": config.connect_timeout_s,
            "health_check_interval": 30,
        }
        if config.url.startswith("rediss://"):
            kw.update(
                ssl_ca_certs=config.tls_ca_file,
                ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file,
            )
        self.client = redis.Redis.from_url(config.url, **kw)
        self.breaker = Breaker(config, clock)
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(config.write_queue)
        self._pending = 0
        self._idle = threading.Condition()
        self._writer = threading.Thread(
            target=self._drain, name="fleetvl-cache-writer", daemon=True
        )
        self._writer.start()
        metrics.AVAILABLE.set(1)

    # -- breaker ----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.breaker.closed

    def call(self, op: str, fn: Callable[[redis.Redis], T]) -> T | None:
        """Run ``fn(client)``; None when Redis is unavailable (failure counted, breaker opened)."""
        if not self.breaker.admit(op):
            return None
        try:
            out = fn(self.client)
        except FAILURES as exc:
            self.breaker.failed(op, exc)
            return None
        except redis.ResponseError as exc:
            self.breaker.refused(op, exc)
            return None
        self.breaker.succeeded()
        return out

    # -- operations -------------------------------------------------------------------------

    def strlen_many(self, keys: Sequence[str]) -> list[int] | None:
        """Sizes of ``keys`` (0 when absent), one round trip."""
        if not keys:
            return []

        def run(c: redis.Redis) -> list[int]:
            p = c.pipeline(transaction=False)
            for k in keys:
                p.strlen(k)
            return [int(x) for x in p.execute()]

        return self.call("strlen", run)

    def mget(self, keys: Sequence[str]) -> list[bytes | None] | None:
        if not keys:
            return []
        # The client decodes nothing (no decode_responses): values come back as bytes.
        return self.call("mget", lambda c: cast("list[bytes | None]", c.mget(list(keys))))

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> bool:
        def run(c: redis.Redis) -> bool:
            p = c.pipeline(transaction=False)
            for k, v in items:
                p.set(k, v, ex=ttl_s)
            p.execute()
            return True

        return bool(self.call("set", run))

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            self.call("delete", lambda c: c.delete(*keys))

    def ping_s(self) -> float | None:
        t0 = time.perf_counter()
        ok = self.call("ping", lambda c: c.ping())
        return time.perf_counter() - t0 if ok else None

    # -- async writes -----------------------------------------------------------------------

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job`` for the writer thread; False (and counted) when the queue is full."""
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._idle:
                self._pending -= 1
            metrics.WRITES_DROPPED.inc()
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued writes are done (tests, benchmarks, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a failed cache write must never kill the writer
                log.exception("cache write failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def close(self) -> None:
        self.flush(timeout_s=5.0)
        self._queue.put(None)
        self._writer.join(timeout=5.0)
        self.client.close()
