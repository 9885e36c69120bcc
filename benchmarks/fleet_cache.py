"""The shared cache on the served path: the fleet as `fleetvl up` runs it, asked questions that
sites share (images, questions, a long common instruction).

    python benchmarks/fleet_cache.py [--quick] [--json PATH]

Starts the real command (`fleetvl up`: embedded Redis, Ray + the cloud worker on the trained
fleet-cloud model, the router, the controller, five site agents on the INT4 fleet-edge
bundle), then measures, each through the API a user calls:

- **repeat**: a fresh question about a fresh image, first at sub-durham-03 (its bar makes it
  escalate: the cloud answers), then the same at sub-york-02 (same tenant) — end to end at the
  agents' HTTP API; the ratio of medians, what served the repeat, and the image bytes the
  router received inline during the repeats (an image already in Redis costs none);
- **edge prefix**: the agent's TTFT (`timings.local_ttft_ms`) at sub-york-02 for a question
  after a ~1k-token shared instruction, first with that instruction new (nothing cached), then
  with it cached (another question, same instruction and image). Not at the edge_only site:
  `fleetvl up`'s Redis is shared, so that site's requests never use it (by design);
- **cloud vision**: the cloud's TTFT for a second question about an image it has already
  encoded (vision-encoder output from Redis) vs the first, through the router's gRPC API;
- **redis down**: the same kinds of requests with Redis stopped (SIGSTOP: every call hangs
  until its timeout) — slower, never failed.

`--quick` asks fewer questions (the same path). Every printed figure is in the JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetvl.protocol import fleetvl_pb2 as pb  # noqa: E402
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc  # noqa: E402
from fleetvl_tools.launch.workload import fleet_question  # noqa: E402
from tests.e2e.ports import start_up, wait_ready  # noqa: E402
from tests.edge_harness import metric  # noqa: E402

INSTRUCTION = (
    "inspect the gauge housing for cracks and note the needle position relative to the "
    "marked green band then compare with the previous reading before answering"
)


# One keep-alive client, as the stock openai client holds one: building an httpx client costs
# ~20 ms here (its SSL context), which no served request pays.
HTTP = httpx.Client(timeout=120)


def say(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def fleet(tmp: Path) -> Iterator[dict[str, Any]]:
    proc, _, log = start_up(tmp)
    try:
        wait_ready(proc, tmp / "run" / "endpoints.json", log, 600)
        yield json.loads((tmp / "run" / "endpoints.json").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def ask_agent(url: str, key: str, image: bytes, question: str,
              system: str | None = None) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """(seconds end to end, the JSON answer) from a site agent's OpenAI API."""
    content = [{"type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}},
               {"type": "text", "text": question}]  # fmt: skip
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    body = {"model": "fleet-demo", "max_tokens": 10, "messages": messages}
    t0 = time.monotonic()
    r = HTTP.post(url + "/v1/chat/completions", json=body,
                  headers={"authorization": f"Bearer {key}"})  # fmt: skip
    took = time.monotonic() - t0
    out = r.json()
    out["status"] = r.status_code
    return took, out


def ask_cloud(target: str, key: str, image: bytes, question: str) -> pb.Final:
    """The router's gRPC API (the path a site's escalation takes); no site: the cloud."""
    req = pb.GenerateRequest(
        model="fleet-demo",
        messages=[pb.Message(role="user", content=[
            pb.ContentPart(image=pb.Image(data=image)), pb.ContentPart(text=question)])],
        sampling=pb.Sampling(max_tokens=10),
    )  # fmt: skip
    with grpc.insecure_channel(target) as ch:
        chunks = list(pb_grpc.RouterStub(ch).Generate(
            req, timeout=120, metadata=(("authorization", f"Bearer {key}"),)))  # fmt: skip
    return chunks[-1].final


def served(a: dict[str, Any]) -> str:
    return (a.get("fleetvl") or {}).get("served_by", f"error {a.get('status')}")


def repeat(e: dict[str, Any], n: int) -> dict[str, Any]:
    sites = {s["id"]: s for s in e["sites"]}
    durham, york = sites["sub-durham-03"], sites["sub-york-02"]
    key = e["api_keys"][durham["tenant"]]

    def uploaded() -> float:
        return metric(e["router_http"], "fleetvl_router_image_bytes_received_total", api="grpc")

    first, again, by, probe, inside = [], [], [], [], []
    first_bytes = reupload = 0.0
    for i in range(n):
        q = fleet_question("substation", 4000 + i)
        b0 = uploaded()
        t1, a1 = ask_agent(durham["url"], key, q.image, q.question)
        first_bytes += uploaded() - b0
        time.sleep(0.5)  # the cloud worker writes the answer after sending it
        b1 = uploaded()
        t2, a2 = ask_agent(york["url"], key, q.image, q.question)
        reupload += uploaded() - b1
        first.append(t1)
        again.append(t2)
        by.append(served(a2))
        tm = (a2.get("fleetvl") or {}).get("timings", {})
        probe.append(tm.get("escalation_ms", 0.0))
        inside.append(tm.get("total_ms", 0.0))
        say(
            f"  repeat {i}: first {t1 * 1000:7.1f} ms ({served(a1)}), "
            f"repeat {t2 * 1000:6.1f} ms ({served(a2)}; in the agent {inside[-1]:.1f} ms, "
            f"of it the cache round trip {probe[-1]:.1f} ms)"
        )
    p1, p2 = statistics.median(first), statistics.median(again)
    return {"first_ms_p50": round(p1 * 1000, 1), "repeat_ms_p50": round(p2 * 1000, 1),
            "repeat_latency_ratio": round(p2 / p1, 4),
            "repeat_served_by": max(set(by), key=by.count), "repeats_from_cache": by.count("cache"),
            "repeat_in_agent_ms_p50": round(statistics.median(inside), 1),
            "repeat_cache_round_trip_ms_p50": round(statistics.median(probe), 1),
            "first_upload_image_bytes": int(first_bytes), "reupload_image_bytes": int(reupload),
            "n": n}  # fmt: skip


def edge_prefix(e: dict[str, Any], n: int) -> dict[str, Any]:
    # York: its local model runs first (the edge_only site keeps out of this shared Redis).
    york = next(s for s in e["sites"] if s["id"] == "sub-york-02")
    key = e["api_keys"][york["tenant"]]
    cold, warm = [], []
    for i in range(n):
        # ~1k tokens of instruction, different per pair so the cold ask finds nothing.
        system = f"Site procedure {i}-{time.time_ns()}: " + " ".join([INSTRUCTION] * 11)
        q1 = fleet_question("substation", 5000 + i)
        q2 = fleet_question("substation", 5000 + i)
        _, a1 = ask_agent(york["url"], key, q1.image, q1.question, system)
        time.sleep(0.3)  # the prefix KV is stored off the request's path
        _, a2 = ask_agent(york["url"], key, q2.image, q2.question + " Answer briefly.", system)
        t1 = a1["fleetvl"]["timings"]["local_ttft_ms"]
        t2 = a2["fleetvl"]["timings"]["local_ttft_ms"]
        cold.append(t1)
        warm.append(t2)
        say(
            f"  prefix {i}: ttft uncached {t1:7.1f} ms, cached {t2:7.1f} ms "
            f"(prompt {a1['usage']['prompt_tokens']} tokens)"
        )
    c, w = statistics.median(cold), statistics.median(warm)
    return {"uncached_ttft_ms_p50": round(c, 1), "cached_ttft_ms_p50": round(w, 1),
            "edge_prefix_ttft_ratio": round(w / c, 4), "n": n}  # fmt: skip


def cloud_vision(e: dict[str, Any], n: int) -> dict[str, Any]:
    key = e["api_keys"][e["sites"][1]["tenant"]]
    cold, warm, hits = [], [], 0
    for i in range(n):
        q = fleet_question("retail_store", 6000 + i)
        f1 = ask_cloud(e["router_grpc"], key, q.image, q.question)
        time.sleep(0.3)  # the encoder output is stored off the request's path
        f2 = ask_cloud(e["router_grpc"], key, q.image, "Which shelf row is fullest?")
        cold.append(f1.timings.ttft_ms)
        warm.append(f2.timings.ttft_ms)
        hits += f2.usage.cached_images
        say(
            f"  vision {i}: ttft {f1.timings.ttft_ms:6.1f} ms ({f1.usage.cached_images} cached), "
            f"again {f2.timings.ttft_ms:6.1f} ms ({f2.usage.cached_images} cached)"
        )
    c, w = statistics.median(cold), statistics.median(warm)
    return {"cold_ttft_ms_p50": round(c, 1), "hit_ttft_ms_p50": round(w, 1),
            "cloud_vision_cache_hits": hits, "cloud_vision_hit_ttft_ratio": round(w / c, 4),
            "n": n}  # fmt: skip


def redis_down(e: dict[str, Any], n: int) -> dict[str, Any]:
    pid = e["pids"]["redis"]
    errors, answered = 0, 0
    os.kill(pid, signal.SIGSTOP)
    try:
        sites = {s["id"]: s for s in e["sites"]}
        for i in range(n):
            s = sites[("sub-durham-03", "sub-york-02", "store-0042", "sub-leeds-01")[i % 4]]
            q = fleet_question(s["kind"], 7000 + i)
            t, a = ask_agent(s["url"], e["api_keys"][s["tenant"]], q.image, q.question)
            ok = a["status"] == 200
            errors += not ok
            answered += ok
            say(f"  redis down {i}: {s['id']} {a['status']} {served(a)} {t * 1000:.0f} ms")
    finally:
        os.kill(pid, signal.SIGCONT)
    return {"redis_down_errors": errors, "answered": answered, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer questions, the same path")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    args = ap.parse_args()
    n = 2 if args.quick else 6
    with tempfile.TemporaryDirectory(prefix="fleet-cache-") as d:
        say("[1/5] starting the fleet (fleetvl up)")
        with fleet(Path(d)) as e:
            say("[2/5] a question asked at one site, then at another")
            rep = repeat(e, n)
            say("[3/5] the agent's TTFT with a ~1k-token shared instruction, uncached vs cached")
            pre = edge_prefix(e, n)
            say("[4/5] the cloud's TTFT for an image already encoded")
            vis = cloud_vision(e, n)
            say("[5/5] the same kinds of requests with Redis stopped")
            down = redis_down(e, 2 * n)
    out = {
        "served": {
            "repeat_latency_ratio": rep["repeat_latency_ratio"],
            "repeat_served_by": rep["repeat_served_by"],
            "reupload_image_bytes": rep["reupload_image_bytes"],
            "edge_prefix_ttft_ratio": pre["edge_prefix_ttft_ratio"],
            "cloud_vision_cache_hits": vis["cloud_vision_cache_hits"],
            "cloud_vision_hit_ttft_ratio": vis["cloud_vision_hit_ttft_ratio"],
            "redis_down_errors": down["redis_down_errors"],
        },
        "details": {"repeat": rep, "edge_prefix": pre, "cloud_vision": vis, "redis_down": down},
        "quick": args.quick,
    }
    s = out["served"]
    say("\nserved path                          value      target")
    say(f"repeat_latency_ratio            {s['repeat_latency_ratio']:10.4f}      <= 0.1")
    say(f"repeat_served_by                {s['repeat_served_by']:>10}      cache")
    say(f"reupload_image_bytes            {s['reupload_image_bytes']:10d}      0")
    say(f"edge_prefix_ttft_ratio          {s['edge_prefix_ttft_ratio']:10.4f}      <= 0.3")
    say(f"cloud_vision_cache_hits         {s['cloud_vision_cache_hits']:10d}      >= 1")
    say(f"cloud_vision_hit_ttft_ratio     {s['cloud_vision_hit_ttft_ratio']:10.4f}      <= 0.7")
    say(f"redis_down_errors               {s['redis_down_errors']:10d}      0")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
