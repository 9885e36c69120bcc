"""Site health alerts: a run of out-of-scope frames from one image source of a site.

With every heartbeat an agent reports each image source it keeps (a camera id; ``""`` for
requests that name none) with how many of its latest frames were judged out of scope (an
input the model was not trained to answer: a covered, dark, blurred or misaimed camera,
another kind of scene). :func:`out_of_scope_alert` is the rule, a pure function;
:class:`SiteAlerts` keeps each site's latest report and the alerts that hold now.

Soft state: nothing here is persisted. After a controller restart the alerts come back with the
agents' next heartbeats (``since`` is then when this controller first saw them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from fleetvl.protocol import control_pb2 as cpb

__all__ = [
    "OUT_OF_SCOPE",
    "Alert",
    "SiteAlerts",
    "SourceReport",
    "alert_message",
    "out_of_scope_alert",
]

OUT_OF_SCOPE = "out_of_scope"  # the alert kind (the label of the Prometheus gauge)
MAX_SOURCES = 1024  # sources kept per site report (agents keep 256 by default)


@dataclass(frozen=True)
class SourceReport:
    """One source as a heartbeat reported it (wire type: ``control.v1.SourceHealth``)."""

    source: str
    frames: int  # frames in the agent's window for this source
    out_of_scope: int  # of those, judged out of scope
    last_part: str  # score part of the latest out-of-scope frame ("" if none)

    @classmethod
    def from_proto(cls, m: cpb.SourceHealth) -> SourceReport:
        return cls(m.source, m.frames, m.out_of_scope, m.last_part)


@dataclass(frozen=True)
class Alert:
    site: str
    source: str
    kind: str
    frames: int  # frames the rule looked at
    out_of_scope: int  # of those, out of scope
    part: str
    message: str
    since: float  # unix time the alert was raised (by this controller)

    def public(self) -> dict[str, object]:
        """The admin API's JSON object for this alert."""
        return asdict(self)


def out_of_scope_alert(r: SourceReport, min_count: int, window: int) -> tuple[int, int] | None:
    """The out-of-scope rule: at least ``min_count`` of the source's last ``window`` frames.

    Args:
        r: the source as reported. Counts are clamped to be consistent (a buggy agent's
            negative or too large numbers cannot raise an alert by themselves).
        min_count: fewest out-of-scope frames that alert; a source with fewer frames than
            this never alerts.
        window: frames looked at. When the agent keeps more frames than this, the ones
            before the window may hold out-of-scope frames too, so only
            ``out_of_scope - (frames - window)`` are counted: a lower bound, never an alert
            made of old frames.

    Returns:
        ``(out_of_scope, frames)`` over the window when the rule holds, else None.
    """
    frames = max(r.frames, 0)
    bad = min(max(r.out_of_scope, 0), frames)
    looked = min(frames, window)
    count = max(0, bad - (frames - looked))
    if looked < min_count or count < min_count:
        return None
    return count, looked


def alert_message(site: str, source: str, out_of_scope: int, frames: int, part: str) -> str:
    """``source cam-3 at substation-12: 20 of the last 25 frames out of scope (camera)``.

    An unnamed source (``""``) is written ``source (unnamed)``; an empty ``part`` drops the
    parentheses.
    """
    name = f"source {source}" if source else "source (unnamed)"
    tail = f" ({part})" if part else ""
    return f"{name} at {site}: {out_of_scope} of the last {frames} frames out of scope{tail}"


class SiteAlerts:
    """The latest per-source report of every site and the alerts that hold now.

    Called from the controller's event loop only (no locking). Each heartbeat replaces its
    site's whole report: a source it no longer lists (the agent restarted, or dropped a source
    it had not seen for long) no longer meets the rule, so its alert clears.
    """

    def __init__(self, out_of_scope_min: int, out_of_scope_window: int) -> None:
        if not 1 <= out_of_scope_min <= out_of_scope_window:
            raise ValueError(
                f"need 1 <= out_of_scope_min ({out_of_scope_min}) <= out_of_scope_window "
                f"({out_of_scope_window})"
            )
        self.min = out_of_scope_min
        self.window = out_of_scope_window
        self.reports: dict[str, dict[str, SourceReport]] = {}
        self._alerts: dict[tuple[str, str, str], Alert] = {}  # (site, source, kind)

    def observe(
        self, site: str, reports: Iterable[SourceReport], now: float
    ) -> tuple[list[Alert], list[Alert]]:
        """Apply one heartbeat's report of ``site`` (every source the agent keeps).

        An alert that still holds keeps its ``since`` and takes the new counts. Only the
        first :data:`MAX_SOURCES` sources are kept (a broken agent cannot grow the
        controller's memory without bound).

        Returns:
            ``(raised, cleared)``: alerts that began and ended with this heartbeat.
        """
        # A source listed twice: the last one wins.
        latest = {r.source: r for r in itertools.islice(reports, MAX_SOURCES)}
        self.reports[site] = latest
        raised: list[Alert] = []
        holding: set[tuple[str, str, str]] = set()
        for source, r in latest.items():
            hit = out_of_scope_alert(r, self.min, self.window)
            if hit is None:
                continue
            key = (site, source, OUT_OF_SCOPE)
            holding.add(key)
            bad, frames = hit
            old = self._alerts.get(key)
            alert = Alert(
                site=site,
                source=source,
                kind=OUT_OF_SCOPE,
                frames=frames,
                out_of_scope=bad,
                part=r.last_part,
                message=alert_message(site, source, bad, frames, r.last_part),
                since=old.since if old is not None else now,
            )
            self._alerts[key] = alert
            if old is None:
                raised.append(alert)
        cleared = [a for k, a in self._alerts.items() if k[0] == site and k not in holding]
        for a in cleared:
            del self._alerts[(a.site, a.source, a.kind)]
        return raised, cleared

    def alerts(self, site: str | None = None) -> list[Alert]:
        """Alerts holding now (of one site, or all), by site then source."""
        return sorted(
            (a for a in self._alerts.values() if site is None or a.site == site),
            key=lambda a: (a.site, a.source, a.kind),
        )

    def count(self, kind: str = OUT_OF_SCOPE) -> int:
        return sum(1 for a in self._alerts.values() if a.kind == kind)
