"""Fetch or recompute: a cache hit is used only when moving its bytes is cheaper than redoing it.

Public measurements show Redis-backed KV fetches that are slower than recomputing the prefill,
so a hit is not assumed to pay. Each engine keeps running estimates (exponentially weighted) of
its own prefill and vision-encoder time per token and of the cache's fetch time per byte plus
round trip, all measured on live requests; until the first measurement the priors from
:class:`CacheConfig` stand in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fleetvl.cache import metrics
from fleetvl.cache.config import CacheConfig

__all__ = ["CostModel", "Decision"]

MiB = float(1 << 20)


@dataclass(frozen=True)
class Decision:
    kind: str
    fetch: bool
    est_fetch_s: float
    est_recompute_s: float

    @property
    def choice(self) -> str:
        return "fetch" if self.fetch else "recompute"


class _Ewma:
    def __init__(self, prior: float, alpha: float) -> None:
        self.value = prior
        self.samples = 0
        self._alpha = alpha

    def add(self, x: float) -> None:
        # The first real sample replaces the prior outright: priors are guesses.
        self.value = x if self.samples == 0 else self.value + self._alpha * (x - self.value)
        self.samples += 1


class CostModel:
    def __init__(self, config: CacheConfig, alpha: float = 0.3) -> None:
        self._lock = threading.Lock()
        self.policy = config.fetch_policy
        self.prefill_s_per_token = _Ewma(config.prior_prefill_s_per_token, alpha)
        self.vision_s_per_token = _Ewma(config.prior_vision_s_per_token, alpha)
        self.fetch_s_per_byte = _Ewma(config.prior_fetch_s_per_mib / MiB, alpha)
        self.rtt_s = _Ewma(0.0005, alpha)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            with self._lock:
                self.prefill_s_per_token.add(seconds / tokens)

    def observe_vision(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            with self._lock:
                self.vision_s_per_token.add(seconds / tokens)

    def observe_rtt(self, seconds: float) -> None:
        with self._lock:
            self.rtt_s.add(seconds)

    def observe_fetch(self, nbytes: int, seconds: float) -> None:
        """Fetch + decode time of ``nbytes``; the round trip is taken out first."""
        if nbytes >= 64 * 1024:  # small fetches are all round trip: no throughput signal
            with self._lock:
                self.fetch_s_per_byte.add(max(seconds - self.rtt_s.value, 0.0) / nbytes)

    def decide(
        self, kind: str, nbytes: int, prefill_tokens: int = 0, vision_tokens: int = 0
    ) -> Decision:
        fetch_s = 2 * self.rtt_s.value + nbytes * self.fetch_s_per_byte.value
        recompute_s = (
            prefill_tokens * self.prefill_s_per_token.value
            + vision_tokens * self.vision_s_per_token.value
        )
        fetch = {"always": True, "never": False}.get(self.policy, fetch_s < recompute_s)
        d = Decision(kind, fetch, fetch_s, recompute_s)
        metrics.DECISIONS.labels(kind, d.choice).inc()
        return d

    def snapshot(self) -> dict[str, float]:
        return {
            "prefill_s_per_token": self.prefill_s_per_token.value,
            "vision_s_per_token": self.vision_s_per_token.value,
            "fetch_s_per_mib": self.fetch_s_per_byte.value * MiB,
            "rtt_s": self.rtt_s.value,
        }
