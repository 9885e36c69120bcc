"""Site agent benchmark: latency the agent adds over the bare engine on local answers, and
time to escalation with and without early escalation.

    python benchmarks/edge_agent.py [--quick] [--json PATH]

Two measurements, each comparing variants side by side in this run:

* **local answers** (always on the ``tiny`` INT4 bundle: the agent's cost does not depend on
  the model, and on ``edge-bench`` a 3-second generation on this shared CPU has far more noise
  than the few milliseconds measured) — the same image question (min_confidence 0, so the
  gate always releases it) answered by the bare engine in this process (``encode`` +
  ``generate``, confidence on) and by ``fleetvl edge run`` in its own process over its HTTP
  API (an ``httpx`` keep-alive client, body serialised once, the image as a data URL),
  interleaved request by request so drift hits both alike. The agent's added latency is the
  difference of the medians (and the median of the paired differences). It includes HTTP,
  JSON and base64, the image check, policy resolution, the local queue, the worker-thread hop,
  the gate and the response.
* **escalation** (``edge-bench`` INT4; ``--quick``: ``tiny``) — a question whose first tokens
  fail the gate (min_confidence 0.99 on ``mean_prob``; a random-weight model is never that
  sure), answered by two agents, one with early escalation and one without, against a real
  router whose cloud is its ``simulated`` backend (a fake answering at once). Time to
  escalation is the local attempt's duration (arrival to the escalation call); the tokens the
  edge generated are reported alongside.

Timings on this shared 2-core machine are noisy; compare variants within one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._artifacts import ensure_artifacts, image_bytes  # noqa: E402

QUESTION = "What does the gauge read?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def _spawn(args: list[str], config: dict[str, Any], tmp: Path, name: str) -> subprocess.Popen:
    import yaml

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "fleetvl_tools.cli", *args, "--config", str(path)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(xs: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(xs), 3), "p90": round(_pct(xs, 0.9), 3),
            "mean": round(statistics.fmean(xs), 3)}  # fmt: skip


def _body(img: str, max_tokens: int, min_confidence: float) -> dict[str, Any]:
    return {
        "model": "edge",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": img}},
            {"type": "text", "text": QUESTION}]}],
        "sla": {"min_confidence": min_confidence},
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, fewer requests")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/edge_agent.json")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()

    import httpx

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the child servers are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    from edge_agent.engine import EdgeEngine, SessionConfig
    from fleetvl.sampling import SamplingParams

    preset = "tiny" if args.quick else "edge-bench"
    n_local = 20 if args.quick else 100
    n_esc = 5 if args.quick else 8
    local_tokens, esc_tokens = 16, 64
    tiny = ensure_artifacts(args.cache, "tiny", ["int4"])["int4"]
    bundle = ensure_artifacts(args.cache, preset, ["int4"])["int4"]
    png = image_bytes(224)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-agent-"))
    procs: list[subprocess.Popen] = []
    try:
        router_http, router_grpc = _free_port(), _free_port()
        procs.append(_spawn(["router", "run"], {
            "http_port": router_http, "grpc_port": router_grpc,
            "backends": [{"name": "cloud", "type": "simulated", "slots": 8,
                          "simulated": {"answer": "cloud", "output_tokens": 3}}],
        }, tmp, "router"))  # fmt: skip
        agents = {}
        for variant, early, b in (
            ("overhead", True, tiny),
            ("early_on", True, bundle),
            ("early_off", False, bundle),
        ):
            port = _free_port()
            procs.append(_spawn(["edge", "run"], {
                "site": "bench", "bundle": str(b), "model": "edge", "http_port": port,
                "intra_op_threads": args.threads,
                "gate": {"signal": "mean_prob", "threshold_source": "raw",
                         "early_escalation": early},
                "router": {"target": f"127.0.0.1:{router_grpc}", "model": "cloud",
                           "connect": False, "cloud_rtt_ms": 20},
                "spool": {"path": str(tmp / f"{variant}.sqlite")},
            }, tmp, variant))  # fmt: skip
            agents[variant] = f"http://127.0.0.1:{port}"
        _wait_http(f"http://127.0.0.1:{router_http}", procs[0])
        for p, url in zip(procs[1:], agents.values(), strict=True):
            _wait_http(url, p)

        engine = EdgeEngine(tiny, SessionConfig(intra_op_threads=args.threads))
        content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
        params = SamplingParams(max_tokens=local_tokens)
        client = httpx.Client(timeout=120)
        url = agents.pop("overhead") + "/v1/chat/completions"

        def bare() -> tuple[float, int]:
            t0 = time.perf_counter()
            r = engine.generate(engine.encode([{"role": "user", "content": content}], [png]),
                                params)  # fmt: skip
            return (time.perf_counter() - t0) * 1000, len(r.token_ids)

        # Serialised once: the client's JSON encoding is the site application's cost.
        local_body = json.dumps(_body(data_url, local_tokens, 0.0)).encode()
        headers = {"content-type": "application/json"}

        def agent() -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            r = client.post(url, content=local_body, headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            return dt, r.json()

        for _ in range(3):  # warm-up: sessions, allocator, connection
            bare()
            agent()
        bare_ms, agent_ms, paired, bare_tok, agent_tok = [], [], [], [], []
        for _ in range(n_local):
            b, bt = bare()
            a, body = agent()
            assert body["fleetvl"]["served_by"] == "edge"
            bare_ms.append(b)
            agent_ms.append(a)
            paired.append(a - b)
            bare_tok.append(bt)
            agent_tok.append(body["usage"]["completion_tokens"])
        added_p50 = statistics.median(agent_ms) - statistics.median(bare_ms)

        # Interleaved, one request per variant in turn: load from other processes on this
        # machine then hits both variants alike.
        raw: dict[str, dict[str, list[float]]] = {
            v: {"tte": [], "ttft": [], "total": [], "tokens": []} for v in agents
        }
        for base in agents.values():  # warm-up
            client.post(base + "/v1/chat/completions", json=_body(data_url, esc_tokens, 0.99))
        for _ in range(n_esc):
            for variant, base in agents.items():
                t0 = time.perf_counter()
                r = client.post(base + "/v1/chat/completions",
                                json=_body(data_url, esc_tokens, 0.99))  # fmt: skip
                f = r.json()["fleetvl"]
                assert f["served_by"] == "cloud", f
                m = raw[variant]
                m["total"].append((time.perf_counter() - t0) * 1000)
                m["tte"].append(f["timings"]["local_ms"])
                m["ttft"].append(f["timings"]["local_ttft_ms"])
                m["tokens"].append(f["local_tokens"])
        esc: dict[str, dict[str, Any]] = {
            v: {
                "time_to_escalation_ms": _summary(m["tte"]),
                "local_ttft_ms": _summary(m["ttft"]),
                "decoding_before_escalation_ms": _summary(
                    [a - b for a, b in zip(m["tte"], m["ttft"], strict=True)]
                ),
                "total_ms": _summary(m["total"]),
                "local_tokens_generated_mean": statistics.fmean(m["tokens"]),
                "requests": n_esc,
            }
            for v, m in raw.items()
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    on, off = esc["early_on"], esc["early_off"]
    result = {
        "setup": {
            "local_answer_preset": "tiny", "escalation_preset": preset, "precision": "int4",
            "image_px": 224, "question": QUESTION,
            "intra_op_threads": args.threads, "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "note": "shared 2-core machine: absolute times are noisy; compare within a run",
        },
        "local_answer": {
            "requests": n_local, "max_tokens": local_tokens,
            "generated_tokens_bare_mean": statistics.fmean(bare_tok),
            "generated_tokens_agent_mean": statistics.fmean(agent_tok),
            "bare_engine_ms": _summary(bare_ms),
            "agent_http_ms": _summary(agent_ms),
            "agent_added_ms_p50": round(added_p50, 3),
            "agent_added_ms_paired": _summary(paired),
            "target_added_ms_p50": 5.0,
            "meets_target": added_p50 <= 5.0,
        },
        "escalation": {
            "max_tokens": esc_tokens, "min_confidence": 0.99, "signal": "mean_prob",
            "early_on": on, "early_off": off,
            "time_to_escalation_ratio_off_over_on": round(
                off["time_to_escalation_ms"]["p50"] / on["time_to_escalation_ms"]["p50"], 2),
            "decode_saved_ms_p50": round(off["decoding_before_escalation_ms"]["p50"]
                                         - on["decoding_before_escalation_ms"]["p50"], 2),
        },
    }  # fmt: skip
    la = result["local_answer"]
    print(f"\nedge agent benchmark (INT4; local answers: tiny x {n_local}, "
          f"escalations: {preset} x {n_esc})")  # fmt: skip

    def row(name: str, *cells: str) -> None:
        print(f"{name:34s}" + "".join(f"{c:>14s}" for c in cells))

    row("local answer", "p50 ms", "p90 ms")
    for name, key in (("bare engine", "bare_engine_ms"), ("agent (HTTP, gate, queue)",
                                                           "agent_http_ms")):  # fmt: skip
        row(name, f"{la[key]['p50']:.2f}", f"{la[key]['p90']:.2f}")
    row("added by the agent (p50 diff)", f"{added_p50:.2f}", "target <= 5")
    pd = la["agent_added_ms_paired"]
    row("added, paired differences", f"{pd['p50']:.2f}", f"{pd['p90']:.2f}")
    print()
    row("escalation (fails the gate)", "to escal. ms", "of it decode", "total ms", "edge tokens")
    for v in ("early_on", "early_off"):
        e = esc[v]
        row(v, f"{e['time_to_escalation_ms']['p50']:.2f}",
            f"{e['decoding_before_escalation_ms']['p50']:.2f}", f"{e['total_ms']['p50']:.2f}",
            f"{e['local_tokens_generated_mean']:.1f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
