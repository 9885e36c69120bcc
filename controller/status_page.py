"""The fleet status page: one server-rendered HTML page a person reads (refreshes itself)."""

from __future__ import annotations

import math
import time
from typing import Any

from jinja2 import Environment

__all__ = ["render_status"]

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>FleetVL fleet status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#667} table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 10px;border-bottom:1px solid #e3e5ea;text-align:left;white-space:nowrap}
th{background:#eef0f4;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#d8f3df;color:#15602b} .bad{background:#fbdada;color:#8a1c1c}
.off{background:#e6e7eb;color:#555} .warn{background:#fff0c2;color:#7a5600}
.cards{display:flex;gap:12px} .card{background:#fff;padding:10px 16px;border-radius:6px}
.card b{font-size:20px;display:block} .bar{background:#e3e5ea;height:10px;width:200px;
border-radius:5px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#3b7be0}
</style></head><body>
<h1>FleetVL fleet status</h1>
<div class="muted">controller {{ s.controller_id }} · policy version {{ s.policy_version }}
 · {{ now }}</div>
<div class="cards" style="margin-top:12px">
 <div class="card" id="total-sites"><b>{{ s.totals.sites }}</b>sites</div>
 <div class="card" id="total-connected"><b>{{ s.totals.connected }}</b>connected</div>
 <div class="card" id="total-healthy"><b>{{ s.totals.healthy }}</b>healthy</div>
</div>
<h2>Site health alerts</h2>
{% if not s.alerts %}<div class="muted" id="alerts">none</div>{% else %}
<table id="alerts"><tr><th>Alert</th><th>Since</th></tr>
{% for a in s.alerts %}<tr data-site="{{ a.site }}" data-source="{{ a.source }}">
<td><span class="badge warn">{{ a.kind }}</span> {{ a.message }}</td>
<td>{{ a.since_text }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Rollouts</h2>
{% if not s.rollouts %}<div class="muted">No rollouts.</div>{% else %}
<table id="rollouts"><tr><th>Rollout</th><th>Bundle</th><th>State</th><th>Wave</th>
<th>Progress</th><th>Last event</th></tr>
{% for r in s.rollouts %}<tr data-rollout="{{ r.id }}">
<td>{{ r.id }}</td><td>{{ r.bundle_name }}</td>
<td><span class="badge {{ r.badge }}">{{ r.status }}</span></td>
<td>{{ r.progress.wave }} / {{ r.progress.waves }} ({{ r.progress.percent|int }}%)</td>
<td><span class="bar"><span style="width:{{ r.pct_new }}%"></span></span>
 {{ r.progress.sites_on_new }} / {{ r.progress.matching_sites }} sites</td>
<td>{{ r.last_event }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Sites</h2>
<table id="sites"><tr><th>Site</th><th>Tenant</th><th>Kind</th><th>Health</th>
<th>Last heartbeat</th><th>Bundle</th><th>Requests/min</th><th>Escalation</th>
<th>SLA attainment</th><th>p95</th><th>From cache</th></tr>
{% for x in s.sites %}<tr data-site="{{ x.id }}">
<td>{{ x.id }}{% if x.location %} <span class="muted">{{ x.location }}</span>{% endif %}</td>
<td>{{ x.tenant }}</td><td>{{ x.kind }}</td>
<td><span class="badge {{ x.badge }}">{{ x.health }}</span></td>
<td>{{ x.hb }}</td>
<td>{{ x.active_bundle_name or "—" }}{% if not x.in_sync %}
 <span class="badge warn">→ {{ x.desired_bundle_name }}</span>{% endif %}</td>
<td class="num">{{ x.rpm }}</td><td class="num">{{ x.esc }}</td>
<td class="num">{{ x.sla }}</td><td class="num">{{ x.p95 }}</td>
<td class="num">{{ x.cache }}</td></tr>{% endfor %}
</table>
<h2>Recent changes</h2>
<table id="audit"><tr><th>When</th><th>Who</th><th>What</th><th>Why</th></tr>
{% for e in events %}<tr><td>{{ e.when }}</td><td>{{ e.who }}</td><td>{{ e.what }}</td>
<td>{{ e.why }}</td></tr>{% endfor %}</table></body></html>"""

_env = Environment(autoescape=True)
_tmpl = _env.from_string(_TEMPLATE)
_ROLLOUT_BADGE = {
    "running": "warn",
    "paused": "off",
    "completed": "ok",
    "aborted": "off",
    "rolled_back": "bad",
}


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.1f}%"


def _site_row(x: dict[str, Any]) -> dict[str, Any]:
    if not x["connected"]:
        health, badge = "offline", "off"
    elif x.get("bundle_error"):
        health, badge = "bundle refused", "bad"
    elif x["healthy"]:
        health, badge = "healthy", "ok"
    else:
        health, badge = "stale", "bad"
    age = x.get("last_heartbeat_age_s")
    p95 = x.get("p95_ms")
    return {
        **x,
        "health": health,
        "badge": badge,
        "hb": "never" if age is None else f"{age:.0f} s ago",
        "rpm": f"{x.get('requests_per_min') or 0:.0f}",
        "esc": _pct(x.get("escalation_rate")),
        "sla": _pct(x.get("sla_attainment")),
        "p95": "—" if p95 is None or math.isnan(p95) else f"{p95:.0f} ms",
        "cache": _pct(x.get("cache_rate")),
    }


def render_status(
    status: dict[str, Any],
    names: dict[str, str] | None = None,
    audit: list[dict[str, Any]] | None = None,
) -> str:
    """HTML for ``Controller.status()`` and the newest audit entries (newest first).

    The "Site health alerts" section lists ``status["alerts"]`` by message, or says "none".
    """
    rollouts = []
    for r in status["rollouts"]:
        p = r["progress"]
        last = r["history"][-1] if r["history"] else {}
        rollouts.append(
            {
                **r,
                "bundle_name": (names or {}).get(r["digest"], r["plan"]["bundle"]),
                "badge": _ROLLOUT_BADGE.get(r["status"], "off"),
                "pct_new": round(100 * p["sites_on_new"] / max(p["matching_sites"], 1)),
                "last_event": f"{last.get('what', '')}: {last.get('why', '')}"[:120],
            }
        )
    alerts = [
        {**a, "since_text": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(a["since"]))}
        for a in status.get("alerts", [])
    ]
    s = {
        **status,
        "rollouts": rollouts,
        "sites": [_site_row(x) for x in status["sites"]],
        "alerts": alerts,
    }
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status["ts"]))
    events = [
        {**e, "when": time.strftime("%H:%M:%S", time.gmtime(e["ts"])), "why": str(e["why"])[:100]}
        for e in reversed(audit or [])
    ]
    return _tmpl.render(s=s, now=now, events=events)
