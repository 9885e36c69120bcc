"""Model runs for benchmarks/cascade.py: edge bundles per precision, the cloud model.

Each run answers a list of fleet samples and returns, per question, the answer, whether it
matches the ground truth (``fleetvl.answers.answer_matches``, the rule calibration uses), the
token confidence aggregates and (edge) the decoder's final hidden state for the probe.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetvl.answers import answer_matches
from fleetvl_tools.fleetdata import Sample

MAX_TOKENS = 8  # the longest answer ("closed", "normal", three digits) plus the end token


@dataclass
class Answers:
    text: list[str]
    ok: np.ndarray  # bool [n]
    confidence: list[dict[str, float]]
    hidden: np.ndarray | None = None  # [n, hidden]
    seconds: float = 0.0
    per_task: dict[str, float] = field(default_factory=dict)


def _answers(
    samples: list[Sample],
    texts: list[str],
    confs: list[dict[str, float]],
    hidden: np.ndarray | None,
    seconds: float,
) -> Answers:
    ok = np.array([answer_matches(t, s.answer) for t, s in zip(texts, samples, strict=True)])
    tasks = np.array([s.task for s in samples])
    per_task = {t: float(ok[tasks == t].mean()) for t in sorted(set(tasks))}
    return Answers(list(texts), ok, confs, hidden, seconds, per_task)


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def run_edge(bundle: Path, samples: list[Sample], threads: int) -> Answers:
    """Greedy answers from the edge engine (ONNX Runtime) on one bundle."""
    from edge_agent.engine import EdgeEngine, SamplingParams, SessionConfig

    engine = EdgeEngine(bundle, SessionConfig(intra_op_threads=threads, max_context=512))
    params = SamplingParams(max_tokens=MAX_TOKENS)
    texts, confs, hidden = [], [], []
    t0 = time.perf_counter()
    for s in samples:
        res = engine.generate(engine.encode(_messages(s.question), [s.image]), params)
        texts.append(res.text)
        confs.append(res.confidence.as_dict())
        hidden.append(res.last_hidden)
    return _answers(samples, texts, confs, np.stack(hidden), time.perf_counter() - t0)


def run_cloud(model_dir: Path, samples: list[Sample]) -> Answers:
    """Greedy answers from the cloud worker's batching engine (transformers)."""
    from cloud_worker.engine.engine import CloudEngine, CloudResult, EngineConfig
    from fleetvl.sampling import SamplingParams

    engine = CloudEngine(model_dir, EngineConfig(max_slots=32, max_context=256))
    try:
        params = SamplingParams(max_tokens=MAX_TOKENS)
        t0 = time.perf_counter()
        streams = [
            engine.submit(engine.encode(_messages(s.question), [s.image]), params) for s in samples
        ]
        results = []
        for stream in streams:
            results.append(next(ev for ev in stream if isinstance(ev, CloudResult)))
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    return _answers(
        samples, [r.text for r in results], [r.confidence.as_dict() for r in results], None, seconds
    )


def _digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def export_bundles(hf: Path, precisions: list[str], cache: Path) -> dict[str, Path]:
    """Edge bundles of ``hf`` per precision, built once per checkpoint digest."""
    from edge_agent.export.bundle import export_bundle

    out = {}
    for p in precisions:
        b = cache / f"{hf.name}-{_digest(hf)}" / p
        if not (b / "manifest.json").exists():
            print(f"exporting the {p} edge bundle to {b}", flush=True)
            export_bundle(hf, b, p, progress=lambda _m: None)
        out[p] = b
    return out


def calibrated_bundle(bundle: Path, n: int, cache: Path, max_tokens: int = 8) -> Path:
    """A copy of ``bundle`` calibrated as a site calibrates it, on ``n`` questions of the calib
    split (a fifth through a mild camera fault), cached by the bundle and the code that
    calibrates it."""
    import shutil

    from edge_agent.calibrate import calibrate_bundle
    from fleetvl_tools.fleetdata import write_split
    from fleetvl_tools.launch.artifacts import calibration_key

    key = calibration_key(bundle)
    out = cache / f"{bundle.parent.name}-{bundle.name}-calib{n}-{key}"
    if (out / "calibration.json").exists():
        return out
    data = cache / f"calib-data-{n}-{key}"
    if not (data / "calib.jsonl").exists():
        print(f"writing {n} calibration questions", flush=True)
        write_split(data, "calib", n, faults=0.2)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    print(f"calibrating {out.name}", flush=True)
    calibrate_bundle(out, data / "calib.jsonl", max_tokens=max_tokens, progress=print)
    return out


def quick_models(cache: Path) -> tuple[Path, Path]:
    """Under-trained fleet-edge and fleet-cloud (a few CPU steps): a real path, no accuracy."""
    from fleetvl_tools.training.train import _parser, train_model

    dirs = []
    for preset, steps in (("fleet-edge", 30), ("fleet-cloud", 30)):
        run = cache / f"quick-{preset}"
        if not (run / "model" / "config.json").exists():
            args: argparse.Namespace = _parser().parse_args([
                str(run), "--preset", preset, "--steps", str(steps), "--batch-size", "8",
                "--train-samples", "256", "--val-samples", "32", "--workers", "1",
                "--log-every", "10", "--lr", "2e-3", "--warmup", "5",
            ])  # fmt: skip
            train_model(args)
        dirs.append(run / "model")
    return dirs[0], dirs[1]
