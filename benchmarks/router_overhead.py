"""Router overhead benchmark: latency the router adds over a direct backend call, and its
saturation throughput.

    python benchmarks/router_overhead.py [--quick] [--json PATH]

Two servers run side by side, each in its own process with uvicorn (uvloop, httptools):

* ``direct``: a bare HTTP endpoint that calls the backend and returns its answer as JSON;
* ``router``: ``fleetvl router run`` on a config whose one backend is the same in-process
  backend (a simulated model server answering at once, so what is measured is the router:
  body validation, policy resolution, admission, dispatch, response and its log line).

A load generator in this process (raw HTTP/1.1 keep-alive connections on asyncio, cheap enough
not to be the bottleneck) sends the same OpenAI-style chat completion to each. Reported:
p50/p99 latency at 1 and 64 concurrent clients, the router's added latency (router - direct),
and saturation throughput (64 clients, requests/s). Client and server share this machine's 2
cores, as they would on a busy host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = json.dumps(
    {
        "model": "fleet-sim",
        "messages": [{"role": "user", "content": "What does the oil-level gauge read?"}],
        "max_tokens": 1,
    }
).encode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_direct(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from fleetvl.protocol.request import ChatRequest
    from fleetvl.sampling import SamplingParams
    from router.backends import BackendRequest, Final
    from router.simulated import SimulatedBackend

    backend = SimulatedBackend("direct", models=("fleet-sim",), output_tokens=1)
    app = FastAPI()

    async def chat(request):  # noqa: ANN001, ANN202 - a plain Starlette endpoint
        body = await request.json()
        params = SamplingParams(max_tokens=body.get("max_tokens", 16))
        chat = ChatRequest("x", body["model"], body["messages"], [], params)
        req = BackendRequest("x", chat)
        final = None
        async for ev in backend.generate(req):
            if isinstance(ev, Final):
                final = ev
        assert final is not None
        return JSONResponse({"choices": [{"message": {"content": final.text}}]})

    app.add_route("/v1/chat/completions", chat, methods=["POST"])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _run_router(port: int, cfg_path: str) -> None:
    from fleetvl_tools.cli import main

    # The request log is formatted and written, then discarded.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    main(["router", "run", "--config", cfg_path, "--http-port", str(port), "--grpc-port", "0"])


async def _wait_up(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _load(port: int, clients: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode() +
        b"\r\n\r\n" + BODY
    )  # fmt: skip
    lat: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < t_end:
                status = await _request(reader, writer, req)
                done = time.perf_counter()
                if now >= t_measure:
                    if status == 200:
                        lat.append(done - now)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    lat.sort()
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "throughput_rps": len(lat) / duration_s,
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    args = ap.parse_args()
    duration = 2.0 if args.quick else args.duration
    warmup = 0.5 if args.quick else 2.0

    cache = ROOT / ".cache" / "bench" / "router"
    cache.mkdir(parents=True, exist_ok=True)
    cfg = cache / "router_overhead.yaml"
    cfg.write_text(
        "grpc_port: null\n"
        "backends:\n"
        "  - {name: sim, type: simulated, slots: 1024, models: [fleet-sim],\n"
        "     simulated: {output_tokens: 1}}\n"
    )
    ctx = mp.get_context("spawn")
    ports = {"direct": _free_port(), "router": _free_port()}
    procs = {
        "direct": ctx.Process(target=_run_direct, args=(ports["direct"],), daemon=True),
        "router": ctx.Process(target=_run_router, args=(ports["router"], str(cfg)), daemon=True),
    }
    print("[1/3] starting the direct endpoint and the router", flush=True)
    for p in procs.values():
        p.start()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results: dict[str, dict[int, dict[str, Any]]] = {"direct": {}, "router": {}}
    try:
        for port in ports.values():
            asyncio.run(_wait_up(port))
        print(f"[2/3] measuring ({duration:.0f} s per point after {warmup:.1f} s warm-up)")
        for clients in (1, 64):
            for name, port in ports.items():
                r = asyncio.run(_load(port, clients, duration, warmup))
                results[name][clients] = r
                print(
                    f"  {name:<7} {clients:>3} clients: p50 {r['p50_ms']:.2f} ms, p99 "
                    f"{r['p99_ms']:.2f} ms, {r['throughput_rps']:.0f} req/s, "
                    f"{r['errors']} errors",
                    flush=True,
                )
    finally:
        for p in procs.values():
            p.terminate()
            p.join(10)

    added = {
        c: {
            "p50_ms": results["router"][c]["p50_ms"] - results["direct"][c]["p50_ms"],
            "p99_ms": results["router"][c]["p99_ms"] - results["direct"][c]["p99_ms"],
        }
        for c in (1, 64)
    }
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {"duration_s": duration, "warmup_s": warmup, "body_bytes": len(BODY)},
        "direct": {str(k): v for k, v in results["direct"].items()},
        "router": {str(k): v for k, v in results["router"].items()},
        "added_latency_ms": {str(k): v for k, v in added.items()},
        "router_saturation_rps": results["router"][64]["throughput_rps"],
        "targets": {
            "added_p50_le_1ms_at_1_client": added[1]["p50_ms"] <= 1.0,
            "router_ge_500_rps": results["router"][64]["throughput_rps"] >= 500,
        },
    }
    print("[3/3] results\n")
    print(f"{'':<10}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name in ("direct", "router"):
        for c in (1, 64):
            r = results[name][c]
            print(
                f"{name:<10}{c:>8}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['throughput_rps']:>10.0f}"
            )
    for c in (1, 64):
        print(
            f"added by the router, {c} client(s): p50 {added[c]['p50_ms']:.2f} ms, "
            f"p99 {added[c]['p99_ms']:.2f} ms"
        )
    print(
        f"targets: p50 added at 1 client {added[1]['p50_ms']:.2f} ms (<= 1 ms); saturation "
        f"{report['router_saturation_rps']:.0f} req/s (>= 500)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
