"""The training loop: batches, loss on answer tokens, checkpoints that resume, evaluation."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch

from fleetvl.vlm.image import ImageConfig
from fleetvl_tools.training.data import IGNORE, FleetSet, patchify

__all__ = ["TrainConfig", "Trainer", "exact_match"]



class TrainState(TypedDict):
    """What :meth:`Trainer.save` writes (``val_curve`` and ``steps``: absent from older
    states)."""

    model: dict[str, torch.Tensor]
    opt: dict[str, object]
    step: int
    losses: list[float]
    val_curve: NotRequired[list[tuple[int, float]]]
    rng: dict[str, object]
    config: dict[str, object]
    steps: NotRequired[int]


class ModelInputs(TypedDict, total=False):
    """The model's forward kwargs for one batch (``labels`` popped to score without loss)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    image_grid_thw: torch.Tensor
    pixel_values: torch.Tensor
    use_cache: bool


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
    # Wall-clock seconds for this run's steps (0 = none): the total is cut to what fits at the
    # measured step rate (first after 50 steps, before warmup ends, so the cosine schedule
    # still decays to its floor; then re-measured every 250), and the run stops at the limit.
    time_budget_s: float = 0.0


def host_batch(data: FleetSet, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """The host half of :func:`collate` (right-padded ids, labels, MRoPE positions, images):
    safe to run in a thread while the device works on the previous step."""
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
    host = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": pos,
        "images": data.images[idx],
    }
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in host.items()}
    if torch.cuda.is_available():
        out = {k: v.pin_memory() for k, v in out.items()}  # lets the copies overlap compute
    return out


def to_device(
    host: dict[str, torch.Tensor], device: torch.device, cfg: ImageConfig
) -> ModelInputs:
    """Model inputs on ``device`` from :func:`host_batch`'s tensors (pixels patchified there)."""
    moved = {k: v.to(device, non_blocking=True) for k, v in host.items()}
    images = moved["images"]
    b = images.shape[0]
    p = cfg.patch_size
    return {
        "input_ids": moved["input_ids"],
        "labels": moved["labels"],
        "attention_mask": moved["attention_mask"],
        "position_ids": moved["position_ids"],
        "image_grid_thw": torch.tensor(
            [[1, images.shape[1] // p, images.shape[2] // p]] * b, device=device
        ),
        "pixel_values": patchify(images, cfg),
        # MRoPE positions are given, so transformers' per-sample Python position loop never
        # runs.
        "use_cache": False,
    }


def collate(
    data: FleetSet, idx: np.ndarray, device: torch.device, pad_id: int, cfg: ImageConfig
) -> ModelInputs:
    """Model inputs for samples ``idx``: right-padded ids, labels, MRoPE positions, pixels."""
    return to_device(host_batch(data, idx, pad_id), device, cfg)


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
        self._rng_before_draw: Mapping[str, object] | None = None

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
                "rng": self._rng_before_draw or self.rng.bit_generator.state,
                "config": asdict(self.cfg),
                "steps": self.cfg.steps,
            },
            tmp,
        )
        os.replace(tmp, self.state_path)

    def load(self) -> bool:
        """Resume from ``state_path`` if it exists; returns whether it did."""
        if not self.state_path.exists():
            return False
        state: TrainState = torch.load(
            self.state_path, map_location=self.device, weights_only=False
        )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.val_curve = [(step, loss) for step, loss in state.get("val_curve", [])]
        self.rng.bit_generator.state = state["rng"]
        # A budget-cut total is part of the run: resuming keeps its schedule.
        self.cfg.steps = min(self.cfg.steps, int(state.get("steps", self.cfg.steps)))
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
        # The next batch is assembled on the host while the device runs this one. Indices are
        # drawn here in step order, and a checkpoint keeps the sampler state from before the
        # batch drawn ahead, so a resumed run sees the same batches.
        with ThreadPoolExecutor(1, thread_name_prefix="batch") as prefetch:
            self._loop(end, prefetch)
        return self.losses

    def _draw(self) -> np.ndarray:
        self._rng_before_draw = self.rng.bit_generator.state
        return self._batch_indices()

    def _loop(self, end: int, prefetch: ThreadPoolExecutor) -> None:
        t0 = time.perf_counter()
        start = self.step
        pending: list[torch.Tensor] = []
        timed_from: tuple[int, float] | None = None
        nxt = prefetch.submit(host_batch, self.data, self._draw(), self.pad_id)
        while self.step < end:
            if self.cfg.time_budget_s and self.step == start + 10:
                timed_from = (self.step, time.perf_counter())  # after CUDA/autotune warm-up
            timed = self.step - timed_from[0] if timed_from else 0
            if timed_from and (timed in (40, 120) or (timed > 0 and timed % 250 == 0)):
                end = self._fit_budget(timed_from, t0, end)
                if self.step >= end:
                    self._flush(pending)
                    self.save()
                    break
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step)
            host = nxt.result()
            nxt = prefetch.submit(host_batch, self.data, self._draw(), self.pad_id)
            inputs = to_device(host, self.device, self.image_cfg)
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
                )
                self.val_curve.append((self.step, acc["all"]))
                self.say(
                    f"step {self.step} val exact match "
                    + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
                )
            if self.step % self.cfg.ckpt_every == 0 or self.step == end:
                self._flush(pending)
                self.save()

    def _fit_budget(self, timed_from: tuple[int, float], t0: float, end: int) -> int:
        """Cut the total steps to what the time budget allows at the step rate measured so far
        (evaluations and checkpoints included); called early and again every 250 steps, since
        a rate read in the first seconds can be optimistic. Past the budget, stop here."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        per_step = (now - timed_from[1]) / (self.step - timed_from[0])
        left = self.cfg.time_budget_s - (now - t0)
        fits = self.step + max(0, int(left / (per_step * 1.05)))
        if fits <= self.step:
            self.say(
                f"time budget {self.cfg.time_budget_s:.0f}s used up: finishing at step {self.step}"
            )
            self.cfg.steps = self.step
        elif fits < self.cfg.steps:
            self.say(
                f"time budget {self.cfg.time_budget_s:.0f}s at {per_step * 1000:.1f} ms/step: "
                f"training {fits} steps instead of {self.cfg.steps}"
            )
            self.cfg.steps = fits
        return min(end, self.cfg.steps)
