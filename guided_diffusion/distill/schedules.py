"""The (mu, N) schedule of consistency training and distillation: the target network's EMA rate mu and the
number of grid levels N at each training step.

consistency_models' create_ema_and_scales_fn (modes fixed/fixed, fixed/progressive, adaptive/progressive),
with its numpy operations so that every integer and float is its own, and improved CT's exponential
curriculum (Song & Dhariwal 2023) with mu = 0. N and mu are functions of the step alone, so a resumed run
needs only its step. The target update itself, theta^- <- mu theta^- + (1 - mu) theta, is
train_util.update_ema.
"""

import dataclasses
import math

import numpy as np

EMA_MODES = ("fixed", "adaptive")
SCALE_MODES = ("fixed", "progressive", "exponential")


@dataclasses.dataclass(frozen=True)
class TargetSchedule:
    """schedule(step) -> (mu: float, N: int).

    scale_mode "progressive" (consistency_models' CT): N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1)
    + 1 (at least 2), growing past s1 + 1 after K steps as consistency_models' does; "exponential"
    (improved CT): N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)).
    target_ema_mode "adaptive" (with "progressive" only): mu(k) = exp(s0 log(mu0) / (N(k) - 1)).
    Improved CT is target_ema_mode "fixed", start_ema 0, scale_mode "exponential", s0 = 10, s1 = 1280.
    """

    target_ema_mode: str = "fixed"  # "fixed": mu = start_ema; "adaptive": mu grows with N (above)
    scale_mode: str = "fixed"  # "fixed": N = start_scales; "progressive" or "exponential" (above)
    start_ema: float = 0.95  # mu0, the target's EMA rate (at the start, when adaptive)
    start_scales: int = 40  # s0, the number of levels N at step 0 (when fixed: always)
    end_scales: int = 40  # s1, the number of levels N (minus one) the growth aims at
    total_steps: int = 600000  # K, the training steps over which N grows

    def __post_init__(self):
        if self.target_ema_mode not in EMA_MODES or self.scale_mode not in SCALE_MODES:
            raise ValueError(f"target_ema_mode must be one of {', '.join(EMA_MODES)} and scale_mode one of "
                             f"{', '.join(SCALE_MODES)}, got {self.target_ema_mode!r} and {self.scale_mode!r}")
        if self.target_ema_mode == "adaptive" and self.scale_mode != "progressive":
            raise ValueError(f"target_ema_mode adaptive goes with scale_mode progressive (consistency_models' CT), "
                             f"not {self.scale_mode!r}: use target_ema_mode fixed")
        if self.scale_mode == "exponential" and not (
                1 <= self.start_scales <= self.end_scales
                and self.total_steps >= math.log2(self.end_scales // self.start_scales) + 1):
            raise ValueError(f"the exponential curriculum needs 1 <= start_scales <= end_scales and at least one step "
                             f"per doubling, got start_scales {self.start_scales}, end_scales {self.end_scales}, "
                             f"total_steps {self.total_steps}")

    def __call__(self, step):
        if self.scale_mode == "fixed":
            return float(self.start_ema), int(self.start_scales)
        if self.scale_mode == "exponential":
            return float(self.start_ema), exponential_scales(step, self.total_steps, self.start_scales,
                                                              self.end_scales)
        intervals = progressive_intervals(step, self.total_steps, self.start_scales, self.end_scales)
        if self.target_ema_mode == "fixed":
            return float(self.start_ema), int(intervals + 1)
        return float(np.exp(np.log(self.start_ema) * self.start_scales / intervals)), int(intervals + 1)


def progressive_intervals(step, total_steps, start_scales, end_scales):
    """N(k) - 1 of consistency_models' progressive mode: an np.int32, at least 1."""
    squared = (step / total_steps) * ((end_scales + 1) ** 2 - start_scales**2) + start_scales**2
    return np.maximum(np.ceil(np.sqrt(squared) - 1).astype(np.int32), 1)


def exponential_scales(step, total_steps, start_scales, end_scales):
    """Improved CT's N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1))."""
    steps_per_doubling = math.floor(total_steps / (math.log2(end_scales // start_scales) + 1))
    return min(start_scales * 2 ** (step // steps_per_doubling), end_scales) + 1
