"""Edge -> cloud cascade on fleet questions: accuracy, gate AUROC, routing curves, APGR.

    python benchmarks/cascade.py [--quick] [--json PATH] [--plot PATH]
        [--edge DIR] [--cloud DIR] [--n-val N] [--n-test N]

On the test split of the fleet VQA generator: edge accuracy per bundle precision (fp32, int8,
int4; real export + ONNX Runtime edge engine), cloud accuracy (cloud worker engine), gate
AUROC per signal and precision (token aggregates, entropy, margin, and logistic probes on the
decoder's final hidden state trained on the validation split), the accuracy vs % escalated
curve of every signal against random routing and the oracle, APGR, the escalation needed to
recover 50% / 80% of the edge -> cloud gap and to reach 95% of cloud accuracy, and a
threshold calibrated on validation per precision, applied to test.

Default models: the shipped ``models/fleet-edge`` and ``models/fleet-cloud``. ``--quick``
without them trains both for a few CPU steps first: the path is real, the numbers are not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._artifacts import finite  # noqa: E402
from benchmarks._cascade_runs import (  # noqa: E402
    Answers,
    export_bundles,
    quick_models,
    run_cloud,
    run_edge,
)
from fleetvl.vlm.cascade_metrics import (  # noqa: E402
    CascadeCurve,
    cascade_curve,
    oracle_scores,
    random_curve,
)
from fleetvl.vlm.gate_signals import TOKEN_SIGNALS, HiddenProbe, auroc, token_signal  # noqa: E402
from fleetvl_tools.fleetdata import generate  # noqa: E402

PRECISIONS = ["fp32", "int8", "int4"]
CACHE = ROOT / ".cache" / "bench" / "cascade"
FRACTIONS = (0.1, 0.2, 0.3, 0.35, 0.5)


def _token_features(confs: list[dict]) -> np.ndarray:
    rows = []
    for c in confs:
        empty = c["num_tokens"] == 0
        rows.append(
            [0.0 if empty else v for v in (token_signal(n, c) for n in TOKEN_SIGNALS)]
            + [float(empty)]
        )
    return np.asarray(rows)


def _probe_features(ans: Answers, kind: str) -> np.ndarray:
    assert ans.hidden is not None
    if kind == "hidden_probe":
        return ans.hidden
    return np.hstack([ans.hidden, _token_features(ans.confidence)])


def signal_scores(val: Answers, test: Answers) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(val scores, test scores) per signal; probes are fit on all of val for test."""
    out = {}
    for name in TOKEN_SIGNALS:
        out[name] = tuple(
            np.array([token_signal(name, c) for c in a.confidence]) for a in (val, test)
        )
    for kind in ("hidden_probe", "hidden_token_probe"):
        xv, xt = _probe_features(val, kind), _probe_features(test, kind)
        if val.ok.all() or not val.ok.any():
            const = float(val.ok.mean())
            out[kind] = (np.full(len(xv), const), np.full(len(xt), const))
            continue
        probe = HiddenProbe.fit(xv, val.ok)
        out[kind] = (HiddenProbe.out_of_fold(xv, val.ok), probe.predict(xt))
    return out


def curve_figures(curve: CascadeCurve, cloud_acc: float) -> dict:
    return {
        "apgr": curve.apgr(),
        "escalated_fraction_to_recover_50pct_gap": curve.escalation_to_recover(0.5),
        "escalated_fraction_to_recover_80pct_gap": curve.escalation_to_recover(0.8),
        "escalated_fraction_to_reach_95pct_cloud_accuracy": curve.escalation_to_reach(
            0.95 * cloud_acc
        ),
        "accuracy_at_escalated_fraction": {str(f): curve.at(f) for f in FRACTIONS},
    }


def calibrate(val_scores, val_edge, val_cloud, test_scores, test_edge, test_cloud) -> dict:
    """Threshold reaching 95% of cloud accuracy on val, then applied to test as is."""
    vc = cascade_curve(val_scores, val_edge.ok, val_cloud.ok)
    f = vc.escalation_to_reach(0.95 * vc.cloud_accuracy)
    if np.isnan(f):
        f = 1.0
    k = int(round(f * len(val_scores)))
    s = np.sort(val_scores)
    if k == 0:
        thr = -np.inf
    elif k >= len(s):
        thr = np.inf
    else:
        thr = (s[k - 1] + s[k]) / 2 if np.isfinite(s[k - 1]) else s[k] - 1e-9
    esc = test_scores < thr
    acc = float(np.where(esc, test_cloud.ok, test_edge.ok).mean())
    return {
        "threshold": float(thr),
        "val_escalated_fraction": float(f),
        "test_escalated_fraction": float(esc.mean()),
        "test_accuracy": acc,
        "test_accuracy_over_cloud": acc / max(test_cloud.ok.mean(), 1e-9),
    }


def plot(path: Path, curves: dict, cloud_acc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.6), squeeze=False)
    for ax, (prec, named) in zip(axes[0], curves.items(), strict=True):
        for name, c in named.items():
            style = {"random": ":", "oracle": "--"}.get(name, "-")
            width = 2.2 if name in ("random", "oracle") else 1.2
            ax.plot(100 * c.escalated, 100 * c.accuracy, style, lw=width, label=name)
        ax.axhline(100 * cloud_acc, color="k", lw=0.8)
        ax.axhline(95 * cloud_acc, color="grey", lw=0.8, ls="--")
        ax.axvline(35, color="grey", lw=0.6, ls=":")
        ax.set_title(f"edge {prec} -> cloud")
        ax.set_xlabel("% of questions escalated to the cloud")
        ax.set_ylabel("cascade accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:5.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few questions; trains tiny models")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--plot", default=None, help="PNG of the curves (default: JSON path .png)")
    ap.add_argument("--edge", default=str(ROOT / "models" / "fleet-edge"))
    ap.add_argument("--cloud", default=str(ROOT / "models" / "fleet-cloud"))
    ap.add_argument("--n-val", type=int, default=None, help="default 600 (quick: 48)")
    ap.add_argument("--n-test", type=int, default=None, help="default 1000 (quick: 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="edge intra-op threads (0: cores)")
    args = ap.parse_args()
    n_val = args.n_val or (48 if args.quick else 600)
    n_test = args.n_test or (48 if args.quick else 1000)
    edge_hf, cloud_hf = Path(args.edge), Path(args.cloud)
    trained = (edge_hf / "config.json").exists() and (cloud_hf / "config.json").exists()
    if not trained:
        if not args.quick:
            print(
                f"error: no trained models at {edge_hf} and {cloud_hf}; train them with "
                "`fleetvl train` (see benchmarks/README.md) or run with --quick",
                file=sys.stderr,
            )
            return 2
        print("no trained models: training under-trained ones for the quick path", flush=True)
        edge_hf, cloud_hf = quick_models(CACHE)
    t0 = time.perf_counter()
    bundles = export_bundles(edge_hf, PRECISIONS, CACHE)
    val = list(generate("val", n_val, seed=args.seed))
    test = list(generate("test", n_test, seed=args.seed))
    print(f"{n_val} val and {n_test} test questions; cloud model {cloud_hf}", flush=True)
    cloud = {"val": run_cloud(cloud_hf, val), "test": run_cloud(cloud_hf, test)}
    print(
        f"cloud: test accuracy {cloud['test'].ok.mean():.3f} ({cloud['test'].seconds:.1f}s)",
        flush=True,
    )
    edge: dict[str, dict[str, Answers]] = {}
    for p, b in bundles.items():
        edge[p] = {"val": run_edge(b, val, args.threads), "test": run_edge(b, test, args.threads)}
        print(
            f"edge {p}: test accuracy {edge[p]['test'].ok.mean():.3f} "
            f"({edge[p]['test'].seconds:.1f}s)",
            flush=True,
        )

    cloud_acc = float(cloud["test"].ok.mean())
    res: dict = {
        "config": {
            "quick": args.quick,
            "trained_models": trained,
            "edge_model": str(edge_hf),
            "cloud_model": str(cloud_hf),
            "n_val": n_val,
            "n_test": n_test,
            "seed": args.seed,
            "max_tokens": 8,
            "decoding": "greedy",
        },
        "cloud": {
            "test_accuracy": cloud_acc,
            "val_accuracy": float(cloud["val"].ok.mean()),
            "test_accuracy_per_task": cloud["test"].per_task,
            "test_seconds": cloud["test"].seconds,
        },
        "edge": {},
        "gate_auroc": {},
        "routing": {},
        "calibration": {},
        "best_signal": {},
    }
    curves_for_plot: dict[str, dict[str, CascadeCurve]] = {}
    for p in PRECISIONS:
        ev, et = edge[p]["val"], edge[p]["test"]
        res["edge"][p] = {
            "test_accuracy": float(et.ok.mean()),
            "val_accuracy": float(ev.ok.mean()),
            "test_accuracy_per_task": et.per_task,
            "test_seconds_per_question": et.seconds / len(test),
        }
        scores = signal_scores(ev, et)
        res["gate_auroc"][p] = {n: auroc(st, et.ok) for n, (_sv, st) in scores.items()}
        routing = {
            n: curve_figures(cascade_curve(st, et.ok, cloud["test"].ok), cloud_acc)
            for n, (_sv, st) in scores.items()
        }
        orc = cascade_curve(oracle_scores(et.ok, cloud["test"].ok), et.ok, cloud["test"].ok)
        routing["oracle"] = curve_figures(orc, cloud_acc)
        routing["random"] = curve_figures(random_curve(et.ok, cloud["test"].ok), cloud_acc)
        res["routing"][p] = routing
        # The gate's signal is picked on validation (probes by out-of-fold scores).
        val_auc = {n: auroc(sv, ev.ok) for n, (sv, _st) in scores.items()}
        pick = max(val_auc, key=lambda n: -1.0 if np.isnan(val_auc[n]) else val_auc[n])
        res["best_signal"][p] = {
            "by_val_auroc": pick,
            "val_auroc": val_auc[pick],
            "test_auroc": res["gate_auroc"][p][pick],
        }
        res["calibration"][p] = {
            "signal": pick,
            **calibrate(scores[pick][0], ev, cloud["val"], scores[pick][1], et, cloud["test"]),
        }
        curves_for_plot[p] = {
            n: cascade_curve(scores[n][1], et.ok, cloud["test"].ok)
            for n in (
                "mean_logprob",
                "min_prob",
                "neg_mean_entropy",
                "min_margin",
                "hidden_probe",
                "hidden_token_probe",
            )
        }
        curves_for_plot[p]["random"] = random_curve(et.ok, cloud["test"].ok)
        curves_for_plot[p]["oracle"] = orc

    i4 = res["routing"]["int4"]
    best4 = res["best_signal"]["int4"]["by_val_auroc"]
    best_auc = max(
        (v for v in res["gate_auroc"]["int4"].values() if not np.isnan(v)), default=float("nan")
    )
    res["targets_int4"] = {
        "cloud_accuracy": cloud_acc,
        "cloud_accuracy_at_least_0.90": cloud_acc >= 0.90,
        "edge_accuracy": res["edge"]["int4"]["test_accuracy"],
        "edge_below_cloud": res["edge"]["int4"]["test_accuracy"] < cloud_acc,
        "best_gate_auroc": best_auc,
        "best_gate_auroc_at_least_0.85": bool(best_auc >= 0.85),
        "gate_signal": best4,
        "escalated_fraction_to_reach_95pct_cloud": i4[best4][
            "escalated_fraction_to_reach_95pct_cloud_accuracy"
        ],
    }
    f95 = res["targets_int4"]["escalated_fraction_to_reach_95pct_cloud"]
    res["targets_int4"]["reaches_95pct_cloud_within_35pct_escalated"] = bool(f95 <= 0.35)
    res["wall_seconds"] = time.perf_counter() - t0

    print(f"\ncloud accuracy {_pct(cloud_acc)}%   (test n={n_test}; fractions below in %)")
    print(
        f"{'edge':6} {'acc':>6} {'gate (val pick)':22} {'AUROC':>6} {'APGR':>6} "
        f"{'esc50':>6} {'esc80':>6} {'esc95c':>6} {'calib esc':>9} {'calib acc':>9}"
    )
    for p in PRECISIONS:
        b = res["best_signal"][p]["by_val_auroc"]
        r, c = res["routing"][p][b], res["calibration"][p]
        print(
            f"{p:6} {_pct(res['edge'][p]['test_accuracy']):>6} {b:22} "
            f"{res['gate_auroc'][p][b]:6.3f} {r['apgr']:6.3f} "
            f"{_pct(r['escalated_fraction_to_recover_50pct_gap']):>6} "
            f"{_pct(r['escalated_fraction_to_recover_80pct_gap']):>6} "
            f"{_pct(r['escalated_fraction_to_reach_95pct_cloud_accuracy']):>6} "
            f"{_pct(c['test_escalated_fraction']):>9} {_pct(c['test_accuracy']):>9}"
        )
    print("\nint4 gate signals:  AUROC   APGR  esc95c")
    for n in [*res["gate_auroc"]["int4"], "oracle", "random"]:
        auc = res["gate_auroc"]["int4"].get(n, float("nan"))
        r = i4[n]
        print(
            f"  {n:20} {auc:6.3f} {r['apgr']:6.3f} "
            f"{_pct(r['escalated_fraction_to_reach_95pct_cloud_accuracy']):>6}"
        )
    print("targets (int4):", json.dumps(finite(res["targets_int4"])))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(finite(res), indent=2) + "\n")
        print(f"wrote {path}")
    plot_path = (
        Path(args.plot)
        if args.plot
        else (Path(args.json).with_suffix(".png") if args.json else CACHE / "cascade.png")
    )
    plot(plot_path, curves_for_plot, cloud_acc)
    print(f"plot: {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
