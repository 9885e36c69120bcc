"""Train a fleet model from scratch: ``python -m fleetvl_tools.training --preset fleet-edge OUT``.

Builds the preset's checkpoint directory (tokenizer, processor files, random weights) with
:func:`fleetvl_tools.checkpoint.build_checkpoint`, trains the real transformers
``Qwen2_5_VLForConditionalGeneration`` on rendered fleet questions (loss on answer tokens,
bf16 autocast on CUDA), saves a resumable state every ``--ckpt-every`` steps, evaluates
exact-match accuracy on the validation split and writes ``OUT/model`` with
``save_pretrained`` in fp16 safetensors. Running it again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "train_model"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetvl train", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="run directory: model/, train_state.pt, metrics.json")
    p.add_argument("--preset", default="fleet-edge", help="fleet-edge | fleet-cloud")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--train-samples", type=int, default=100_000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=168)
    p.add_argument("--seed", type=int, default=0, help="data seed (weights use --seed too)")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument(
        "--eval-every", type=int, default=0, help="val exact match on 512 questions every N steps"
    )
    p.add_argument("--workers", type=int, default=0, help="render processes (0: cores - 1)")
    p.add_argument("--data-cache", default=None, help="reuse rendered samples across runs")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--overfit", action="store_true", help="train on one fixed batch (smoke)")
    p.add_argument(
        "--task-mix",
        default=None,
        help="comma-separated tasks the training samples rotate through; a task named twice "
        "is drawn twice as often (default: every task once). Validation stays uniform.",
    )
    p.add_argument(
        "--faults",
        type=float,
        default=0.0,
        help="share of training questions shown through a mildly faulty camera (blur, glare, "
        "dark, tilt, nudged view; still answerable): robustness for site cameras",
    )
    p.add_argument("--stop-at", type=int, default=None, help="stop (resumably) at this step")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds of training for this run: the step total is cut to fit (0 = no limit)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=0.0,
        help="unix time by which training must end (counts data loading too; the final "
        "evaluation and save come after it): tightens --time-budget",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start from this trained checkpoint directory instead of random weights "
        "(fresh optimizer and schedule: continues a run whose training state is gone)",
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="render the data into --data-cache and exit (then train several models at once)",
    )
    return p


def train_model(args: argparse.Namespace) -> dict:
    """Build or resume, train, evaluate and save; returns the metrics written to JSON."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from fleetvl.vlm.image import ImageConfig
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.fleetdata.generator import TASKS
    from fleetvl_tools.presets import get_preset
    from fleetvl_tools.training.data import build_set
    from fleetvl_tools.training.loop import TrainConfig, Trainer, exact_match
    from fleetvl_tools.training.packed_attention import (
        cache_vision_indices,
        use_packed_vision_attention,
    )

    def say(msg: str) -> None:
        print(f"[{args.preset}] {msg}", flush=True)  # noqa: T201 (progress lines are the UI)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_dir = out / "init"
    source = str(Path(args.init_from).resolve()) if args.init_from else f"preset {args.preset}"
    marker = init_dir / ".complete"
    if marker.exists():
        # A run folder resumes its own run; silently resuming it for a call that asks to
        # start elsewhere would train nothing new (or the wrong weights) and look fine.
        started = marker.read_text().strip()
        if started not in ("ok", source):
            raise SystemExit(
                f"{out} holds a run started from {started}; to start from {source}, "
                "use a new output folder"
            )
    else:
        shutil.rmtree(init_dir, ignore_errors=True)
        if args.init_from:
            shutil.copytree(args.init_from, init_dir)
            say(f"starting from the weights in {args.init_from}")
        else:
            build_checkpoint(get_preset(args.preset), init_dir, seed=args.seed, progress=say)
        marker.write_text(source)
    with open(init_dir / "preprocessor_config.json") as f:
        image_cfg = ImageConfig.from_preprocessor_config(json.load(f))
    with open(init_dir / "tokenizer_config.json") as f:
        pad_token = json.load(f).get("pad_token") or "<|endoftext|>"
    from tokenizers import Tokenizer

    pad_id = Tokenizer.from_file(str(init_dir / "tokenizer.json")).token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"the tokenizer in {init_dir} has no pad token {pad_token!r}")
    # Data first: rendering forks worker processes, best done before CUDA is initialized.
    t0 = time.perf_counter()
    common = {
        "render_only": args.prepare_only,
        "seed": args.seed,
        "size": args.image_size,
        "workers": args.workers,
        "cache_dir": args.data_cache,
        "progress": say,
    }
    mix = [t.strip() for t in args.task_mix.split(",")] if args.task_mix else None
    if mix and (unknown := sorted(set(mix) - set(TASKS))):
        raise SystemExit(f"--task-mix: unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    if not 0.0 <= args.faults <= 1.0:
        raise SystemExit(f"--faults {args.faults}: a share between 0 and 1")
    train = build_set(
        init_dir, "train", args.train_samples, task_mix=mix, faults=args.faults, **common
    )
    val = build_set(init_dir, "val", args.val_samples, **common)
    say(
        f"data ready in {time.perf_counter() - t0:.1f}s: {len(train.answers)} train, "
        f"{len(val.answers)} val"
    )
    if args.prepare_only:
        return {"preset": args.preset, "prepared": len(train.answers) + len(val.answers)}

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        init_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).to(device)  # type: ignore[arg-type]  # transformers types .to() as taking a model
    if not args.init_from:
        with torch.no_grad():
            # build_checkpoint randomizes q/k/v biases to stress the exporter; start at zero.
            for name, prm in model.named_parameters():
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    prm.zero_()
    # One batched attention call per vision layer instead of one per image (same result).
    use_packed_vision_attention(model)
    uncache_vision = cache_vision_indices(model)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{n_params / 1e6:.2f}M parameters on {device}")

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        eval_every=args.eval_every,
        seed=args.seed,
        overfit=args.overfit,
        time_budget_s=args.time_budget,
    )
    trainer = Trainer(
        model,
        train,
        cfg,
        device=device,
        pad_id=pad_id,
        image_cfg=image_cfg,
        state_path=out / "train_state.pt",
        say=say,
        eval_set=val.head(512),
    )
    trainer.load()
    if args.deadline:
        left = args.deadline - time.time()
        cfg.time_budget_s = min(cfg.time_budget_s or left, left)
        say(f"{left:.0f}s to the deadline")
    t1 = time.perf_counter()
    first_step = trainer.step
    trainer.train(until=args.stop_at)
    train_s = time.perf_counter() - t1
    metrics = {
        "preset": args.preset,
        "parameters": n_params,
        "step": trainer.step,
        "steps_total": cfg.steps,
        "train_seconds_this_run": round(train_s, 2),
        "seconds_per_step": round(train_s / max(1, trainer.step - first_step), 4),
        "final_loss": float(sum(trainer.losses[-20:]) / max(1, len(trainer.losses[-20:]))),
        "losses": [round(x, 5) for x in trainer.losses],
        "val_curve": trainer.val_curve,
    }
    if trainer.step < cfg.steps:
        say(f"stopped at step {trainer.step}; run the same command again to resume")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    acc = exact_match(model, val, device, pad_id, image_cfg)
    metrics["val_exact_match"] = acc
    say("val exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    use_packed_vision_attention(model, enabled=False)
    uncache_vision()
    _save_fp16(model, init_dir, out / "model")
    say(f"saved fp16 checkpoint to {out / 'model'}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _save_fp16(model, init_dir: Path, dest: Path) -> None:
    """``save_pretrained`` in fp16 next to the tokenizer and processor files of ``init_dir``."""
    import torch

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init_dir, tmp, ignore=shutil.ignore_patterns("*.safetensors", ".complete"))
    model.to(torch.float16).save_pretrained(tmp)
    model.to(torch.float32)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main(argv: Sequence[str] | None = None) -> int:
    train_model(_parser().parse_args(argv))
    return 0
