"""The agent's per-source memory: out-of-scope verdicts for the controller's alerts, and how
long a named camera has sent nothing but the same picture (a frozen feed)."""

from __future__ import annotations

from edge_agent.agent.source_health import SourceHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_feed_counts_as_unchanged_only_after_it_repeats_one_picture() -> None:
    clock = Clock()
    h = SourceHealth(clock=clock)
    assert h.unchanged("cam-1", "a") == 0.0
    clock.now += 50
    assert h.unchanged("cam-1", "a") == 0.0  # twice: a retry, or two questions on a snapshot
    clock.now += 100
    assert h.unchanged("cam-1", "a") == 150.0
    clock.now += 1
    assert h.unchanged("cam-1", "b") == 0.0  # a new picture starts over
    assert h.unchanged("cam-2", "a") == 0.0  # per source


def test_unnamed_sources_and_imageless_requests_are_never_judged() -> None:
    clock = Clock()
    h = SourceHealth(clock=clock)
    for _ in range(5):
        clock.now += 100
        assert h.unchanged(None, "a") == 0.0
        assert h.unchanged("cam-1", "") == 0.0


def test_memory_stays_bounded_and_verdicts_keep_their_window() -> None:
    h = SourceHealth(window=3, max_sources=2)
    for i in range(5):
        h.unchanged(f"cam-{i}", "x")
        h.record(f"cam-{i}", True, "camera")
    for _ in range(4):
        h.record("cam-4", False)
    snap = {s.source: s for s in h.snapshot()}
    assert sorted(snap) == ["cam-3", "cam-4"]
    assert (snap["cam-4"].frames, snap["cam-4"].out_of_scope) == (3, 0)
    assert snap["cam-3"].last_part == "camera"
