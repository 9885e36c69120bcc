"""``fleetvl up`` and ``fleetvl demo``: what the commands do, in order."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from fleetvl.errors import FleetVLError
from fleetvl_tools.launch.config import UpConfig
from fleetvl_tools.launch.report import DemoSummary, print_report, summarize
from fleetvl_tools.launch.stack import Stack, endpoints_path, running_stack
from fleetvl_tools.launch.workload import (
    Endpoints,
    Outcome,
    plan_workload,
    run_workload,
    send,
)

__all__ = ["run_demo", "run_up"]


def _progress(say: Callable[[str], None]) -> Callable[[int, int, Outcome], None]:
    def show(i: int, total: int, o: Outcome) -> None:
        what = f"{o.served_by}" if o.answered else f"refused: {o.reason}"
        if o.correct is not None:
            what += f" {o.text.strip()!r} " + (
                "right" if o.correct else f"wrong (expected {o.req.expected!r})"
            )
        say(f"  [{i:>3}/{total}] {o.req.site:<14} via {o.req.via:<6} {o.req.kind:<8} "
            f"{o.status} {what} ({o.latency_s * 1000:.0f} ms)")  # fmt: skip

    return show


def run_demo(endpoints: Endpoints, say: Callable[[str], None], json_path: Path | None = None,
             per_site: int = 6, burst: int = 12) -> DemoSummary:  # fmt: skip
    """Drive the mixed workload through the agents and the router; print and return the report.

    Raises:
        FleetVLError: the ``openai`` client is not installed (it comes with ``fleetvl[dev]``).
    """
    try:
        import openai  # noqa: F401
    except ImportError:
        raise FleetVLError(
            "the demo sends its requests with the `openai` client: "
            "pip install 'openai>=1.40' (or the project's dev extra)"
        ) from None
    sites = endpoints["sites"]
    trained = bool(endpoints.get("trained"))
    # A per-run seed keeps answers cached by earlier runs from serving this one's first asks.
    phases = plan_workload(sites, per_site, burst, run_seed=secrets.randbelow(2**31),
                           fleet_questions=trained)  # fmt: skip
    total = sum(len(p) for p in phases)
    what = ("fleet questions with known answers (test split)" if trained else
            "drawn gauges and shelves (random-weight model: answers are not graded)")  # fmt: skip
    say(f"demo: {total} requests from {len(sites)} sites (steady mix, cloud-side clients, a "
        f"burst of {burst}), then escalated questions again; {what} ...")  # fmt: skip
    t0 = time.monotonic()
    outs = run_workload(phases, endpoints, _progress(say))
    summary = summarize(outs, [s["id"] for s in sites])
    summary["wall_s"] = time.monotonic() - t0
    say("")
    print_report(summary, {s["id"]: s["residency"] for s in sites}, say)
    say(f"{len(outs)} requests in {summary['wall_s']:.1f} s")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
        say(f"report written to {json_path}")
    return summary


def _first_answer(stack: Stack, say: Callable[[str], None]) -> float:
    """Time from the start of ``fleetvl up`` to the first answered demo request."""
    endpoints = stack.endpoints()
    first = plan_workload(endpoints["sites"][:1], per_site=1, burst=0,
                          run_seed=secrets.randbelow(2**31),
                          fleet_questions=bool(endpoints.get("trained")))[0][0]  # fmt: skip
    out = send(first, endpoints)
    if not out.answered:
        raise FleetVLError(f"the first demo request was refused: {out.status} {out.reason}")
    t = stack.elapsed()
    cold = stack.artifacts is not None and stack.artifacts.built
    stack.timings["first_answer_s"] = t
    stack.timings["cold"] = float(cold)
    how = "cold: model and bundle built" if cold else "warm: cached model and bundle"
    say(
        f"first answered demo request ({first.site}, served by {out.served_by}) "
        f"{t:.1f} s after `fleetvl up` started ({how})"
    )
    return t


def run_up(cfg: UpConfig, say: Callable[[str], None], *, demo: bool = False,
           exit_after: bool = False, t_start: float | None = None,
           demo_json: Path | None = None) -> int:  # fmt: skip
    try:
        with running_stack(cfg, say, t_start) as stack:
            _first_answer(stack, say)
            stack.publish()
            timings = cfg.run_dir / "timings.json"
            history = json.loads(timings.read_text()) if timings.exists() else []
            history.append({"ts": time.time(), **stack.timings})
            timings.write_text(json.dumps(history[-20:], indent=2))
            say("")
            say("FleetVL is up:")
            stack.print_endpoints()
            if demo:
                say("")
                run_demo(stack.endpoints(), say, demo_json)
            if exit_after:
                return 0
            say("")
            say("Ctrl-C stops everything.  Try `fleetvl demo` in another terminal.")
            while True:
                for child in stack.children.items:
                    if not child.running():
                        raise FleetVLError(f"{child.name} exited (status "
                                           f"{child.proc.returncode if child.proc else '?'}); "
                                           f"see {child.log}:\n{child.tail()}")  # fmt: skip
                time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def demo_endpoints(cfg: UpConfig) -> Endpoints:
    path = endpoints_path(cfg)
    if not path.exists():
        raise FleetVLError(f"no running fleet ({path} is missing): start `fleetvl up` first, "
                           "or run `fleetvl up --demo`")  # fmt: skip
    return json.loads(path.read_text())
