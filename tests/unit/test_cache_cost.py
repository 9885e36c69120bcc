"""Fetch-or-recompute follows measured costs, not a fixed preference."""

from __future__ import annotations

from fleetvl.cache.config import CacheConfig
from fleetvl.cache.cost import CostModel

MiB = 1 << 20


def test_measurements_replace_priors_and_drive_the_choice() -> None:
    cost = CostModel(CacheConfig(prior_prefill_s_per_token=0.002, prior_fetch_s_per_mib=0.01))
    # Priors: 12 MiB at 10 ms/MiB beats 1024 tokens at 2 ms/token.
    assert cost.decide("kv", 12 * MiB, prefill_tokens=1024).fetch
    # This machine turns out to prefill fast and the link to be slow: recompute wins.
    cost.observe_prefill(1000, 0.05)
    cost.observe_rtt(0.002)
    cost.observe_fetch(4 * MiB, 2.0)
    d = cost.decide("kv", 12 * MiB, prefill_tokens=1024)
    assert not d.fetch
    assert d.est_fetch_s > d.est_recompute_s
    # Saved vision work can tip it back.
    cost.observe_vision(256, 10.0)
    assert cost.decide("kv", 12 * MiB, prefill_tokens=1024, vision_tokens=256).fetch


def test_small_fetches_do_not_skew_throughput() -> None:
    cost = CostModel(CacheConfig())
    before = cost.fetch_s_per_byte.value
    cost.observe_fetch(100, 0.5)  # one slow round trip of 100 bytes says nothing of bandwidth
    assert cost.fetch_s_per_byte.value == before
