"""A simulated model server with a known latency distribution (a fake, named as one).

For the router's tests and benchmarks, which need backends whose timing is known exactly:
TTFT = ``ttft_s`` (+ ``per_prompt_token_s`` per prompt token) and ``per_token_s`` per output
token, each with optional lognormal jitter; the answer is canned text. Never used to serve
users: configs name it ``type: simulated``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator

from router.backends import BackendKind, BackendRequest, Delta, Event, Final

__all__ = ["SimulatedBackend"]


class SimulatedBackend:
    def __init__(
        self,
        name: str,
        *,
        kind: BackendKind = "cloud",
        site: str | None = None,
        slots: int = 1,
        models: tuple[str, ...] = (),
        ttft_s: float = 0.0,
        per_prompt_token_s: float = 0.0,
        per_token_s: float = 0.0,
        jitter: float = 0.0,
        output_tokens: int = 4,
        answer: str = "ok",
        confidence: float = 0.9,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.site = site
        self.slots = slots
        self.models = models
        self.ttft_s = ttft_s
        self.per_prompt_token_s = per_prompt_token_s
        self.per_token_s = per_token_s
        self.jitter = jitter
        self.output_tokens = output_tokens
        self.answer = answer
        self.confidence = confidence
        self._rng = random.Random(seed)
        self.served: list[BackendRequest] = []  # what reached this backend, for assertions

    def _noise(self) -> float:
        return self._rng.lognormvariate(0.0, self.jitter) if self.jitter else 1.0

    async def generate(self, req: BackendRequest) -> AsyncGenerator[Event, None]:
        self.served.append(req)
        t0 = time.monotonic()
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 4 for m in req.chat.messages)
        ttft = (self.ttft_s + self.per_prompt_token_s * prompt_tokens) * self._noise()
        if ttft:
            await asyncio.sleep(ttft)
        n = min(self.output_tokens, req.chat.params.max_tokens)
        words = (self.answer + " ") * n
        step = max(1, len(words) // max(n, 1))
        texts = [words[i * step : (i + 1) * step] for i in range(n)]
        finish = "length" if n < self.output_tokens else "stop"
        ttft_done = time.monotonic() - t0
        for i, text in enumerate(texts):
            if req.cancel.is_set():
                finish = "cancelled"
                texts = texts[:i]
                break
            if i and self.per_token_s:
                await asyncio.sleep(self.per_token_s * self._noise())
            yield Delta(text, i, self.confidence)
        yield Final(
            text="".join(texts),
            finish_reason=finish,
            confidence=self.confidence,
            confidence_signal="simulated",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(texts),
            ttft_s=ttft_done,
        )

    async def close(self) -> None:
        return None
