"""The site health alert rule (pure) and the alert book, without any infrastructure."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.alerts import (
    OUT_OF_SCOPE,
    SiteAlerts,
    SourceReport,
    alert_message,
    out_of_scope_alert,
)
from controller.config import AlertsConfig, ControllerConfig


def report(out: int, frames: int = 25, source: str = "cam-3", part: str = "camera") -> SourceReport:
    return SourceReport(source=source, frames=frames, out_of_scope=out, last_part=part)


@pytest.mark.parametrize(
    ("out", "frames", "expected"),
    [
        (20, 25, (20, 25)),  # exactly the minimum
        (21, 25, (21, 25)),
        (19, 25, None),
        (0, 25, None),
        (19, 19, None),  # fewer frames than the minimum never alert
        (20, 20, (20, 20)),  # a full minimum of frames, all out of scope
        (21, 22, (21, 22)),  # fewer frames than the window but enough
    ],
)
def test_rule_counts_out_of_scope_frames_in_the_window(
    out: int, frames: int, expected: tuple[int, int] | None
) -> None:
    assert out_of_scope_alert(report(out, frames), 20, 25) == expected


def test_rule_counts_only_frames_that_may_be_in_the_window() -> None:
    # The agent keeps 50 frames: 30 out of scope. At least 30 - 25 = 5 of them are among the
    # last 25, at most 25: the rule takes the lower bound, never alerting on old frames.
    assert out_of_scope_alert(report(30, 50), 20, 25) is None
    assert out_of_scope_alert(report(47, 50), 20, 25) == (22, 25)


def test_rule_ignores_inconsistent_counts() -> None:
    assert out_of_scope_alert(report(99, 10), 5, 25) == (10, 10)  # clamped to the frames
    assert out_of_scope_alert(report(-3, -1), 1, 25) is None
    assert out_of_scope_alert(report(30, 0), 1, 25) is None


def test_message_forms() -> None:
    assert (
        alert_message("substation-12", "cam-3", 20, 25, "camera")
        == "source cam-3 at substation-12: 20 of the last 25 frames out of scope (camera)"
    )
    assert (
        alert_message("substation-12", "", 21, 25, "")
        == "source (unnamed) at substation-12: 21 of the last 25 frames out of scope"
    )


def test_alerts_raise_once_keep_since_and_clear() -> None:
    book = SiteAlerts(20, 25)
    raised, cleared = book.observe("sub-1", [report(21), report(2, source="cam-4")], now=100.0)
    assert [a.source for a in raised] == ["cam-3"]
    assert cleared == []
    a = raised[0]
    assert (a.site, a.kind, a.frames, a.out_of_scope, a.part, a.since) == (
        "sub-1",
        OUT_OF_SCOPE,
        25,
        21,
        "camera",
        100.0,
    )
    assert a.message == "source cam-3 at sub-1: 21 of the last 25 frames out of scope (camera)"
    assert a.public()["message"] == a.message
    # Still holding: not raised again, since kept, counts updated.
    raised, cleared = book.observe("sub-1", [report(24, part="vision")], now=105.0)
    assert (raised, cleared) == ([], [])
    (held,) = book.alerts()
    assert (held.out_of_scope, held.part, held.since) == (24, "vision", 100.0)
    # Another site's heartbeat leaves this site's alerts alone.
    book.observe("sub-2", [report(22, source="")], now=106.0)
    assert [(x.site, x.source) for x in book.alerts()] == [("sub-1", "cam-3"), ("sub-2", "")]
    assert book.alerts("sub-2")[0].message.startswith("source (unnamed) at sub-2: 22 of")
    assert book.count() == 2
    # Below the rule: cleared.
    raised, cleared = book.observe("sub-1", [report(0)], now=110.0)
    assert raised == []
    assert [x.source for x in cleared] == ["cam-3"]
    # A source the heartbeat no longer lists clears too (the agent restarted).
    _, cleared = book.observe("sub-2", [], now=111.0)
    assert [x.site for x in cleared] == ["sub-2"]
    assert book.alerts() == []
    assert book.count() == 0
    assert book.reports["sub-1"]["cam-3"].out_of_scope == 0


def test_alert_book_refuses_an_impossible_rule() -> None:
    with pytest.raises(ValueError, match="out_of_scope_min"):
        SiteAlerts(30, 25)


def test_config_fields_defaults_and_validation() -> None:
    cfg = ControllerConfig.model_validate({"admin_token": "t"})
    assert (cfg.alerts.out_of_scope_min, cfg.alerts.out_of_scope_window) == (20, 25)
    cfg = ControllerConfig.model_validate(
        {"admin_token": "t", "alerts": {"out_of_scope_min": 5, "out_of_scope_window": 10}}
    )
    assert cfg.alerts == AlertsConfig(out_of_scope_min=5, out_of_scope_window=10)
    with pytest.raises(ValidationError, match=r"out_of_scope_min \(30\) is larger"):
        AlertsConfig(out_of_scope_min=30, out_of_scope_window=25)
    with pytest.raises(ValidationError):
        AlertsConfig(out_of_scope_min=0)
    with pytest.raises(ValidationError):
        ControllerConfig.model_validate({"admin_token": "t", "alerts": {"min": 3}})
