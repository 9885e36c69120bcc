"""Per-backend service-time prediction, learned online from the backend's own timings.

Model, per backend::

    TTFT    = a + b * prompt_tokens + c * image_tokens
    decode  = d * (expected_output_tokens - 1)        # the first token arrives at TTFT
    expected_output_tokens = f * max_output_tokens

``a, b, c`` are fitted by recursive least squares with a forgetting factor (old observations
fade, so a backend that slows down after a rollout is followed) starting from the priors;
``d`` and ``f`` are exponentially weighted averages. Robustness: every coefficient is kept
non-negative, a residual larger than 4x the running mean absolute residual is clipped before
it updates the fit (one GC pause or cold start must not swing the model), and the covariance
is kept symmetric positive definite and bounded, so that rounding cannot make the fit diverge
over long runs and directions the traffic never excites (e.g. image size when every image is
the same size) cannot wind up.

Warm-up: until ``warmup_observations`` timings have been observed the configured priors are
used as they are; the fit learns in the background meanwhile and takes over afterwards. A
handful of early samples, often cold starts with collinear features, predicts worse than an
operator's rough prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetvl.scheduling.items import ObservedTimings

__all__ = ["LatencyPredictor", "PredictorConfig", "ServiceEstimate"]

_KTOK = 1000.0  # features in thousands of tokens keep the three coefficients on one scale


class PredictorConfig(BaseModel):
    """Priors and learning settings of one backend's predictor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_base_s: float = Field(0.05, ge=0, description="Prior TTFT intercept a, seconds.")
    ttft_s_per_prompt_token: float = Field(
        0.0005, ge=0, description="Prior b: prefill seconds per prompt token."
    )
    ttft_s_per_image_token: float = Field(
        0.001, ge=0, description="Prior c: vision encoder + prefill seconds per image token."
    )
    decode_s_per_token: float = Field(0.03, ge=0, description="Prior d: seconds per token.")
    output_fraction: float = Field(
        1.0, gt=0, le=1, description="Prior f: share of max_output_tokens actually generated."
    )
    warmup_observations: int = Field(
        10, ge=0, description="Observations before learned values replace the priors."
    )
    forgetting: float = Field(
        0.995, gt=0.9, le=1.0, description="RLS forgetting factor; memory ~ 1/(1-x) samples."
    )
    ewma_alpha: float = Field(0.1, gt=0, le=1, description="Weight of a new decode sample.")
    prior_variance: float = Field(
        10.0, gt=0, description="RLS initial covariance: lower trusts the TTFT priors longer."
    )


@dataclass(frozen=True)
class ServiceEstimate:
    """Predicted service time of one item on one backend, queue wait excluded."""

    ttft_s: float
    decode_s: float
    output_tokens: float

    @property
    def total_s(self) -> float:
        return self.ttft_s + self.decode_s


class LatencyPredictor:
    """One backend's latency model. Not thread-safe: the scheduler owns it."""

    def __init__(self, config: PredictorConfig | None = None) -> None:
        self.config = c = config or PredictorConfig()
        self._prior = np.array(
            [c.ttft_base_s, c.ttft_s_per_prompt_token * _KTOK, c.ttft_s_per_image_token * _KTOK]
        )
        self._theta = self._prior.copy()
        self._p = np.eye(3) * c.prior_variance
        self._abs_resid: float | None = None
        self._decode: float | None = None
        self._fraction: float | None = None
        self.observations = 0

    @property
    def warmed_up(self) -> bool:
        return self.observations >= self.config.warmup_observations

    def coefficients(self) -> dict[str, float]:
        """The values predictions use now (priors during warm-up)."""
        c = self.config
        warm = self.warmed_up
        theta = self._theta if warm else self._prior
        decode = self._decode if warm and self._decode is not None else c.decode_s_per_token
        fraction = self._fraction if warm and self._fraction is not None else c.output_fraction
        return {
            "ttft_base_s": float(theta[0]),
            "ttft_s_per_prompt_token": float(theta[1] / _KTOK),
            "ttft_s_per_image_token": float(theta[2] / _KTOK),
            "decode_s_per_token": decode,
            "output_fraction": fraction,
        }

    def estimate(
        self, prompt_tokens: int, image_tokens: int, max_output_tokens: int
    ) -> ServiceEstimate:
        k = self.coefficients()
        ttft = (
            k["ttft_base_s"]
            + k["ttft_s_per_prompt_token"] * prompt_tokens
            + k["ttft_s_per_image_token"] * image_tokens
        )
        out = max(1.0, k["output_fraction"] * max_output_tokens)
        return ServiceEstimate(ttft, k["decode_s_per_token"] * (out - 1.0), out)

    def service_s(self, prompt_tokens: int, image_tokens: int, max_output_tokens: int) -> float:
        return self.estimate(prompt_tokens, image_tokens, max_output_tokens).total_s

    def observe(
        self, prompt_tokens: int, image_tokens: int, max_output_tokens: int, t: ObservedTimings
    ) -> None:
        """Learn from one served item's timings (service only, queue wait excluded)."""
        self._observe_ttft(prompt_tokens, image_tokens, t.ttft_s)
        a = self.config.ewma_alpha
        if t.output_tokens > 1:
            rate = (t.total_s - t.ttft_s) / (t.output_tokens - 1)
            if self._decode is None:
                self._decode = rate
            else:
                rate = min(max(rate, self._decode / 4), self._decode * 4)
                self._decode += a * (rate - self._decode)
        if max_output_tokens > 0:
            frac = min(1.0, t.output_tokens / max_output_tokens)
            self._fraction = (
                frac if self._fraction is None else self._fraction + a * (frac - self._fraction)
            )
        self.observations += 1

    def _observe_ttft(self, prompt_tokens: int, image_tokens: int, ttft_s: float) -> None:
        x = np.array([1.0, prompt_tokens / _KTOK, image_tokens / _KTOK])
        resid = ttft_s - float(x @ self._theta)
        if self._abs_resid is None:
            self._abs_resid = abs(resid)
        else:
            bound = max(4 * self._abs_resid, 1e-4)
            resid = min(max(resid, -bound), bound)
            # The scale learns from clipped residuals too: one stall barely moves it, while a
            # lasting shift grows it ~30% per sample until the fit can follow.
            self._abs_resid += 0.1 * (abs(resid) - self._abs_resid)
        lam = self.config.forgetting
        px = self._p @ x
        gain = px / (lam + float(x @ px))
        self._theta = np.maximum(self._theta + gain * resid, 0.0)
        p = (self._p - np.outer(gain, px)) / lam
        # Conventional RLS with forgetting loses symmetry and positive definiteness to
        # rounding after some thousands of updates, then diverges. Rebuild P from its clipped
        # eigenvalues: > 0 keeps it definite; <= the prior variance stops windup in the
        # directions the traffic does not excite (it would otherwise grow by 1/lam per step).
        w, v = np.linalg.eigh((p + p.T) / 2)
        self._p = (v * np.clip(w, 1e-9, self.config.prior_variance)) @ v.T

    def snapshot(self) -> dict[str, float | int | bool]:
        return {**self.coefficients(), "observations": self.observations, "warm": self.warmed_up}
