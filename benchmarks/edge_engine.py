"""Edge engine benchmark: our ONNX Runtime engine vs onnxruntime-genai vs transformers.

    python benchmarks/edge_engine.py [--quick] [--json PATH]

On the ``edge-bench`` preset (Qwen2.5-VL, Qwen2.5-0.5B text tower; ``--quick``: ``tiny``) it
builds the checkpoint and fp32/int8/int4 bundles into ``.cache/bench`` (reused when present),
then measures, each variant in a fresh process so peak RSS is its own:

* two prompts: one 448x448 image + question, and a ~300-token text prompt;
* TTFT (request start to first token, preprocessing included) and decode tokens/s over
  ``--new-tokens`` tokens with EOS ignored, median of ``--runs`` runs after a warm-up;
* our engine at fp32/int8/int4; onnxruntime-genai on the same fp32 and int4 bundles;
  transformers fp32 eager on the same checkpoint;
* the memory-bandwidth bound: measured read bandwidth / decoder bytes read per token;
* bundle sizes and peak RSS.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._artifacts import ensure_artifacts, image_bytes  # noqa: E402

QUESTION = "What does the oil-level gauge read? Answer with the percentage."
TEXT_SEED = (
    "Substation report. Feeder bay 3 breaker closed, transformer oil level 62 percent, "
    "phase B hottest at 71 C, seven-segment meter reads 118.4 kV. "
)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _messages(text: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _text_prompt(processor: Any, target_tokens: int) -> str:
    text = TEXT_SEED
    while len(processor.encode(_messages(text + QUESTION, False))) < target_tokens:
        text += TEXT_SEED
    return text + QUESTION


def _summarize(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys if k != "tokens"} | {
        "tokens": runs[-1]["tokens"]
    }


# -- variants (each runs in its own process) --------------------------------------------------


def _ours_runner(bundle: str, args: dict):
    """A function running one request on our engine ("image" or "text"), timed."""
    from edge_agent.engine.bundle import SessionConfig
    from edge_agent.engine.engine import EdgeEngine
    from fleetvl.sampling import SamplingParams

    engine = EdgeEngine(bundle, SessionConfig(intra_op_threads=args["threads"]))
    image = image_bytes(args["image_size"])
    text = _text_prompt(engine.processor, args["prompt_tokens"])
    params = SamplingParams(max_tokens=args["new_tokens"], ignore_eos=True)
    prompts = {"image": (_messages(QUESTION, True), [image]), "text": (_messages(text, False), [])}

    def run(name: str) -> dict:
        msgs, imgs = prompts[name]
        t0 = time.perf_counter()
        prompt = engine.encode(msgs, imgs)  # decode + preprocess + tokenize count too
        encode_s = time.perf_counter() - t0
        res = engine.generate(prompt, params)
        t = res.timings
        return {
            "ttft_s": encode_s + t.ttft_s,
            "decode_tok_s": t.decode_tokens_per_s,
            "vision_s": t.vision_s,
            "prefill_s": t.prefill_s,
            "prompt_tokens": t.prompt_tokens,
            "tokens": res.token_ids,
        }

    return run


def _genai_runner(bundle: str, args: dict):
    """A function running one onnxruntime-genai request ("image" or "text"), timed."""
    import onnxruntime_genai as og

    from fleetvl.vlm.image import decode_image, preprocess
    from fleetvl.vlm.processor import QwenVLProcessor

    processor = QwenVLProcessor(bundle)
    # Same thread count as our engine: onnxruntime-genai 0.18 ran single-threaded here otherwise.
    config = og.Config(bundle)
    threads = {"intra_op_num_threads": args["threads"]}
    sections = ("decoder", "vision", "embedding")
    config.overlay(json.dumps({"model": {k: {"session_options": threads} for k in sections}}))
    model = og.Model(config)
    mm = model.create_multimodal_processor()
    image_path = Path(args["tmp"]) / "bench.png"
    image_path.write_bytes(image_bytes(args["image_size"]))
    text = _text_prompt(processor, args["prompt_tokens"])
    text_ids = processor.encode(_messages(text, False)).input_ids.tolist()
    n_new = args["new_tokens"]
    # og's processor expands placeholders exactly as ours (tested): same prompt length.
    pre = preprocess(decode_image(image_path.read_bytes()), processor.image_config)
    n_image_prompt = len(processor.encode(_messages(QUESTION, True), [pre]))
    image_text = processor.render(_messages(QUESTION, True))

    def run(name: str) -> dict:
        t0 = time.perf_counter()
        params = og.GeneratorParams(model)
        n_prompt = n_image_prompt if name == "image" else len(text_ids)
        params.set_search_options(max_length=n_prompt + n_new, do_sample=False)
        gen = og.Generator(model, params)
        if name == "image":
            gen.set_inputs(mm(image_text, images=og.Images.open(str(image_path))))
        else:
            gen.append_tokens(text_ids)
        gen.generate_next_token()
        t_first = time.perf_counter()
        tokens = [int(gen.get_next_tokens()[0])]
        while not gen.is_done():
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
        t_end = time.perf_counter()
        del gen
        return {
            "ttft_s": t_first - t0,
            "decode_tok_s": (len(tokens) - 1) / (t_end - t_first),
            "prompt_tokens": n_prompt,
            "tokens": tokens,
        }

    return run


def _measure(run, args: dict) -> dict:
    out = {}
    for name in ("image", "text"):
        runs = [run(name) for _ in range(args["runs"] + 1)][1:]  # the first run warms up
        out[name] = _summarize(runs)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_ours(bundle: str, args: dict) -> dict:
    return _measure(_ours_runner(bundle, args), args)


def run_genai(bundle: str, args: dict) -> dict:
    return _measure(_genai_runner(bundle, args), args)


def run_paired(bundle: str, args: dict) -> dict:
    """Ours and onnxruntime-genai on one bundle in one process, runs alternating A/B, so the
    machine's speed swings (2x between minutes on this VM) hit both sides alike."""
    ours, genai = _ours_runner(bundle, args), _genai_runner(bundle, args)
    out: dict = {"read_bandwidth_gb_s_before": measure_read_bandwidth(args["threads"])}
    out["read_bandwidth_gb_s_per_round"] = []
    for name in ("text", "image"):
        a, b = [], []
        for i in range(args["paired_rounds"] + 1):
            # This VM's bandwidth drifts 2x within minutes: a probe right before each round
            # gives the bound that held while that round ran.
            bw = measure_read_bandwidth(args["threads"], repeats=3) if name == "text" else None
            ra, rb = ours(name), genai(name)
            if i:  # round 0 warms both up
                a.append(ra)
                b.append(rb)
                if bw is not None:
                    out["read_bandwidth_gb_s_per_round"].append(bw)
        out[name] = {
            "ours_runs": [{k: v for k, v in r.items() if k != "tokens"} for r in a],
            "ours": _summarize(a),
            "genai": _summarize(b),
            "decode_ratio_per_round": [
                x["decode_tok_s"] / y["decode_tok_s"] for x, y in zip(a, b, strict=False)
            ],
            "ttft_ratio_per_round": [x["ttft_s"] / y["ttft_s"] for x, y in zip(a, b, strict=False)],
        }
    out["read_bandwidth_gb_s_after"] = measure_read_bandwidth(args["threads"])
    return out


def run_transformers(hf_dir: str, args: dict) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.generation.streamers import BaseStreamer

    from fleetvl.vlm.image import decode_image, preprocess
    from fleetvl.vlm.processor import QwenVLProcessor

    torch.set_num_threads(args["threads"])
    processor = QwenVLProcessor(hf_dir)
    model = AutoModelForImageTextToText.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    image = image_bytes(args["image_size"])
    text = _text_prompt(processor, args["prompt_tokens"])

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    out = {}
    for name, msgs, imgs in (
        ("image", _messages(QUESTION, True), [image]),
        ("text", _messages(text, False), []),
    ):
        runs = []
        for i in range(min(args["runs"], 2) + 1):
            t0 = time.perf_counter()
            pre = [preprocess(decode_image(b), processor.image_config) for b in imgs]
            prompt = processor.encode(msgs, pre)
            ids = torch.from_numpy(prompt.input_ids)[None]
            kw = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": (ids == processor.image_token_id).int(),
            }
            if pre:
                kw["pixel_values"] = torch.from_numpy(np.concatenate([p.pixel_values for p in pre]))
                kw["image_grid_thw"] = torch.tensor([p.grid_thw for p in pre])
            clock = Clock()
            with torch.no_grad():
                out_ids = model.generate(
                    **kw,
                    max_new_tokens=args["new_tokens"],
                    min_new_tokens=args["new_tokens"],
                    do_sample=False,
                    streamer=clock,
                )
            first, last = clock.times[1], clock.times[-1]  # times[0] is the prompt echo
            if i:
                runs.append(
                    {
                        "ttft_s": first - t0,
                        "decode_tok_s": (len(clock.times) - 2) / (last - first),
                        "prompt_tokens": len(prompt),
                        "tokens": out_ids[0, ids.shape[1] :].tolist(),
                    }
                )
        out[name] = _summarize(runs)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# -- setup and the bandwidth bound ------------------------------------------------------------


def measure_read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Best-of-N DRAM read rate (GB/s): each thread streams its share of a 1 GiB float32 array
    through BLAS ``sdot(row, row)`` 4 MiB at a time (vectorized, one input stream, GIL
    released). A NumPy ``sum`` reads ~30% slower here: its pairwise summation is compute-bound,
    so it understated the bound (earlier results used it)."""
    import numpy as np

    n = int(gib * (1 << 30) / 4)
    a = np.ones(n, dtype=np.float32)
    rows = 1 << 20
    parts = np.array_split(a[: n // rows * rows].reshape(-1, rows), threads)

    def stream(block: np.ndarray) -> None:
        for row in block:
            np.dot(row, row)

    best = 0.0
    for _ in range(repeats):
        ts = [threading.Thread(target=stream, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, n // rows * rows * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def bundle_sizes(bundle: Path) -> dict[str, int]:
    m = json.loads((bundle / "manifest.json").read_text())
    f = m["files"]
    return {
        "total_bytes": m["total_bytes"],
        "decoder_bytes": f["model.onnx.data"]["bytes"] + f["model.onnx"]["bytes"],
        "vision_bytes": f["vision.onnx"]["bytes"],
        "embedding_bytes": f["embedding.onnx"]["bytes"],
    }


def kv_bytes_per_token_read(hf: Path, context: int) -> int:
    cfg = json.loads((hf / "config.json").read_text())["text_config"]
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head * 4 * context


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, few tokens: a smoke run")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    preset = "tiny" if args.quick else "edge-bench"
    cfg = {
        "threads": args.threads,
        "new_tokens": 16 if args.quick else 64,
        "prompt_tokens": 60 if args.quick else 300,
        "image_size": 448,
        "runs": args.runs or 1,
        "paired_rounds": 1 if args.quick else 5,
        "tmp": str(args.cache),
    }
    art = ensure_artifacts(args.cache, preset)
    print("measuring read bandwidth ...", flush=True)
    bw = measure_read_bandwidth(args.threads)
    variants = [
        ("ours-fp32", run_ours, art["fp32"]),
        ("ours-int8", run_ours, art["int8"]),
        ("ours-int4", run_ours, art["int4"]),
        ("genai-fp32", run_genai, art["fp32"]),
        ("genai-int4", run_genai, art["int4"]),
        ("transformers-fp32-eager", run_transformers, art["hf"]),
    ]
    results: dict[str, Any] = {}
    ctx = mp.get_context("spawn")
    for name, fn, path in variants:
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results[name] = pool.submit(fn, str(path), cfg).result()
        r = results[name]
        print(
            f"  done in {time.perf_counter() - t0:.0f}s: image TTFT {r['image']['ttft_s']:.3f}s, "
            f"text TTFT {r['text']['ttft_s']:.3f}s, decode {r['text']['decode_tok_s']:.1f} tok/s",
            flush=True,
        )

    print(
        "running paired int4: ours and onnxruntime-genai alternating in one process ...", flush=True
    )
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        paired = pool.submit(run_paired, str(art["int4"]), cfg).result()

    sizes = {p: bundle_sizes(art[p]) for p in ("fp32", "int8", "int4")}
    prompt_len = results["ours-int4"]["text"]["prompt_tokens"]
    mid_context = prompt_len + cfg["new_tokens"] // 2
    kv = kv_bytes_per_token_read(art["hf"], mid_context)
    rows = []
    report: dict[str, Any] = {
        "preset": preset,
        "config": {k: v for k, v in cfg.items() if k != "tmp"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "read_bandwidth_gb_s": bw,
        "kv_bytes_read_per_token_at_mid_context": kv,
        "bundles": sizes,
        "variants": {},
    }
    for name, r in results.items():
        precision = name.rsplit("-", 1)[-1] if not name.startswith("transformers") else "fp32"
        dec_bytes = (
            sizes[precision]["decoder_bytes"]
            if precision in sizes
            else sizes["fp32"]["decoder_bytes"]
        )
        bound = bw * 1e9 / (dec_bytes + kv)
        entry = {
            "image_ttft_s": r["image"]["ttft_s"],
            "image_decode_tok_s": r["image"]["decode_tok_s"],
            "image_prompt_tokens": r["image"]["prompt_tokens"],
            "text_ttft_s": r["text"]["ttft_s"],
            "text_decode_tok_s": r["text"]["decode_tok_s"],
            "text_prompt_tokens": r["text"]["prompt_tokens"],
            "bandwidth_bound_tok_s": bound,
            "text_decode_share_of_bound": r["text"]["decode_tok_s"] / bound,
            "peak_rss_mb": r["peak_rss_mb"],
        }
        if "vision_s" in r["image"]:
            entry["image_vision_s"] = r["image"]["vision_s"]
        report["variants"][name] = entry
        rows.append((name, entry))
    ref_tokens = results["ours-fp32"]["text"]["tokens"]

    def same_prefix(a: list[int], b: list[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    report["greedy_tokens_identical_to_ours_fp32"] = {
        name: same_prefix(ref_tokens, r["text"]["tokens"]) for name, r in results.items()
    }
    report["paired_int4"] = paired
    pt, pi = paired["text"], paired["image"]
    paired_bw = max(
        paired["read_bandwidth_gb_s_before"],
        paired["read_bandwidth_gb_s_after"],
        *paired["read_bandwidth_gb_s_per_round"],
    )
    paired_bound = paired_bw * 1e9 / (sizes["int4"]["decoder_bytes"] + kv)
    report["targets"] = {
        "source": "paired_int4 (medians of alternating runs in one process)",
        "int4_decode_tok_s_ours": pt["ours"]["decode_tok_s"],
        "int4_decode_tok_s_genai": pt["genai"]["decode_tok_s"],
        # Paired design: each round runs ours and genai back to back, so the per-round ratio
        # cancels the VM's drift; its median is the estimate. The ratio of the two medians
        # (rounds unpaired) is reported beside it.
        "int4_decode_vs_genai": statistics.median(pt["decode_ratio_per_round"]),
        "int4_decode_vs_genai_ratio_of_medians": pt["ours"]["decode_tok_s"]
        / pt["genai"]["decode_tok_s"],
        # The bound that held during each round (probe right before it), median over rounds;
        # and, stricter, against the highest probe reading of the whole paired phase.
        "int4_decode_share_of_bound": statistics.median(
            r["decode_tok_s"] * (sizes["int4"]["decoder_bytes"] + kv) / (bw * 1e9)
            for r, bw in zip(
                paired["text"]["ours_runs"], paired["read_bandwidth_gb_s_per_round"], strict=True
            )
        ),
        "int4_bandwidth_gb_s_per_round": paired["read_bandwidth_gb_s_per_round"],
        "int4_bandwidth_bound_tok_s": paired_bound,
        "int4_decode_share_of_max_probe_bound": pt["ours"]["decode_tok_s"] / paired_bound,
        "int4_text_ttft_s_ours": pt["ours"]["ttft_s"],
        "int4_text_ttft_s_genai": pt["genai"]["ttft_s"],
        "int4_text_ttft_vs_genai": statistics.median(pt["ttft_ratio_per_round"]),
        "int4_text_ttft_vs_genai_ratio_of_medians": pt["ours"]["ttft_s"] / pt["genai"]["ttft_s"],
        "int4_image_ttft_s_ours": pi["ours"]["ttft_s"],
        "int4_image_ttft_s_genai": pi["genai"]["ttft_s"],
        "int4_image_ttft_vs_genai": statistics.median(pi["ttft_ratio_per_round"]),
        "int4_image_decode_vs_genai": pi["ours"]["decode_tok_s"] / pi["genai"]["decode_tok_s"],
        "int4_decoder_bytes_vs_fp32": sizes["int4"]["decoder_bytes"]
        / sizes["fp32"]["decoder_bytes"],
    }

    print()
    print(
        f"edge_engine on {preset}: {cfg['threads']} threads, {cfg['new_tokens']} new tokens, "
        f"read bandwidth {bw:.1f} GB/s"
    )
    hdr = (
        f"{'variant':26} {'img TTFT s':>10} {'img tok/s':>9} {'txt TTFT s':>10} {'txt tok/s':>9} "
        f"{'bound':>7} {'%bound':>7} {'RSS MB':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, e in rows:
        print(
            f"{name:26} {e['image_ttft_s']:10.3f} {e['image_decode_tok_s']:9.1f} "
            f"{e['text_ttft_s']:10.3f} {e['text_decode_tok_s']:9.1f} "
            f"{e['bandwidth_bound_tok_s']:7.1f} "
            f"{100 * e['text_decode_share_of_bound']:6.0f}% {e['peak_rss_mb']:8.0f}"
        )
    print()
    print(f"{'bundle':8} {'total MB':>9} {'decoder MB':>11} {'vision MB':>10} {'embed MB':>9}")
    for p, s in sizes.items():
        print(
            f"{p:8} {s['total_bytes'] / 1e6:9.1f} {s['decoder_bytes'] / 1e6:11.1f} "
            f"{s['vision_bytes'] / 1e6:10.1f} {s['embedding_bytes'] / 1e6:9.1f}"
        )
    print()
    print(
        f"text prompt {prompt_len} tokens; greedy tokens identical to ours-fp32 (prefix length): "
        + ", ".join(f"{k}={v}" for k, v in report["greedy_tokens_identical_to_ours_fp32"].items())
    )
    t = report["targets"]
    print(
        f"paired int4 (median of {cfg['paired_rounds']} alternating rounds, bandwidth "
        f"{paired_bw:.1f} GB/s): decode ours {t['int4_decode_tok_s_ours']:.1f} vs genai "
        f"{t['int4_decode_tok_s_genai']:.1f} tok/s, bound {t['int4_bandwidth_bound_tok_s']:.1f}; "
        f"text TTFT ours {t['int4_text_ttft_s_ours']:.2f} vs genai "
        f"{t['int4_text_ttft_s_genai']:.2f} s; image TTFT ours {t['int4_image_ttft_s_ours']:.2f} "
        f"vs genai {t['int4_image_ttft_s_genai']:.2f} s"
    )
    print(
        f"targets: int4 decode vs genai {t['int4_decode_vs_genai']:.2f}x (>=0.95), "
        f"share of bound {100 * t['int4_decode_share_of_bound']:.0f}% (>=60%; "
        f"{100 * t['int4_decode_share_of_max_probe_bound']:.0f}% of the highest probe), "
        f"text TTFT vs genai {t['int4_text_ttft_vs_genai']:.2f}x (<=0.8), "
        f"image TTFT vs genai {t['int4_image_ttft_vs_genai']:.2f}x, "
        f"int4/fp32 decoder bytes {t['int4_decoder_bytes_vs_fp32']:.3f} (<=0.3)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
