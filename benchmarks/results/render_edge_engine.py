"""Render benchmarks/results/edge_engine.json as the Markdown tables in benchmarks/README.md.

python benchmarks/results/render_edge_engine.py > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("edge_engine.json"))
    r = json.loads(path.read_text())
    out = [
        f"Preset `{r['preset']}`, {r['config']['threads']} threads, "
        f"{r['config']['new_tokens']} new tokens (EOS ignored), text prompt "
        f"{r['variants']['ours-int4']['text_prompt_tokens']} tokens, image prompt "
        f"{r['variants']['ours-int4']['image_prompt_tokens']} tokens (one 448x448 image). "
        f"Read bandwidth {r['read_bandwidth_gb_s']:.1f} GB/s.",
        "",
        "| variant | image TTFT s | image tok/s | text TTFT s | text tok/s | bound tok/s | % bound "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in r["variants"].items():
        out.append(
            f"| {name} | {e['image_ttft_s']:.2f} | {e['image_decode_tok_s']:.1f} | "
            f"{e['text_ttft_s']:.2f} | {e['text_decode_tok_s']:.1f} | "
            f"{e['bandwidth_bound_tok_s']:.1f} | {100 * e['text_decode_share_of_bound']:.0f}% | "
            f"{e['peak_rss_mb']:.0f} |"
        )
    t = r["targets"]
    out += [
        "",
        f"Paired int4 run (ours and onnxruntime-genai alternating in one process, "
        f"{r['config']['paired_rounds']} rounds; ratios are medians of the per-round ratios):",
        "",
        "| measure | ours | onnxruntime-genai | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| text decode tok/s | {t['int4_decode_tok_s_ours']:.1f} | "
        f"{t['int4_decode_tok_s_genai']:.1f} | {t['int4_decode_vs_genai']:.2f}x "
        f"(ratio of medians {t['int4_decode_vs_genai_ratio_of_medians']:.2f}x) | >= 0.95x |",
        f"| text TTFT s | {t['int4_text_ttft_s_ours']:.2f} | {t['int4_text_ttft_s_genai']:.2f} | "
        f"{t['int4_text_ttft_vs_genai']:.2f}x | <= 0.8x |",
        f"| image TTFT s | {t['int4_image_ttft_s_ours']:.2f} | {t['int4_image_ttft_s_genai']:.2f} "
        f"| {t['int4_image_ttft_vs_genai']:.2f}x | (reported) |",
        "| decode share of the bandwidth bound, probe right before each round (median; "
        "probes "
        + ", ".join(f"{b:.0f}" for b in t["int4_bandwidth_gb_s_per_round"])
        + f" GB/s) | {100 * t['int4_decode_share_of_bound']:.0f}% | | | >= 60% |",
        f"| decode share of the bound at the highest probe of the phase "
        f"({t['int4_bandwidth_bound_tok_s']:.1f} tok/s) | "
        f"{100 * t['int4_decode_share_of_max_probe_bound']:.0f}% | | | (stricter) |",
        "",
        "| bundle | total MB | decoder MB | vision MB | embedding MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for p, s in r["bundles"].items():
        out.append(
            f"| {p} | {s['total_bytes'] / 1e6:.0f} | {s['decoder_bytes'] / 1e6:.0f} | "
            f"{s['vision_bytes'] / 1e6:.0f} | {s['embedding_bytes'] / 1e6:.0f} |"
        )
    out.append("")
    out.append(f"int4 / fp32 decoder bytes: {t['int4_decoder_bytes_vs_fp32']:.3f} (target <= 0.3)")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
