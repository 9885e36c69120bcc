"""Training data for the fleet models: rendered samples as uint8 images plus token ids.

Images stay uint8 until the batch is on the device, where :func:`patchify` does the
normalize-and-patchify of :func:`fleetvl.vlm.image.preprocess` (same layout, tested for
parity), so a 100k-sample set is 8.5 GB of bytes, not 70 GB of float patches.

Imports only NumPy, Pillow, tokenizers, Jinja2 and torch: the GPU box has no serving stack.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fleetvl.vlm.image import ImageConfig
from fleetvl.vlm.mrope import rope_index
from fleetvl.vlm.processor import QwenVLProcessor
from fleetvl_tools.fleetdata.generator import SPLITS, generate

if TYPE_CHECKING:
    import torch

__all__ = ["FleetSet", "Tokenized", "build_set", "patchify", "tokenize"]

IGNORE = -100


@dataclass
class Tokenized:
    """One training sequence: prompt + answer + end token, loss on the answer part only."""

    input_ids: np.ndarray  # int64 [S]
    labels: np.ndarray  # int64 [S], IGNORE on the prompt
    positions: np.ndarray  # int64 [3, S] MRoPE positions


@dataclass
class FleetSet:
    """A split in memory: images, sequences and the ground truth strings."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    seqs: list[Tokenized]
    answers: list[str]
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.seqs)

    def head(self, n: int) -> FleetSet:
        """The first ``n`` samples (a quicker evaluation set)."""
        return FleetSet(self.images[:n], self.seqs[:n], self.answers[:n], self.tasks[:n])


def messages(question: str) -> list[dict]:
    """The chat the engines build for one image and one question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def tokenize(
    proc: QwenVLProcessor, question: str, answer: str, grid: tuple[int, int, int]
) -> Tokenized:
    """Token ids of the prompt exactly as the edge engine encodes it, then the answer."""
    prompt_text = proc.render(messages(question))
    ids = proc.tokenizer.encode(prompt_text, add_special_tokens=False).ids
    n_img = grid[0] * grid[1] * grid[2] // (proc.merge_size**2)
    pad = ids.index(proc.image_token_id)
    prompt = ids[:pad] + [proc.image_token_id] * n_img + ids[pad + 1 :]
    end = proc.tokenizer.token_to_id("<|im_end|>")
    if end is None:
        raise ValueError("the tokenizer has no <|im_end|> token")
    ans = proc.tokenizer.encode(answer, add_special_tokens=False).ids + [end]
    full = np.asarray(prompt + ans, dtype=np.int64)
    labels = np.full_like(full, IGNORE)
    labels[len(prompt) :] = ans
    positions, _ = rope_index(full, proc.image_token_id, [grid], proc.merge_size)
    return Tokenized(full, labels, positions.astype(np.int64))


def _render_chunk(
    args: tuple[str, int, int, int, int, tuple[str, ...] | None, float],
) -> tuple[np.ndarray, list, list, list]:
    split, seed, start, n, size, mix, faults = args
    imgs, qs, ans, tasks = [], [], [], []
    for s in generate(split, n, seed=seed, size=size, start=start, tasks=mix, faults=faults):
        imgs.append(np.asarray(s.image, dtype=np.uint8))
        qs.append(s.question)
        ans.append(s.answer)
        tasks.append(s.task)
    return np.stack(imgs), qs, ans, tasks


def build_set(
    model_dir: str | Path,
    split: str,
    n: int,
    *,
    seed: int = 0,
    size: int = 168,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] = print,
    render_only: bool = False,
    task_mix: Sequence[str] | None = None,
    faults: float = 0.0,
) -> FleetSet:
    """Render ``n`` samples of ``split`` (in parallel) and tokenize them for ``model_dir``.

    With ``cache_dir``, rendered images and texts are saved there and reused by a later call
    with the same split, seed, size and count (the edge and cloud runs share one rendering).
    ``render_only`` skips tokenization (the returned set has no sequences). ``task_mix``
    names the tasks samples rotate through; a task named twice is drawn twice as often.
    ``faults`` is the share of samples with a mild camera fault (still answerable: see
    :mod:`fleetvl_tools.fleetdata.faults`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    cached = None
    if cache_dir is not None:
        mix_tag = (
            ""
            if not task_mix
            else "-mix" + hashlib.sha256(",".join(task_mix).encode()).hexdigest()[:8]
        )
        fault_tag = f"-f{faults:g}" if faults else ""
        stem = Path(cache_dir) / f"{split}-s{seed}-n{n}-px{size}{mix_tag}{fault_tag}"
        if (stem.with_suffix(".json")).exists():
            meta = json.loads(stem.with_suffix(".json").read_text())
            # Memory-mapped: two training processes share one copy in the page cache.
            images = np.load(stem.with_suffix(".npy"), mmap_mode="r")
            cached = images, meta["q"], meta["a"], meta["t"]
            progress(f"{split}: reusing {n} rendered samples from {stem}.npy")
    if cached is None:
        workers = workers or max(1, min(16, (os.cpu_count() or 2) - 1))
        chunk = max(1, min(2000, -(-n // workers)))
        mix = tuple(task_mix) if task_mix else None
        jobs = [
            (split, seed, s, min(chunk, n - s), size, mix, faults) for s in range(0, n, chunk)
        ]
        parts = []
        if workers == 1 or len(jobs) == 1:
            parts = [_render_chunk(j) for j in jobs]
        else:
            with ProcessPoolExecutor(workers) as pool:
                for k, part in enumerate(pool.map(_render_chunk, jobs)):
                    parts.append(part)
                    progress(f"{split}: rendered {min((k + 1) * chunk, n)}/{n}")
        images = np.concatenate([p[0] for p in parts])
        qs = [q for p in parts for q in p[1]]
        ans = [a for p in parts for a in p[2]]
        tasks = [t for p in parts for t in p[3]]
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            np.save(stem.with_suffix(".npy"), images)
            stem.with_suffix(".json").write_text(json.dumps({"q": qs, "a": ans, "t": tasks}))
        cached = images, qs, ans, tasks
    images, qs, ans, tasks = cached
    if render_only:
        return FleetSet(images=images, seqs=[], answers=list(ans), tasks=list(tasks))
    proc = QwenVLProcessor(model_dir)
    p = proc.image_config.patch_size
    grid = (1, size // p, size // p)
    seqs = [tokenize(proc, q, a, grid) for q, a in zip(qs, ans, strict=True)]
    return FleetSet(images=images, seqs=seqs, answers=list(ans), tasks=list(tasks))


def patchify(images: torch.Tensor, cfg: ImageConfig) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` torch images -> ``pixel_values [B * gh * gw, patch_dim]``.

    The layout of :func:`fleetvl.vlm.image.preprocess` (images already at their target size),
    done on the device.
    """
    import torch

    b, hgt, wid, _ = images.shape
    x = images.permute(0, 3, 1, 2).to(torch.float32) * (1 / 255)
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(cfg.image_std, dtype=torch.float32, device=x.device)[:, None, None]
    x = (x - mean) / std
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = hgt // p, wid // p
    x = x.reshape(b, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x[:, :, :, :, :, :, None].expand(*x.shape[:6], t, p, p)
    return x.reshape(b * gh * gw, 3 * t * p * p)
