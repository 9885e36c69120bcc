"""The store-and-forward spool on a real SQLite file: quota, TTL, states, reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.agent.spool import Spool, SpoolFull


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_quota_refuses_new_rows_and_keeps_accepted_ones(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.db", max_bytes=250)
    s.put("a", "t", b"x" * 100, 60, {})
    s.put("b", "t", b"x" * 100, 60, {})
    with pytest.raises(SpoolFull, match="spool is full"):
        s.put("c", "t", b"x" * 100, 60, {})
    assert [e.id for e in s.due()] == ["a", "b"]
    assert s.complete("a", {"answer": 1})
    assert not s.complete("a", {"answer": 2})  # recorded once
    s.put("c", "t", b"x" * 100, 60, {})  # the finished row gave its bytes back
    assert s.get("a").result == {"answer": 1}


def test_rows_survive_reopening_and_expire_by_ttl(tmp_path: Path) -> None:
    clock = Clock()
    s = Spool(tmp_path / "s.db", 10_000, clock=clock)
    s.put("a", "t", b"p", 10, {"k": "v"})
    s.put("b", "t", b"p", 100, {})
    s.close()  # no shutdown work is needed: every write is committed
    s = Spool(tmp_path / "s.db", 10_000, clock=clock)
    assert s.get("a").meta == {"k": "v"}
    clock.t += 50
    assert s.expire() == ["a"]
    assert s.get("a").state == "expired"
    s.retry_later("b", 5, "down")
    assert s.due() == []
    clock.t += 6
    assert [e.attempts for e in s.due()] == [1]


def test_the_forwarder_forgets_finished_answers_after_keep_s(tmp_path: Path) -> None:
    """Answers stay pollable for keep_s after they finished, then the forwarder's next pass
    deletes them (a pending row is kept however old it is)."""
    import asyncio

    from edge_agent.agent.config import SpoolConfig
    from edge_agent.agent.forwarder import Forwarder

    clock = Clock()
    s = Spool(tmp_path / "s.db", 10_000, keep_s=60, clock=clock)
    s.put("done", "t", b"p", 10_000, {})
    s.put("waiting", "t", b"p", 10_000, {})
    assert s.complete("done", {"answer": 1})
    f = Forwarder(s, None, SpoolConfig(path=tmp_path / "s.db"), lambda: False,  # link down
                  asyncio.Event())  # fmt: skip
    clock.t += 30
    f._tick()
    assert s.get("done").result == {"answer": 1}
    clock.t += 31
    f._tick()
    assert s.get("done") is None
    assert s.get("waiting") is not None
