"""The gate outside its training data: out-of-scope inputs, camera faults, fresh seeds.

    python benchmarks/gate_ood.py [--quick] [--json PATH] [--plot PATH] [--target 0.99]

The INT4 edge bundle of ``models/fleet-edge`` is calibrated the way a site calibrates it
(``fleetvl calibrate`` on the ``calib`` split, a fifth of it through a mildly faulty camera):
the gate's threshold for ``--target`` accuracy (95% lower bound) and the out-of-scope score.
Then, on data nothing was trained, calibrated or chosen on:

* ``ood``: out-of-scope families (noise, flat frames, real photographs from four package-data
  sources, severe camera faults, scenes of another kind): the score's AUROC against fresh
  in-scope questions, the share flagged, and the share **released as an answer at the edge**
  (in scope by the score and through the confidence gate). The score is fitted on in-scope
  calibration data only, so no family is ever used to fit it (leave-one-family-out holds for
  every family at once); ``tuned_on`` marks the families its design was developed against.
* ``in_dist``: fresh seeds of the held-out split, usual level mix: how many the score calls out
  of scope (false alarms).
* ``degraded``: every camera fault kind, half mild (answerable) and half severe: the share
  released at the edge, and released *and wrong* (a severe input has no right answer).
* ``heldout`` / ``hard``: the edge -> cloud cascade on fresh seeds (usual mix; levels
  0.85-1.0): edge, cloud and cascade accuracy, escalated and refused shares. Refusals count
  as wrong answers; the cloud model carries its own scope score (``models/fleet-cloud``).
* ``overhead``: the score's cost per request (thumbnail + score) against the image TTFT
  (PNG bytes in, first token out), p50.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _ood_families as fam  # noqa: E402
from benchmarks._artifacts import finite  # noqa: E402
from benchmarks._cascade_runs import (  # noqa: E402
    calibrated_bundle,
    export_bundles,
    quick_models,
    run_cloud,
)
from fleetvl.answers import answer_matches  # noqa: E402
from fleetvl.vlm.gate_signals import auroc  # noqa: E402
from fleetvl_tools.fleetdata import Sample  # noqa: E402
from fleetvl_tools.fleetdata.faults import KINDS  # noqa: E402

CACHE = ROOT / ".cache" / "bench" / "gate_ood"
SIGNAL = "mean_prob"  # the agent's default gate signal
MAX_TOKENS = 8


def _png(img) -> bytes:  # noqa: ANN001 - a PIL image
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class EdgeRun:
    """The edge engine with the bundle's scope model and calibrated gate."""

    def __init__(self, bundle: Path, target: float, threads: int) -> None:
        from edge_agent.engine import EdgeEngine, SessionConfig
        from fleetvl.vlm.calibration import load_calibration, load_scope

        self.engine = EdgeEngine(bundle, SessionConfig(intra_op_threads=threads, max_context=512))
        cal = load_calibration(bundle)
        assert cal is not None
        self.scope = load_scope(bundle, cal)
        self.threshold = cal.signals[SIGNAL].threshold_for_accuracy(target)

    def run(self, items: list[fam.Item]) -> dict[str, np.ndarray]:
        """Per item: the answer's correctness, the scope score and verdict, the gate's
        value, and timings. Every item is answered (the refusal is applied from the score)
        so the edge model's own accuracy is known too."""
        from fleetvl.sampling import SamplingParams
        from fleetvl.vlm.gate import score

        params = SamplingParams(max_tokens=MAX_TOKENS)
        rows = []
        for it in items:
            data = _png(it.image)
            content = [{"type": "image"}, {"type": "text", "text": it.question}]
            msgs = [{"role": "user", "content": content}]
            t0 = time.perf_counter()
            prompt = self.engine.encode(msgs, [data])
            gen = self.engine.stream(prompt, params, scope=self.scope)
            first = None
            for _ in gen:
                first = first or time.perf_counter()
            r = gen.result
            first = first or time.perf_counter()
            ok = it.answer is not None and answer_matches(r.text, it.answer)
            rows.append((ok, r.scope.score, r.scope.out_of_scope, score(SIGNAL, r.tokens),
                         (first - t0) * 1e3, r.timings.scope_s * 1e3))  # fmt: skip
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        out = {"ok": a[:, 0] > 0, "score": a[:, 1], "oos": a[:, 2] > 0, "gate": a[:, 3],
               "ttft_ms": a[:, 4], "ood_ms": a[:, 5]}  # fmt: skip
        out["released"] = ~out["oos"] & (out["gate"] >= self.threshold)
        return out


def cloud_ok(cloud_hf: Path, items: list[fam.Item]) -> np.ndarray:
    """The cloud model's correctness per item (its own scope refusals are wrong answers)."""
    samples = [Sample("", "", it.task, "", it.question, it.answer or "", None, it.image)  # type: ignore[arg-type]
               for it in items]  # fmt: skip
    return run_cloud(cloud_hf, samples).ok


def _rate(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def cascade(e: dict[str, np.ndarray], cloud: np.ndarray) -> dict[str, float]:
    """Edge releases what passes; refuses what its scope score flags (a wrong answer here);
    escalates the rest to the cloud."""
    escalate = ~e["oos"] & ~e["released"]
    final = np.where(e["released"], e["ok"], np.where(escalate, cloud, False))
    c = _rate(cloud)
    return {
        "n": len(cloud), "edge_acc": _rate(e["ok"]), "cloud_acc": c,
        "cascade_acc": _rate(final), "cascade_over_cloud": _rate(final) / max(c, 1e-9),
        "escalated": _rate(escalate), "refused": _rate(e["oos"]),
        "released_accuracy": _rate(e["ok"][e["released"]]),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few questions per set (smoke run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG (default: the JSON path's .png)")
    ap.add_argument("--target", type=float, default=0.99,
                    help="accuracy asked of released edge answers (the sites' min_confidence)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--edge", default=str(ROOT / "models" / "fleet-edge"))
    ap.add_argument("--cloud", default=str(ROOT / "models" / "fleet-cloud"))
    args = ap.parse_args()
    q = args.quick
    n_cal, n_in, n_hard, n_fam, n_kind = (300, 96, 48, 24, 24) if q else (3000, 1000, 400, 200, 240)
    edge_hf, cloud_hf = Path(args.edge), Path(args.cloud)
    if not (edge_hf / "config.json").exists() or not (cloud_hf / "config.json").exists():
        if not q:
            print("error: no trained models (see models/README.md); or run --quick",
                  file=sys.stderr)  # fmt: skip
            return 2
        edge_hf, cloud_hf = quick_models(CACHE)
    t_start = time.perf_counter()
    bundle = export_bundles(edge_hf, ["int4"], CACHE)["int4"]
    calibrated = calibrated_bundle(bundle, n_cal, CACHE, max_tokens=MAX_TOKENS)
    edge = EdgeRun(calibrated, args.target, args.threads)
    sets = {"heldout": fam.in_scope("heldout", n_in, args.seed),
            "hard": fam.hard_mix(n_hard, args.seed)}  # fmt: skip
    res: dict = {"config": {"quick": q, "target_accuracy": args.target, "signal": SIGNAL,
                            "threshold": edge.threshold, "calibration_examples": n_cal,
                            "edge_model": str(edge_hf), "cloud_model": str(cloud_hf),
                            "seed": args.seed, "scope_alpha": edge.scope.alpha if edge.scope
                            else None}}  # fmt: skip
    runs = {}
    for name, items in sets.items():
        runs[name] = edge.run(items)
        res[name] = cascade(runs[name], cloud_ok(cloud_hf, items))
        print(f"{name}: {json.dumps(res[name])}", flush=True)
    ind = runs["heldout"]
    res["in_dist"] = {"n": len(ind["oos"]), "false_alarm_rate": _rate(ind["oos"]),
                      "hard_false_alarm_rate": _rate(runs["hard"]["oos"])}  # fmt: skip
    families, scores = {}, {"in-scope (held-out)": ind["score"]}
    for name in fam.FAMILIES:
        r = edge.run(fam.family(name, n_fam, args.seed))
        lab = np.r_[np.zeros(len(ind["score"])), np.ones(len(r["score"]))].astype(bool)
        families[name] = {"n": len(r["oos"]), "auroc": auroc(np.r_[ind["score"], r["score"]], lab),
                          "flagged_rate": _rate(r["oos"]), "answered_rate": _rate(r["released"]),
                          "tuned_on": name in fam.TUNED_ON}  # fmt: skip
        scores[name] = r["score"]
        runs[f"ood:{name}"] = r
        print(f"ood {name}: {json.dumps(families[name])}", flush=True)
    released_all = np.concatenate([runs[f"ood:{n}"]["released"] for n in fam.FAMILIES])
    res["ood"] = {"answered_rate": _rate(released_all),
                  "auroc_min": min(f["auroc"] for f in families.values()),
                  "families": families, "fitted_on_families": []}  # fmt: skip
    kinds = {}
    for kind in KINDS:
        items = fam.degraded_kind(kind, n_kind, args.seed)
        r = edge.run(items)
        severe = np.array([it.severe for it in items])
        kinds[kind] = {"n": len(items), "severe_share": _rate(severe),
                       "answered_rate": _rate(r["released"]),
                       "confidently_wrong_rate": _rate(r["released"] & ~r["ok"]),
                       "flagged_rate": _rate(r["oos"]),
                       "mild_accuracy": _rate(r["ok"][~severe]),
                       "tuned_on": f"kind:{kind}" in fam.TUNED_ON}  # fmt: skip
        print(f"degraded {kind}: {json.dumps(kinds[kind])}", flush=True)
    res["degraded"] = {"kinds": kinds}
    ttft = np.concatenate([runs[k]["ttft_ms"] for k in ("heldout", "hard")])
    ood_ms = np.concatenate([runs[k]["ood_ms"] for k in ("heldout", "hard")])
    res["overhead"] = {"ood_ms_p50": float(np.median(ood_ms)),
                       "image_ttft_ms_p50": float(np.median(ttft)),
                       "ood_over_ttft": float(np.median(ood_ms) / np.median(ttft))}  # fmt: skip
    res["wall_seconds"] = time.perf_counter() - t_start
    _print_tables(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite(res), indent=2) + "\n")
        print(f"wrote {args.json}")
    plot = Path(args.plot) if args.plot else (
        Path(args.json).with_suffix(".png") if args.json else CACHE / "gate_ood.png")  # fmt: skip
    _plot(plot, scores, kinds)
    print(f"plot: {plot}")
    return 0


def _print_tables(res: dict) -> None:
    print(f"\n{'out-of-scope family':22} {'n':>5} {'AUROC':>6} {'flagged':>8} {'answered':>9}")
    for name, f in res["ood"]["families"].items():
        tag = "" if f["tuned_on"] else "  (held out)"
        print(f"{name:22} {f['n']:5d} {f['auroc']:6.3f} {f['flagged_rate']:8.3f} "
              f"{f['answered_rate']:9.3f}{tag}")  # fmt: skip
    o = res["ood"]
    print(f"{'all families':22} {'':5} {o['auroc_min']:6.3f} {'':8} {o['answered_rate']:9.3f}"
          "   (AUROC: the worst family)")  # fmt: skip
    print(f"\nin-scope false alarms: held-out {res['in_dist']['false_alarm_rate']:.3f}, "
          f"hard {res['in_dist']['hard_false_alarm_rate']:.3f}")
    print(f"\n{'camera fault':14} {'answered':>9} {'conf. wrong':>11} {'flagged':>8} "
          f"{'mild acc':>9}")
    for k, d in res["degraded"]["kinds"].items():
        tag = "" if d["tuned_on"] else "  (held out)"
        print(f"{k:14} {d['answered_rate']:9.3f} {d['confidently_wrong_rate']:11.3f} "
              f"{d['flagged_rate']:8.3f} {d['mild_accuracy']:9.3f}{tag}")  # fmt: skip
    print(f"\n{'cascade':8} {'edge':>6} {'cloud':>6} {'cascade':>8} {'/cloud':>7} {'escal.':>7} "
          f"{'refused':>8}")  # fmt: skip
    for k in ("heldout", "hard"):
        d = res[k]
        print(f"{k:8} {d['edge_acc']:6.3f} {d['cloud_acc']:6.3f} {d['cascade_acc']:8.3f} "
              f"{d['cascade_over_cloud']:7.3f} {d['escalated']:7.3f} {d['refused']:8.3f}")
    ov = res["overhead"]
    print(f"\noverhead: out-of-scope score {ov['ood_ms_p50']:.3f} ms p50 vs image TTFT "
          f"{ov['image_ttft_ms_p50']:.2f} ms p50 ({100 * ov['ood_over_ttft']:.1f}%)")


def _plot(path: Path, scores: dict[str, np.ndarray], kinds: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(scores)
    a.boxplot([np.log10(np.maximum(scores[n], 1e-3)) for n in names], vert=False,
              tick_labels=names, showfliers=True)  # fmt: skip
    a.axvline(0.0, color="r", lw=1, ls="--", label="threshold (score 1.0)")
    a.set_xlabel("log10 out-of-scope score")
    a.set_title("out-of-scope score by family (INT4 edge)")
    a.legend(fontsize=8)
    ks = list(kinds)
    x = np.arange(len(ks))
    b.bar(x - 0.2, [kinds[k]["answered_rate"] for k in ks], 0.4, label="answered at the edge")
    b.bar(x + 0.2, [kinds[k]["confidently_wrong_rate"] for k in ks], 0.4,
          label="answered and wrong")  # fmt: skip
    b.axhline(0.05, color="r", lw=1, ls="--")
    b.set_xticks(x, ks, rotation=30, ha="right")
    b.set_ylim(0, 1)
    b.set_title("camera faults (half mild, half severe)")
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
