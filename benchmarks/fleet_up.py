"""Time from `fleetvl up` to the first answered demo request, cold and warm.

    python benchmarks/fleet_up.py [--quick] [--json PATH]

Runs the real command (`fleetvl up --demo --exit-after-demo`) twice in a row on its own port
block: **cold**, with an empty artifact cache (the shipped fleet-edge is exported to INT4),
then **warm**, reusing them. Each run's start-up phases come from the `timings.json` it writes;
the demo's report (requests, escalation rate, p50/p95, SLA attainment) from `--json`; the
peak memory is the summed RSS of the command and all its descendants, sampled every 0.5 s
(pages shared between processes count once per process: an upper bound).
`--quick` skips the demo workload (the start-up figures are the same measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.ports import free_base  # noqa: E402


def _peak_tree_rss(proc: subprocess.Popen[bytes]) -> float:
    """Largest summed RSS (bytes) of the command and every descendant (Ray's workers too),
    sampled every 0.5 s until it exits."""
    import psutil

    root = psutil.Process(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.5)
    return peak


def _run(tmp: Path, name: str, cache_dir: Path, demo: bool) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "examples" / "up.yaml").read_text())
    # Paths in up.yaml are relative to it; this copy lives elsewhere, so they are made absolute.
    cfg |= {"base_port": free_base(), "fleet_spec": str(ROOT / "examples" / "fleet.yaml"),
            "cache_dir": str(cache_dir), "run_dir": str(tmp / f"run-{name}"),
            "edge_model": str(ROOT / "models" / "fleet-edge"),
            "cloud_model": str(ROOT / "models" / "fleet-cloud")}  # fmt: skip
    config = tmp / f"up-{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    report = tmp / f"demo-{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "FLEETVL_REDIS_URL"}
    t0 = time.monotonic()
    out_log = tmp / f"up-{name}.log"
    with open(out_log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetvl_tools.cli", "up", "--config", str(config),
             "--exit-after-demo", *(["--demo", "--json", str(report)] if demo else [])],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        peak = _peak_tree_rss(proc)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fleetvl up ({name}) failed:\n{out_log.read_text()[-4000:]}")
    timings = json.loads((tmp / f"run-{name}" / "timings.json").read_text())[-1]
    demo = json.loads(report.read_text())["overall"] if demo else {}
    return {
        "cold": bool(timings["cold"]),
        "artifacts_s": timings["artifacts_s"],
        "all_ready_s": timings["ready_s"],
        "first_answer_s": timings["first_answer_s"],
        "command_wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "demo_requests": demo.get("requests"),
        "demo_answered": demo.get("answered"),
        "demo_escalation_rate": demo.get("escalation_rate"),
        "demo_latency_p50_ms": demo.get("latency_p50_ms"),
        "demo_latency_p95_ms": demo.get("latency_p95_ms"),
        "demo_sla_attainment": demo.get("sla_attainment"),
        "demo_accuracy": demo.get("accuracy"),
        "demo_accuracy_edge": (demo.get("accuracy_by") or {}).get("edge", {}).get("accuracy"),
        "demo_accuracy_cloud": (demo.get("accuracy_by") or {}).get("cloud", {}).get("accuracy"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller demo workload")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetvl-bench-up-") as d:
        tmp = Path(d)
        cache = tmp / "artifacts"  # empty: the first run is cold
        runs = {"cold": _run(tmp, "cold", cache, not args.quick)}
        runs["warm"] = _run(tmp, "warm", cache, not args.quick)
    print(f"{'run':<6} {'artifacts s':>12} {'all ready s':>12} {'first answer s':>15} "
          f"{'peak RSS MB':>12} "
          f"{'demo req':>9} {'escal.':>7} {'p50 ms':>7} {'p95 ms':>7} {'SLA':>6} "
          f"{'acc.':>6}")  # fmt: skip
    for name, r in runs.items():
        demo = "  (no demo: --quick)"
        if r["demo_requests"] is not None:
            demo = (f"{r['demo_requests']:>9} {100 * (r['demo_escalation_rate'] or 0):>6.0f}% "
                    f"{r['demo_latency_p50_ms']:>7.0f} {r['demo_latency_p95_ms']:>7.0f} "
                    f"{100 * r['demo_sla_attainment']:>5.0f}% "
                    f"{100 * (r['demo_accuracy'] or 0):>5.0f}%")  # fmt: skip
        print(f"{name:<6} {r['artifacts_s']:>12.1f} {r['all_ready_s']:>12.1f} "
              f"{r['first_answer_s']:>15.1f} {r['peak_rss_mb']:>12.0f} {demo}")  # fmt: skip
    out = {
        "benchmark": "fleet_up",
        "what": "seconds from the start of `fleetvl up` to the first answered demo request",
        "machine": {"cpus": os.cpu_count(), "note": "shared 2-core VM; other jobs running"},
        "quick": args.quick,
        "units": {"*_s": "seconds", "*_ms": "milliseconds", "*_rate": "fraction", "*_mb": "MiB",
                  "demo_sla_attainment": "fraction"},
        "runs": runs,
    }  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
