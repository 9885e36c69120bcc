"""Controller scale benchmark: many agents heartbeating against one controller.

    python benchmarks/controller_scale.py [--quick] [--json PATH] [--variants 100,500]

For each variant (number of agents, side by side in one run) a real controller runs as its
own process (``fleetvl controller run``, real Redis, gRPC on loopback) and the agents run as
real ``edge_agent.control.ControlClient`` sessions split over two worker processes, each
heartbeating every ``--heartbeat-s`` seconds (5 s: the production default). Measured:

* controller CPU share (psutil, % of one core) and RSS while the agents only heartbeat;
* a series of policy changes through the admin API (global ``deadline_ms``): for each, the
  time from the API call to each agent applying it (per-agent delivery latency) and to the
  last agent applying it (time to reach all agents); p50/p99/max of both;
* controller CPU share during the policy-change phase.

Target (issue 7): p99 policy change to all agents <= 2 s with 500 agents, under half a core.
Driver, controller and agents share this machine's 2 cores (and other people's jobs): timings
are noisy and pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN = "bench-admin-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- agent worker process ---------------------------------------------------------------
class _LeanHandler:
    """A ControlHandler with nothing behind it: records when each policy marker arrived."""

    def __init__(self) -> None:
        self.applied: dict[int, float] = {}

    def apply_policies(self, policies: dict[str, Any]) -> None:
        self.applied.setdefault(int(policies["global"]["deadline_ms"]), time.time())

    def install_bundle(self, bundle_dir: Path, digest: str) -> None:
        raise RuntimeError("the benchmark assigns no bundles")

    def run_command(self, name: str, args: dict[str, str]) -> None:
        pass

    def summary(self) -> dict[str, float]:
        return {
            "requests": 30.0,
            "errors": 0.0,
            "escalation_rate": 0.1,
            "sla_attainment": 0.99,
            "p95_ms": 200.0,
        }

    def bundles_held(self) -> list[str]:
        return []


async def _worker(target: str, sites: list[str], heartbeat_s: float, out: Path) -> None:
    from edge_agent.control import ControlClient, ControlClientConfig

    handlers = [_LeanHandler() for _ in sites]
    tmp = Path(tempfile.mkdtemp(prefix="ctlbench-"))
    clients = [
        ControlClient(
            ControlClientConfig(target=target, site=s, heartbeat_s=heartbeat_s, bundle_dir=tmp / s),
            h,
        )
        for s, h in zip(sites, handlers, strict=True)
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    while not all(c.connected.is_set() for c in clients):
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    waiting: set[int] = set()
    reader = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
    while True:
        done, _ = await asyncio.wait({reader}, timeout=0.02)
        if done:
            line = reader.result().strip()
            if line in ("stop", ""):
                break
            waiting.add(int(line.split()[1]))  # "expect <marker>"
            reader = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
        for marker in sorted(waiting):
            if all(marker in h.applied for h in handlers):
                print(f"applied {marker}", flush=True)
                waiting.discard(marker)
    out.write_text(json.dumps([{str(k): v for k, v in h.applied.items()} for h in handlers]))
    for c in clients:
        await c.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- driver -----------------------------------------------------------------------------
class _Worker:
    def __init__(self, target: str, sites: list[str], hb: float, tmp: Path, idx: int) -> None:
        self.out = tmp / f"worker{idx}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--agent-worker",
                "--target",
                target,
                "--sites",
                ",".join(sites),
                "--heartbeat-s",
                str(hb),
                "--out",
                str(self.out),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, line: str, timeout: float) -> None:
        got = self.lines.get(timeout=timeout)
        if got != line:
            raise RuntimeError(f"worker said {got!r}, expected {line!r}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> list[dict[str, float]]:
        self.send("stop")
        self.proc.wait(60)
        return json.loads(self.out.read_text())


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_variant(
    n_agents: int, hb: float, idle_s: float, changes: int, gap_s: float, procs: int
) -> dict[str, Any]:
    import httpx
    import psutil
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="ctlscale-"))
    sites = [f"site-{i:04d}" for i in range(n_agents)]
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    http_port, grpc_port = _free_port(), _free_port()
    cfg = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "admin_token": ADMIN,
        "namespace": ns,
        "heartbeat_s": hb,
        "bundle_dir": str(tmp / "store"),
        "spec": {
            "tenants": {"t": {}},
            "sites": [{"id": s, "tenant": "t", "kind": "substation"} for s in sites],
        },
    }
    (tmp / "controller.yaml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "controller.log").open("wb")
    ctl = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetvl_tools.cli",
            "controller",
            "run",
            "--config",
            str(tmp / "controller.yaml"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{http_port}",
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    workers: list[_Worker] = []
    try:
        t_end = time.monotonic() + 60
        while True:
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > t_end or ctl.poll() is not None:
                raise RuntimeError(f"controller did not start; see {tmp / 'controller.log'}")
            time.sleep(0.2)
        p = psutil.Process(ctl.pid)
        t0 = time.monotonic()
        chunks = [sites[i::procs] for i in range(procs)]
        workers = [_Worker(f"127.0.0.1:{grpc_port}", c, hb, tmp, i) for i, c in enumerate(chunks)]
        for w in workers:
            w.expect("ready", 300)
        connect_s = time.monotonic() - t0
        print(
            f"  {n_agents} agents connected in {connect_s:.1f} s; idle for {idle_s:.0f} s",
            flush=True,
        )
        time.sleep(min(hb, idle_s))  # let the registration burst settle
        p.cpu_percent(None)
        time.sleep(idle_s)
        idle_cpu = p.cpu_percent(None)
        idle_rss = p.memory_info().rss
        to_all: list[float] = []
        starts: dict[int, float] = {}
        p.cpu_percent(None)
        t_phase = time.monotonic()
        for i in range(changes):
            marker = 5000 + i
            for w in workers:
                w.send(f"expect {marker}")
            starts[marker] = time.time()
            api.put(
                "/api/policies/global", json={"policy": {"deadline_ms": marker}, "why": "benchmark"}
            ).raise_for_status()
            for w in workers:
                w.expect(f"applied {marker}", 60)
            to_all.append(time.time() - starts[marker])
            time.sleep(gap_s)
        change_cpu = p.cpu_percent(None)
        phase_s = time.monotonic() - t_phase
        peak_rss = p.memory_info().rss
        per_agent = []
        for w in workers:
            for applied in w.finish():
                per_agent += [applied[str(k)] - t for k, t in starts.items()]
        workers = []
        return {
            "agents": n_agents,
            "heartbeat_s": hb,
            "connect_all_s": round(connect_s, 2),
            "idle_window_s": idle_s,
            "idle_cpu_percent_of_core": round(idle_cpu, 1),
            "idle_rss_mib": round(idle_rss / 2**20, 1),
            "policy_changes": changes,
            "policy_phase_s": round(phase_s, 1),
            "policy_phase_cpu_percent_of_core": round(change_cpu, 1),
            "peak_rss_mib": round(peak_rss / 2**20, 1),
            "to_all_agents_ms": {
                "p50": round(_pct(to_all, 50) * 1000, 1),
                "p99": round(_pct(to_all, 99) * 1000, 1),
                "max": round(max(to_all) * 1000, 1),
            },
            "per_agent_delivery_ms": {
                "p50": round(_pct(per_agent, 50) * 1000, 1),
                "p99": round(_pct(per_agent, 99) * 1000, 1),
                "max": round(max(per_agent) * 1000, 1),
                "samples": len(per_agent),
            },
        }
    finally:
        for w in workers:
            w.proc.kill()
        ctl.terminate()
        try:
            ctl.wait(15)
        except subprocess.TimeoutExpired:
            ctl.kill()
        api.close()
        log.close()
        import redis

        r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(r.scan_iter(match=f"fleetvl:ctl:{ns}:*"))
        if keys:
            r.delete(*keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short idle window, fewer changes")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    ap.add_argument("--variants", default="100,500", help="agent counts, comma-separated")
    ap.add_argument("--heartbeat-s", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=2, help="agent worker processes")
    ap.add_argument("--agent-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--sites", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_worker:
        asyncio.run(_worker(args.target, args.sites.split(","), args.heartbeat_s, args.out))
        return
    idle_s, changes, gap_s = (15.0, 5, 1.0) if args.quick else (60.0, 50, 1.0)
    results = []
    for n in (int(x) for x in args.variants.split(",")):
        print(f"variant: {n} agents, heartbeat every {args.heartbeat_s} s", flush=True)
        results.append(run_variant(n, args.heartbeat_s, idle_s, changes, gap_s, args.procs))
    print()
    hdr = (
        f"{'agents':>6} {'idle CPU %core':>14} {'RSS MiB':>8} {'change CPU %core':>16} "
        f"{'to-all p50 ms':>13} {'to-all p99 ms':>13} {'agent p99 ms':>12}"
    )
    print(hdr)
    for r in results:
        print(
            f"{r['agents']:>6} {r['idle_cpu_percent_of_core']:>14.1f} {r['peak_rss_mib']:>8.1f} "
            f"{r['policy_phase_cpu_percent_of_core']:>16.1f} "
            f"{r['to_all_agents_ms']['p50']:>13.1f} {r['to_all_agents_ms']['p99']:>13.1f} "
            f"{r['per_agent_delivery_ms']['p99']:>12.1f}"
        )
    target = next((r for r in results if r["agents"] == 500), None)
    verdict = None
    if target is not None:
        verdict = {
            "p99_to_all_agents_le_2000_ms": target["to_all_agents_ms"]["p99"] <= 2000,
            "idle_cpu_under_half_core": target["idle_cpu_percent_of_core"] < 50,
            "policy_phase_cpu_under_half_core": target["policy_phase_cpu_percent_of_core"] < 50,
        }
        print(f"target (500 agents): {verdict}")
    report = {
        "benchmark": "controller_scale",
        "units": {"cpu": "percent of one core", "rss": "MiB", "latency": "ms"},
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "variants": results,
        "target_500": verdict,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
