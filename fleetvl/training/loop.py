"""The training loop: batches, loss on answer tokens, checkpoints that resume, evaluation."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fleetvl.training.data import IGNORE, FleetSet, patchify
from fleetvl.vlm.image import ImageConfig

__all__ = ["TrainConfig", "Trainer", "exact_match"]


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ckpt_every: int = 500
    eval_every: int = 0  # exact match on (up to 512 questions of) the eval set; 0 = never
    log_every: int = 50
    seed: int = 0
    overfit: bool = False  # every step sees the same first batch (the smoke test)


def collate(
    data: FleetSet, idx: np.ndarray, device: torch.device, pad_id: int, cfg: ImageConfig
) -> dict[str, Any]:
    """Model inputs for samples ``idx``: right-padded ids, labels, MRoPE positions, pixels."""
    seqs = [data.seqs[i] for i in idx]
    length = max(len(s.input_ids) for s in seqs)
    b = len(seqs)
    ids = np.full((b, length), pad_id, dtype=np.int64)
    labels = np.full((b, length), IGNORE, dtype=np.int64)
    mask = np.zeros((b, length), dtype=np.int64)
    pos = np.zeros((3, b, length), dtype=np.int64)
    for k, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[k, :n] = s.input_ids
        labels[k, :n] = s.labels
        mask[k, :n] = 1
        pos[:, k, :n] = s.positions
    images = torch.from_numpy(data.images[idx]).to(device, non_blocking=True)
    pixel_values = patchify(images, cfg)
    p = cfg.patch_size
    grid = torch.tensor([[1, images.shape[1] // p, images.shape[2] // p]] * b, device=device)
    t = {
        k: torch.from_numpy(v).to(device)
        for k, v in {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": pos,
        }.items()
    }
    # MRoPE positions are given, so transformers' per-sample Python position loop never runs.
    t.update(pixel_values=pixel_values, image_grid_thw=grid, use_cache=False)
    return t


def _answer_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: does greedy decoding reproduce the whole answer (and its end token)?

    Teacher-forced argmax along the gold answer equals greedy generation's exact match: the
    first wrong argmax is where greedy decoding would leave the gold answer.
    """
    pred = logits[:, :-1].argmax(-1)
    gold = labels[:, 1:]
    scored = gold != IGNORE
    return ((pred == gold) | ~scored).all(-1)


def exact_match(
    model: torch.nn.Module,
    data: FleetSet,
    device: torch.device,
    pad_id: int,
    cfg: ImageConfig,
    batch: int = 128,
) -> dict[str, float]:
    """Exact-match accuracy overall and per task."""
    model.eval()
    hits = np.zeros(len(data), dtype=bool)
    with torch.no_grad(), _autocast(device):
        for s in range(0, len(data), batch):
            idx = np.arange(s, min(s + batch, len(data)))
            inputs = collate(data, idx, device, pad_id, cfg)
            labels = inputs.pop("labels")
            out = model(**inputs)
            hits[idx] = _answer_hits(out.logits.float(), labels).cpu().numpy()
    model.train()
    tasks = np.asarray(data.tasks)
    res = {"all": float(hits.mean())}
    for t in sorted(set(data.tasks)):
        res[t] = float(hits[tasks == t].mean())
    return res


def _autocast(device: torch.device) -> torch.autocast:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Trainer:
    """Trains ``model`` on ``data``; state is saved to ``state_path`` and resumed from it."""

    def __init__(
        self,
        model: torch.nn.Module,
        data: FleetSet,
        cfg: TrainConfig,
        *,
        device: torch.device,
        pad_id: int,
        image_cfg: ImageConfig,
        state_path: Path,
        say: Callable[[str], None] = print,
        eval_set: FleetSet | None = None,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.device, self.pad_id, self.image_cfg = device, pad_id, image_cfg
        self.state_path = state_path
        self.say = say
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            fused=device.type == "cuda",
        )
        self.step = 0
        self.losses: list[float] = []
        self.val_curve: list[tuple[int, float]] = []
        self.eval_set = eval_set
        self.rng = np.random.default_rng(cfg.seed)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        frac = (step - c.warmup) / max(1, c.steps - c.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * cos)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        """Model, optimizer, step and sampler state, written atomically."""
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "losses": self.losses,
                "val_curve": self.val_curve,
                "rng": self.rng.bit_generator.state,
                "config": asdict(self.cfg),
            },
            tmp,
        )
        os.replace(tmp, self.state_path)

    def load(self) -> bool:
        """Resume from ``state_path`` if it exists; returns whether it did."""
        if not self.state_path.exists():
            return False
        state: dict[str, Any] = torch.load(
            self.state_path, map_location=self.device, weights_only=False
        )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.val_curve = [tuple(x) for x in state.get("val_curve", [])]
        self.rng.bit_generator.state = state["rng"]
        self.say(f"resumed from {self.state_path} at step {self.step}")
        return True

    # -- loop -------------------------------------------------------------------------------

    def _batch_indices(self) -> np.ndarray:
        n = len(self.data)
        if self.cfg.overfit:
            return np.arange(min(self.cfg.batch_size, n))
        return self.rng.choice(n, size=min(self.cfg.batch_size, n), replace=False)

    def _flush(self, pending: list[torch.Tensor]) -> None:
        if pending:
            self.losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def train(self, until: int | None = None) -> list[float]:
        """Run to step ``until`` (default: the configured total); returns the loss per step."""
        end = min(until or self.cfg.steps, self.cfg.steps)
        self.model.train()
        t0 = time.perf_counter()
        start = self.step
        pending: list[torch.Tensor] = []
        while self.step < end:
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step)
            inputs = collate(
                self.data, self._batch_indices(), self.device, self.pad_id, self.image_cfg
            )
            with _autocast(self.device):
                loss = self.model(**inputs).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.step += 1
            # Kept on the device until a log line: a float() per step would stall the GPU.
            pending.append(loss.detach())
            if self.step % self.cfg.log_every == 0 or self.step == end:
                self._flush(pending)
                rate = (self.step - start) / (time.perf_counter() - t0)
                recent = float(np.mean(self.losses[-self.cfg.log_every :]))
                eta = (self.cfg.steps - self.step) / max(rate, 1e-9)
                self.say(
                    f"step {self.step}/{self.cfg.steps} loss {recent:.4f} "
                    f"lr {self.lr_at(self.step):.2e} {rate:.2f} steps/s eta {eta:.0f}s"
                )
            if (
                self.eval_set is not None
                and self.cfg.eval_every
                and (self.step % self.cfg.eval_every == 0)
            ):
                acc = exact_match(
                    self.model, self.eval_set, self.device, self.pad_id, self.image_cfg
                )["all"]
                self.val_curve.append((self.step, acc))
                self.say(f"step {self.step} val exact match {acc:.3f}")
            if self.step % self.cfg.ckpt_every == 0 or self.step == end:
                self._flush(pending)
                self.save()
        return self.losses
