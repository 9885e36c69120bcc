"""Prefix cache benchmark: TTFT on a miss, on a KV hit and on a vision-embedding-only hit.

    python benchmarks/prefix_cache.py [--quick] [--json PATH] [--redis-url URL]

On the ``edge-bench`` INT4 bundle (``--quick``: ``tiny``), with a real Redis
(``--redis-url``, default ``FLEETVL_REDIS_URL`` or the local server), one process:

* a ~1,024-token shared prefix: system prompt + one 448x448 image + template, followed by a
  question that differs per request;
* TTFT measured from the request (messages and image bytes) to the first token, cache
  lookups, fetches and image preprocessing included:
  - miss: a fresh namespace, nothing cached;
  - KV hit (fp16 and INT8 KV): the prefix's blocks are cached, a new question follows;
  - vision-only hit: same image, another system prompt, so only the image's encoder output
    can be reused;
* the cost model's fetch-or-recompute choice on each hit (policy ``auto``: the engine decides);
* KV bytes stored per token, fp16 vs INT8, as measured in Redis;
* Redis round-trip time (PING) and the time to fetch 1 MiB.

Variants alternate within each run so that drift of a shared VM hits them alike; medians of
``--runs`` runs are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._artifacts import ensure_artifacts, image_bytes  # noqa: E402

SYSTEM_SEED = (
    "You are the inspection assistant of substation {site}. Read gauges, breakers, thermal "
    "views and meters from the camera image and answer with a short exact value. Rules: report "
    "oil levels in percent, temperatures in C, breaker state as open or closed. "
)


def _system(processor: Any, site: str, target_tokens: int) -> str:
    text = SYSTEM_SEED.format(site=site)
    while len(processor.tokenizer.encode(text).ids) < target_tokens:
        text += SYSTEM_SEED.format(site=site)
    ids = processor.tokenizer.encode(text).ids[:target_tokens]
    return processor.tokenizer.decode(ids)


def _messages(system: str, question: str) -> list[dict]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]


def redis_timings(url: str, rounds: int = 200) -> dict[str, float]:
    import redis

    r = redis.Redis.from_url(url)
    key = "fvl:bench:probe:" + secrets.token_hex(4)
    payload = os.urandom(1 << 20)
    r.set(key, payload, ex=60)
    pings, gets = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r.ping()
        pings.append(time.perf_counter() - t0)
    for _ in range(20):
        t0 = time.perf_counter()
        assert r.get(key) == payload
        gets.append(time.perf_counter() - t0)
    r.delete(key)
    return {
        "ping_rtt_ms_p50": statistics.median(pings) * 1e3,
        "ping_rtt_ms_p99": sorted(pings)[int(0.99 * (len(pings) - 1))] * 1e3,
        "get_1mib_ms_p50": statistics.median(gets) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, 1 run")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument(
        "--redis-url", default=os.environ.get("FLEETVL_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefix-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    preset = "tiny" if args.quick else "edge-bench"
    runs = 1 if args.quick else args.runs

    from edge_agent.engine.bundle import SessionConfig
    from edge_agent.engine.cached import CachedEngine
    from edge_agent.engine.engine import EdgeEngine
    from fleetvl.cache import CacheConfig, FleetCache
    from fleetvl.sampling import SamplingParams

    print(f"[1/4] artifacts: {preset} int4 bundle", flush=True)
    art = ensure_artifacts(args.cache, preset, ["int4"])
    engine = EdgeEngine(art["int4"], SessionConfig(intra_op_threads=args.threads))
    image = image_bytes(448)
    img_tokens = engine.encode(_messages("x", "q"), [image]).images[0].num_tokens(2)
    # Size the system prompt so that the part shared by all questions (system prompt, image,
    # template up to the question) is the target length.
    system_tokens = args.prefix_tokens
    for _ in range(3):
        system = _system(engine.processor, "size", system_tokens)
        a = engine.encode(_messages(system, "What?"), [image]).input_ids
        b = engine.encode(_messages(system, "Why?"), [image]).input_ids
        shared = int((a[: len(b)] != b[: len(a)]).argmax())
        system_tokens += args.prefix_tokens - shared
    params = SamplingParams(max_tokens=1, ignore_eos=True)

    caches = {
        fmt: FleetCache(CacheConfig(url=args.redis_url, kv_format=fmt, fetch_policy="auto"))
        for fmt in ("fp16", "int8")
    }
    print(f"[2/4] Redis at {args.redis_url}: round trips", flush=True)
    rt = redis_timings(args.redis_url)

    def ttft(ce: CachedEngine, system: str, question: str) -> tuple[float, dict]:
        t0 = time.perf_counter()
        prompt = ce.engine.encode(_messages(system, question), [image])
        gen = ce.stream(prompt, params)
        next(iter(gen))
        dt = time.perf_counter() - t0
        for _ in gen:
            pass
        assert gen.result is not None
        return dt, {"prompt_tokens": len(prompt), **gen.result.extra["cache"]}

    # Warm-up: sessions, allocator, and a first measurement of prefill speed for the cost model.
    warm = CachedEngine(engine, caches["fp16"], tenant="bench-warmup-" + secrets.token_hex(4))
    ttft(warm, _system(engine.processor, "warm", system_tokens), "Warm-up?")

    samples: dict[str, list[float]] = {
        k: [] for k in ("miss", "kv_hit_fp16", "kv_hit_int8", "vision_hit")
    }
    reports: dict[str, dict] = {}
    stored_bytes: dict[str, int] = {}
    print(f"[3/4] {runs} run(s): miss | KV hit fp16 | KV hit int8 | vision-only hit", flush=True)
    for run in range(runs):
        system = _system(engine.processor, f"S-{run}-{secrets.token_hex(2)}", system_tokens)
        for fmt, cache in caches.items():
            ce = CachedEngine(engine, cache, tenant=f"bench-{fmt}-{secrets.token_hex(6)}")
            # Cold request on a fresh namespace: a miss; it stores the prefix blocks.
            t_miss, rep = ttft(ce, system, "What does the oil-level gauge read?")
            cache.flush()
            if fmt == "fp16":
                samples["miss"].append(t_miss)
                reports["miss"] = rep
            stored_bytes[fmt] = _stored_kv_bytes(cache, ce)
            t_hit, rep = ttft(ce, system, "Is breaker two open or closed?")
            samples[f"kv_hit_{fmt}"].append(t_hit)
            reports[f"kv_hit_{fmt}"] = rep
            if fmt == "fp16":
                # Another system prompt: no KV block matches, the image's features do.
                other = _system(engine.processor, f"O-{run}-{secrets.token_hex(2)}", system_tokens)
                t_vis, rep = ttft(ce, other, "Which phase is hottest?")
                samples["vision_hit"].append(t_vis)
                reports["vision_hit"] = rep
        last = {k: v[-1] for k, v in samples.items()}
        print(
            f"  run {run + 1}: miss {last['miss']:.3f}s, KV hit fp16 {last['kv_hit_fp16']:.3f}s, "
            f"int8 {last['kv_hit_int8']:.3f}s, vision-only {last['vision_hit']:.3f}s",
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in samples.items()}
    kv_tokens = reports["kv_hit_fp16"]["kv_hit_tokens"]
    bpt = {
        fmt: stored_bytes[fmt] / max(reports["miss"]["prompt_tokens"] // 64 * 64, 1)
        for fmt in caches
    }
    result: dict[str, Any] = {
        "preset": preset,
        "bundle": "int4",
        "config": {
            "runs": runs,
            "threads": args.threads,
            "prefix_tokens_target": args.prefix_tokens,
            "image_size": 448,
            "image_tokens": img_tokens,
            "block_size": 64,
            "fetch_policy": "auto",
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "prompt_tokens": reports["miss"]["prompt_tokens"],
        "shared_prefix_tokens": shared,
        "kv_hit_tokens": kv_tokens,
        "ttft_s": med,
        "ttft_s_all_runs": samples,
        "kv_hit_vs_miss_ttft": med["kv_hit_fp16"] / med["miss"],
        "kv_hit_int8_vs_miss_ttft": med["kv_hit_int8"] / med["miss"],
        "vision_hit_vs_miss_ttft": med["vision_hit"] / med["miss"],
        "kv_bytes_per_token": bpt,
        "kv_int8_vs_fp16_bytes": bpt["int8"] / bpt["fp16"],
        "kv_fetch_s": {k: reports[f"kv_hit_{k}"].get("kv_fetch_s") for k in caches},
        "decisions": {
            k: {d: v.get(d) for d in ("kv_decision", "vision_decision")}
            for k, v in reports.items()
            if k != "miss"  # nothing was stored: the lookup itself was the whole cost
        },
        "redis": rt,
        "cost_model": CachedEngine(engine, caches["fp16"]).model.cost.snapshot(),
    }
    result["targets"] = {
        "kv_hit_ttft_le_0.1x_miss": result["kv_hit_vs_miss_ttft"] <= 0.1,
        "int8_bytes_le_0.55x_fp16": result["kv_int8_vs_fp16_bytes"] <= 0.55,
    }
    print("[4/4] results", flush=True)
    _print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    for c in caches.values():
        c.close()
    return 0


def _stored_kv_bytes(cache: Any, ce: Any) -> int:
    import redis

    r = redis.Redis.from_url(cache.config.url)
    keys = list(r.scan_iter(f"{ce.model.namespace.prefix}:kv:*", count=1000))
    p = r.pipeline(transaction=False)
    for k in keys:
        p.strlen(k)
    return int(sum(p.execute()))


def _print_table(r: dict[str, Any]) -> None:
    t = r["ttft_s"]
    print(
        f"\nprefix cache, {r['preset']} int4, prompt {r['prompt_tokens']} tokens "
        f"({r['shared_prefix_tokens']} shared), "
        f"KV hit covers {r['kv_hit_tokens']} tokens, median of {r['config']['runs']} run(s)"
    )
    print(f"{'case':<24}{'TTFT s':>10}{'vs miss':>10}  decision")
    for k, label in (
        ("miss", "miss"),
        ("kv_hit_fp16", "KV hit (fp16)"),
        ("kv_hit_int8", "KV hit (INT8)"),
        ("vision_hit", "vision-only hit"),
    ):
        dec = r["decisions"].get(k, {})
        d = dec.get("kv_decision") or dec.get("vision_decision") or {}
        choice = d.get("choice", "-")
        if d:
            choice += (
                f" (est. fetch {d['est_fetch_s'] * 1e3:.1f} ms vs recompute "
                f"{d['est_recompute_s'] * 1e3:.0f} ms)"
            )
        print(f"{label:<24}{t[k]:>10.3f}{t[k] / t['miss']:>10.3f}  {choice}")
    b = r["kv_bytes_per_token"]
    print(
        f"\nKV bytes per token: fp16 {b['fp16']:.0f}, INT8 {b['int8']:.0f} "
        f"(INT8/fp16 = {r['kv_int8_vs_fp16_bytes']:.3f})"
    )
    rd = r["redis"]
    print(
        f"Redis: PING p50 {rd['ping_rtt_ms_p50']:.3f} ms, p99 {rd['ping_rtt_ms_p99']:.3f} ms; "
        f"GET 1 MiB p50 {rd['get_1mib_ms_p50']:.2f} ms"
    )
    print(
        f"targets: KV-hit TTFT {r['kv_hit_vs_miss_ttft']:.3f}x miss (<= 0.1), "
        f"INT8 {r['kv_int8_vs_fp16_bytes']:.3f}x fp16 bytes (<= 0.55)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
