"""Cloud engine benchmark: continuous batching vs transformers' static-cache generate().

    python benchmarks/cloud_engine.py [--quick] [--json PATH] [--parts ours,hf]

On a CUDA GPU with the ``qwen2.5-vl-7b`` preset (Qwen2.5-VL-7B's published architecture,
random bf16 weights initialized on the GPU, saved and loaded back through
``from_pretrained`` like a real directory); ``--quick``: the ``tiny`` preset on any device.
Every request is one 448x448 image + a 32-token question. Measured, side by side:

* the HBM bound: decoder weight bytes read per token / the measured device copy rate
  (bytes read + written per second, as the issue counts it);
* batch-1 decode time per token: our engine (CUDA-graph step), transformers ``generate()``
  eager (dynamic cache) and with ``cache_implementation="static"`` (compiled decode step);
* a staggered trace: Poisson arrivals keeping ~32 requests in flight, output lengths drawn
  from 16-256 tokens (EOS ignored), served by our engine (32 slots, continuous batching) and
  by static-cache ``generate()`` in fixed batches of 32 (waiting for 32 arrivals, padding to
  the batch's longest answer): throughput, p50/p95 TTFT and p95 end-to-end latency.

Needs only torch and transformers (no Ray): the engine is benchmarked directly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = (
    "Read the oil-level sight glass and the analog pressure gauge in this substation photo, "
    "then report both values with units and say whether either is outside its normal band."
)


_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_rate_gb_s() -> float:
    """Device-to-device copy of 2 GiB, counting bytes read plus written (best of 10)."""
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    a = torch.empty(1 << 29, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    return 2 * a.numel() * 4 / best / 1e9


def build(preset: str, cache: Path) -> Path:
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.presets import get_preset

    out = cache / preset
    if (out / "config.json").exists() and (out / "chat_template.jinja").exists():
        return out
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    t0 = time.perf_counter()
    build_checkpoint(get_preset(preset), out, dtype=dtype, device=device, progress=say)
    say(f"  built in {time.perf_counter() - t0:.0f}s")
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def images(n: int, size: int) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def messages() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def decoder_bytes(model: Any) -> int:
    lm = model.model.language_model
    n = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
    n += sum(p.numel() * p.element_size() for p in lm.norm.parameters())
    return n + model.lm_head.weight.numel() * model.lm_head.weight.element_size()


def hf_inputs(engine: Any, prompts: list) -> dict:
    import torch

    dev = engine.lm.device
    ids = torch.from_numpy(np.stack([p.input_ids for p in prompts])).to(dev)
    pv = np.concatenate([i.pixel_values for p in prompts for i in p.images])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == engine.lm.image_token_id).int(),
        "pixel_values": torch.from_numpy(pv).to(dev, engine.lm.dtype),
        "image_grid_thw": torch.tensor([i.grid_thw for p in prompts for i in p.images], device=dev),
    }


def hf_generate(engine: Any, prompts: list, new: int, static: bool) -> float:
    """Seconds for transformers' generate() of ``new`` tokens for the batch (EOS ignored)."""
    import torch

    kw = hf_inputs(engine, prompts)
    extra: dict[str, Any] = {"cache_implementation": "static"} if static else {}
    if static and not torch.cuda.is_available():
        extra["disable_compile"] = True  # no inductor toolchain assumed on CPU smoke runs
    _sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        engine.lm.model.generate(
            **kw, max_new_tokens=new, min_new_tokens=new, do_sample=False, **extra
        )
    _sync()
    return time.perf_counter() - t0


def per_token_hf(engine: Any, prompt: Any, new: int, static: bool, reps: int) -> dict:
    hf_generate(engine, [prompt], new, static)  # warm-up (compiles the static path)
    hf_generate(engine, [prompt], 1, static)
    long = statistics.median(hf_generate(engine, [prompt], new, static) for _ in range(reps))
    one = statistics.median(hf_generate(engine, [prompt], 1, static) for _ in range(reps))
    return {"ms_per_token": (long - one) / (new - 1) * 1e3, "ttft_s": one}


def per_token_ours(
    model_dir: Path, prompt_fn: Any, new: int, reps: int, impl: str = "fused"
) -> dict:
    from cloud_worker.engine import CloudEngine, EngineConfig
    from fleetvl.sampling import SamplingParams

    # The context just covers prompt + answer: fewer span buckets to compile and capture.
    eng = CloudEngine(
        model_dir,
        EngineConfig(max_slots=1, max_context=512, span_bucket=256, decode_impl=impl),
    )
    prompt = prompt_fn(eng)
    if len(prompt) + new > eng.config.max_context:
        raise SystemExit(f"batch-1 prompt of {len(prompt)} tokens + {new} exceeds 512")
    params = SamplingParams(max_tokens=new, ignore_eos=True)
    runs = []
    for i in range(reps + 1):
        r = eng.generate(prompt, params)
        if i:
            runs.append(((r.total_s - r.ttft_s) / (new - 1) * 1e3, r.ttft_s))
    out = {
        "ms_per_token": statistics.median(x[0] for x in runs),
        "ttft_s": statistics.median(x[1] for x in runs),
    }
    out.update(step_breakdown(eng))
    out["decode_impl"] = impl
    eng.close()
    del eng
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def prefill_ablation(eng: Any, prompts: list, n: int, reps: int = 3) -> dict:
    """Device seconds for one batched prefill of ``n`` requests: the vision tower's windows
    batched (ours) vs transformers' one SDPA call per window, same weights and inputs."""
    from cloud_worker.engine.attention import VISION_ATTENTION
    from cloud_worker.engine.model import prefill

    vision_cfg = eng.lm.model.config.vision_config
    out = {"requests": n}
    for name, impl in (("varlen", VISION_ATTENTION), ("per_window", "sdpa")):
        vision_cfg._attn_implementation = impl
        prefill(eng.lm, prompts[:n])  # warm-up
        times = []
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            prefill(eng.lm, prompts[:n])
            _sync()
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms_per_request"] = statistics.median(times) / n * 1e3
    vision_cfg._attn_implementation = VISION_ATTENTION
    return out


def step_breakdown(eng: Any) -> dict:
    """Device time of the decode step alone (graph replays timed with events), to split a
    token's time into model work and the engine's host work around it."""
    import torch

    step = eng.step
    if not step.use_graphs or not step._graphs:
        return {}
    span = max(step._graphs)
    g = step._graphs[span]
    times = []
    for _ in range(30):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return {"graph_replay_ms": statistics.median(times), "graph_span": span}


def probe_capacity(
    eng: Any, prompts: list, slots: int, quick: bool, lo: int, hi: int
) -> tuple[float, float, float]:
    """Prefill seconds for ``slots`` requests (batched by the engine), decode step seconds at
    full occupancy, and the request rate the engine can sustain (req/s)."""
    from fleetvl.sampling import SamplingParams

    t_sub = time.perf_counter()
    probe = [eng.submit(prompts[i], SamplingParams(max_tokens=hi, ignore_eos=True))
             for i in range(slots)]  # fmt: skip
    while eng.running < slots:
        time.sleep(0.001)
    admit_s = time.perf_counter() - t_sub
    t0, steps0 = time.perf_counter(), eng.decode_steps
    time.sleep(0.05 if quick else 0.5)
    step_s = (time.perf_counter() - t0) / max(eng.decode_steps - steps0, 1)
    for g in probe:
        for _ in g:
            pass
    # Prefill (per request) and decode (per step, shared by all slots) both take device time.
    capacity = 1 / (admit_s / slots + (lo + hi) / 2 * step_s / slots)
    return admit_s, step_s, capacity


def trace(n: int, rate: float, lo: int, hi: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    lengths = rng.integers(lo, hi + 1, n)
    return arrivals, lengths


def run_trace_ours(eng: Any, prompts: list, arrivals: np.ndarray, lengths: np.ndarray) -> dict:
    from fleetvl.sampling import SamplingParams

    ttft, e2e = [None] * len(prompts), [None] * len(prompts)
    t0 = time.perf_counter()
    steps0 = eng.decode_steps
    timings0 = dict(eng.timings)

    def one(i: int) -> None:
        wait = t0 + arrivals[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        r = eng.generate(prompts[i], SamplingParams(max_tokens=int(lengths[i]), ignore_eos=True))
        ttft[i], e2e[i] = r.ttft_s, r.total_s

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    makespan = time.perf_counter() - t0
    timing = {k: v - timings0[k] for k, v in eng.timings.items()}
    extra = {"decode_steps": eng.decode_steps - steps0, "engine_thread_s": timing}
    return _trace_stats(ttft, e2e, lengths, makespan, extra)


def run_trace_fixed(eng: Any, prompts: list, arrivals: np.ndarray, lengths: np.ndarray,
                    batch: int, hi: int) -> dict:  # fmt: skip
    """Static generate() in fixed batches: a batch starts when its last member has arrived
    (and the previous batch is done) and runs to its longest answer. Every batch generates
    ``hi`` tokens: the static cache is sized by the length, so a per-batch length would
    recompile the decode step each batch (with 32 draws the longest is ~``hi`` anyway)."""
    ttft, e2e = [0.0] * len(prompts), [0.0] * len(prompts)
    sizes = sorted({min(batch, len(prompts) - b) for b in range(0, len(prompts), batch)})
    prefill_s = {}
    for n in sizes:  # compile and measure outside the trace
        group = prompts[:n]
        hf_generate(eng, group, hi, True)
        hf_generate(eng, group, 1, True)
        prefill_s[n] = hf_generate(eng, group, 1, True)
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch):
        idx = list(range(b, min(b + batch, len(prompts))))
        wait = t0 + arrivals[idx[-1]] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        start = time.perf_counter() - t0
        dur = hf_generate(eng, [prompts[i] for i in idx], hi, True)
        end = start + dur
        for i in idx:
            ttft[i] = start + prefill_s[len(idx)] - arrivals[i]
            e2e[i] = end - arrivals[i]
    makespan = time.perf_counter() - t0
    return _trace_stats(ttft, e2e, lengths, makespan, {"batch": batch, "generated_per_batch": hi})


def _trace_stats(ttft: list, e2e: list, lengths: np.ndarray, makespan: float, extra: dict) -> dict:
    t, e = np.array(ttft, dtype=float), np.array(e2e, dtype=float)
    return {
        "requests": len(t),
        "output_tokens": int(lengths.sum()),
        "makespan_s": makespan,
        "throughput_tok_s": float(lengths.sum() / makespan),
        "ttft_p50_s": float(np.percentile(t, 50)),
        "ttft_p95_s": float(np.percentile(t, 95)),
        "e2e_p95_s": float(np.percentile(e, 95)),
        **extra,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, short trace")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--parts", default="ours,hf", help="ours, hf or both (split long runs)")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--no-batch1", action="store_true", help="skip the batch-1 measurements")
    ap.add_argument("--rate", type=float, default=None, help="arrivals/s (default: measured)")
    ap.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="skip our engine with transformers' decoder layers / per-window vision",
    )
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    import torch
    import transformers

    from cloud_worker.engine import CloudEngine, EngineConfig

    preset = "tiny" if args.quick else "qwen2.5-vl-7b"
    n_req = 24 if args.quick else args.requests
    slots = 8 if args.quick else args.in_flight
    new_b1 = 32 if args.quick else 128
    lo, hi = (4, 16) if args.quick else (16, 256)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {
        "preset": preset,
        "device": dev,
        "software": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},  # fmt: skip
        "config": {"image": "448x448", "question_tokens": None, "requests": n_req,
                   "in_flight": slots, "output_tokens": [lo, hi], "batch1_new_tokens": new_b1},
    }  # fmt: skip
    say(f"[1/5] {preset} on {dev}")
    model_dir = build(preset, args.cache)
    imgs = images(n_req, 448)
    bw = copy_rate_gb_s()
    report["copy_rate_gb_s"] = bw

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    def one_prompt(eng: Any, i: int = 0) -> Any:
        return eng.encode(messages(), [imgs[i]])

    say("[2/5] batch-1 decode: our engine (CUDA graphs where available)")
    if "ours" in parts and not args.no_batch1:
        report["batch1_ours"] = per_token_ours(model_dir, one_prompt, new_b1, reps=3)
        say(f"  ours {report['batch1_ours']['ms_per_token']:.2f} ms/token")
        save()
        if args.ablation:
            report["batch1_ours_transformers_layers"] = per_token_ours(
                model_dir, one_prompt, new_b1, reps=3, impl="transformers"
            )
            ms = report["batch1_ours_transformers_layers"]["ms_per_token"]
            say(f"  ours with transformers' decoder layers {ms:.2f} ms/token")
            save()
    # One engine for the trace and for transformers' generate() (same weights, one load).
    # Without our part, the engine only holds the weights and the processor for generate().
    serving = "ours" in parts
    # Slot context just past prompt + longest answer: fewer span buckets to capture.
    from fleetvl.vlm.image import prepare_image
    from fleetvl.vlm.processor import QwenVLProcessor

    proc = QwenVLProcessor(model_dir)
    plen = len(proc.encode(messages(), [prepare_image(imgs[0], proc.image_config)]))
    trace_context = -(-(plen + hi) // 128) * 128
    eng = CloudEngine(
        model_dir,
        EngineConfig(max_slots=slots, max_context=trace_context, span_bucket=128,
                     cuda_graphs=serving, compile_step=serving),
    )  # fmt: skip
    prompts = [one_prompt(eng, i) for i in range(n_req)]
    if serving:
        report["prefill_ablation"] = prefill_ablation(eng, prompts, min(8, n_req))
        pa = report["prefill_ablation"]
        say(f"  prefill of {pa['requests']}: {pa['varlen_ms_per_request']:.1f} ms/request "
            f"(per-window vision: {pa['per_window_ms_per_request']:.1f})")  # fmt: skip
        save()
    report["config"]["prompt_tokens"] = len(prompts[0])
    dbytes = decoder_bytes(eng.lm.model)
    report["decoder_weight_bytes"] = dbytes
    if bw == bw:  # not NaN
        report["hbm_bound_ms_per_token"] = dbytes / (bw * 1e9) * 1e3
    if not serving and not args.rate:
        raise SystemExit("--parts hf needs --rate (the rate the ours part measured)")
    # Arrival rate that keeps ~`slots` requests in flight (Little's law), from our batched
    # step measured at full occupancy (after every probe request has been admitted).
    admit_s = step_s = float("nan")
    capacity = float("nan")
    if serving:
        say("[3/5] probing our engine's capacity at full occupancy")
        admit_s, step_s, capacity = probe_capacity(eng, prompts, slots, args.quick, lo, hi)
        report["batch_full_breakdown"] = step_breakdown(eng)
    # Requests in flight = rate x latency (Little): ~`slots` of them, within 90% of capacity.
    rate = args.rate or min(slots / ((lo + hi) / 2 * step_s), 0.9 * capacity)
    arrivals, lengths = trace(n_req, rate, lo, hi)
    report["trace"] = {
        "rate_req_s": rate,
        "probe_step_ms": step_s * 1e3,
        "probe_prefill_ms_per_request": admit_s / slots * 1e3,
        "capacity_req_s": capacity,
    }
    if "ours" in parts:
        say(f"[3/5] staggered trace, {n_req} requests at {rate:.1f}/s: our engine")
        report["trace_ours"] = run_trace_ours(eng, prompts, arrivals, lengths)
        say(f"  ours {report['trace_ours']['throughput_tok_s']:.0f} tok/s")
        save()
    # transformers' generate() runs after our engine is done with the GPU: its static-cache
    # compile (CUDA-graph trees) and our captured graphs are never interleaved.
    if "hf" in parts and not args.no_batch1:
        say("[4/5] batch-1 decode: transformers generate() eager and static")
        report["batch1_hf_eager"] = per_token_hf(eng, prompts[0], min(new_b1, 32), False, 2)
        say(f"  eager {report['batch1_hf_eager']['ms_per_token']:.2f} ms/token")
        report["batch1_hf_static"] = per_token_hf(eng, prompts[0], new_b1, True, 3)
        say(f"  static {report['batch1_hf_static']['ms_per_token']:.2f} ms/token")
        save()
    if "hf" in parts:
        say(f"[5/5] staggered trace: static generate() in fixed batches of {slots}")
        report["trace_hf_static_fixed"] = run_trace_fixed(
            eng, prompts, arrivals, lengths, slots, hi
        )
        say(f"  fixed {report['trace_hf_static_fixed']['throughput_tok_s']:.0f} tok/s")
    eng.close()
    _summarize(report)
    save()
    if args.json:
        say(f"wrote {args.json}")
    return 0


def _summarize(r: dict) -> None:
    bound = r.get("hbm_bound_ms_per_token")
    print(f"\ncloud engine, {r['preset']} on {r['device']} ({r['software']})")
    if bound:
        gb = r["decoder_weight_bytes"] / 1e9
        print(f"copy rate {r['copy_rate_gb_s']:.0f} GB/s; decoder {gb:.2f} GB -> bound "
              f"{bound:.2f} ms/token")  # fmt: skip
    print(f"{'batch-1 decode':<28}{'ms/token':>10}{'tok/s':>9}{'% bound':>9}")
    rows = (("batch1_ours", "ours (fused, CUDA graph)"),
            ("batch1_ours_transformers_layers", "ours, transformers' layers"),
            ("batch1_hf_static", "transformers static"),
            ("batch1_hf_eager", "transformers eager"))  # fmt: skip
    for key, label in rows:
        if key in r:
            ms = r[key]["ms_per_token"]
            share = f"{bound / ms * 100:.0f}%" if bound else "-"
            print(f"{label:<28}{ms:>10.2f}{1e3 / ms:>9.1f}{share:>9}")
    print(f"\n{'staggered trace':<28}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p95':>10}{'e2e p95':>10}")
    for key, label in (("trace_ours", "ours (continuous)"),
                       ("trace_hf_static_fixed", "static, fixed batches")):  # fmt: skip
        if key in r:
            t = r[key]
            print(f"{label:<28}{t['throughput_tok_s']:>9.0f}{t['ttft_p50_s']:>10.2f}"
                  f"{t['ttft_p95_s']:>10.2f}{t['e2e_p95_s']:>10.2f}")  # fmt: skip
    if "prefill_ablation" in r:
        pa = r["prefill_ablation"]
        print(
            f"\nprefill, batch of {pa['requests']}: {pa['varlen_ms_per_request']:.1f} ms/request "
            f"(vision windows batched) vs {pa['per_window_ms_per_request']:.1f} (per window)"
        )
    if "trace_ours" in r:
        t = r["trace_ours"]["engine_thread_s"]
        print("engine thread in our trace: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    targets = {}
    if bound and "batch1_ours" in r:
        targets["batch1_share_of_bound"] = bound / r["batch1_ours"]["ms_per_token"]
    if "trace_ours" in r and "trace_hf_static_fixed" in r:
        o, f = r["trace_ours"], r["trace_hf_static_fixed"]
        targets["trace_throughput_vs_fixed"] = o["throughput_tok_s"] / f["throughput_tok_s"]
        targets["trace_ttft_p95_lower"] = o["ttft_p95_s"] < f["ttft_p95_s"]
    r["targets"] = targets
    print(f"targets: {targets} (batch-1 >= 0.70 of bound; trace >= 1.5x with lower p95 TTFT)")


if __name__ == "__main__":
    raise SystemExit(main())
