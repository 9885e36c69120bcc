"""Overlapping the host's per-token work with the next decode step on the device.

After a step the host picks, scores and streams every slot's token and runs the stop checks:
Python work that grows with the batch (~50 us a request) while the device would sit idle.
So the step's greedy choices are fed back on the device — ``tokens`` takes the argmax,
``positions`` and ``write_pos`` advance for the active slots — and the next step is launched
before the host reads the previous one's results (the overlap schedulers of vLLM v1 and
SGLang do the same). The host then processes step N while the device runs step N+1; a
request that turns out to have finished at step N costs one wasted row in step N+1.

Sampled (temperature > 0) requests need the host's choice before the next step, so a batch
with any of them runs synchronously: the host writes every slot's inputs itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cloud_worker.engine.decode_step import DecodeStep
from cloud_worker.engine.requests import EngineRequest
from fleetvl.vlm.confidence import TokenConfidence

__all__ = ["DecodePipeline", "LaunchedStep", "row_stats", "token_confidence"]


def row_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``[argmax, top-1 logprob, top-2 logprob, entropy (nats)]`` as float64, and the
    argmax as int64 (for feeding back on the device)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, 2, dim=-1)
    entropy = -(logp.exp() * logp).nansum(dim=-1)
    stats = torch.stack(
        [top.indices[:, 0].double(), top.values[:, 0].double(), top.values[:, 1].double(),
         entropy.double()], dim=-1,
    )  # fmt: skip
    return stats, top.indices[:, 0]


def token_confidence(token: int, logprob: float, stats: np.ndarray) -> TokenConfidence:
    """A chosen token's confidence from its log-probability and its row of :func:`row_stats`."""
    p1, p2 = float(np.exp(stats[1])), float(np.exp(stats[2]))
    return TokenConfidence(
        token_id=token, prob=float(np.exp(logprob)), logprob=logprob, top1_prob=p1,
        margin=p1 - p2, entropy=max(float(stats[3]), 0.0),
    )  # fmt: skip


@dataclass
class LaunchedStep:
    """A step on its way: which requests took part (by slot), and where its results land."""

    rows: list[tuple[int, EngineRequest]]  # (slot, request) as launched
    stats: torch.Tensor  # [slots, 4] float64, host side (pinned on CUDA)
    event: torch.cuda.Event | None
    sampled: dict[int, np.ndarray] = field(default_factory=dict)  # slot -> logits (sync only)


class DecodePipeline:
    def __init__(self, step: DecodeStep) -> None:
        self.step = step
        self.cache = step.cache
        dev = step.tokens.device
        slots = self.cache.slots
        self.active = torch.zeros(slots, dtype=torch.long, device=dev)
        self._active_host: list[bool] = [False] * slots
        pin = dev.type == "cuda"
        # Two host buffers: step N's results are read while step N+1's are being copied.
        self._host = [torch.zeros(slots, 4, dtype=torch.float64, pin_memory=pin) for _ in (0, 1)]
        self._turn = 0
        self._cuda = dev.type == "cuda"

    def set_slot(self, slot: int, token: int, position: int, write_pos: int) -> None:
        """A slot's next inputs from the host (a new request, or a synchronous step)."""
        self.step.tokens[slot] = token
        self.step.positions[slot] = position
        self.cache.write_pos[slot] = write_pos

    def set_active(self, mask: list[bool]) -> None:
        """Which slots advance on the device after a step (the others' positions stay put,
        so a finished request's row never writes past its slot's capacity)."""
        if mask != self._active_host:
            self.active.copy_(torch.tensor(mask, dtype=torch.long))
            self._active_host = list(mask)

    def launch(
        self, span: int, rows: list[tuple[int, EngineRequest]], sampled: list[int]
    ) -> LaunchedStep:
        """Run one step (asynchronously on CUDA), feed its greedy choices back as the next
        step's inputs, and start copying its per-row statistics to the host."""
        logits = self.step(span)
        stats, argmax = row_stats(logits)
        self.step.tokens.copy_(argmax)
        self.step.positions.add_(self.active)
        self.cache.write_pos.add_(self.active)
        host = self._host[self._turn]
        self._turn ^= 1
        host.copy_(stats, non_blocking=self._cuda)
        event = None
        if self._cuda:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            event.record()
        # Sampling needs the whole row on the host; only synchronous steps have such rows.
        rows_cpu = {s: logits[s].float().cpu().numpy() for s in sampled}
        return LaunchedStep(rows=rows, stats=host, event=event, sampled=rows_cpu)

    @staticmethod
    def results(launched: LaunchedStep) -> np.ndarray:
        """Wait for a launched step; its ``[slots, 4]`` statistics."""
        if launched.event is not None:
            launched.event.synchronize()
        return launched.stats.numpy()
