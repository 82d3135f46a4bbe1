"""Multistep consistency sampling (Song et al. 2023, Algorithm 1), and the levels that consistency_models'
sampler derives from its `ts` indices, so that both give the same samples from the same draws.
"""

import math

import numpy as np
import torch as th

from .grid import RHO


def consistency_sample(f, noise, sigmas, sigma_min, *, sigma_max=None, sigma_end=None, clip_denoised=True,
                       noise_fn=th.randn_like, model_kwargs=None):
    """Samples [N, C, H, W] in [-1, 1] in len(sigmas) evaluations of f.

    f: the consistency function, f(x, sigma [N], **model_kwargs) -> x_0 estimate [N, C, H, W].
    noise: z [N, C, H, W]; x = sigma_max z (sigma_max: default sigmas[0]).
    sigmas: the levels f is evaluated at, decreasing (floats or a 1-D tensor); after each but the last,
    x = x_0 + sqrt(sigma_next^2 - sigma_min^2) noise_fn(x), sigma_min the boundary level of f.
    sigma_end: where the output is left: None (or sigma_min) returns the last x_0; above sigma_min it is
    noised to that level like the steps before (consistency_models' `ts` ending before its last index).
    clip_denoised: clamp each x_0 to [-1, 1]; noise_fn(x) -> a standard normal tensor like x.
    """
    sigmas = [float(sigma) for sigma in sigmas]
    if not sigmas:
        raise ValueError("consistency sampling needs at least one noise level")
    renoise = sigmas[1:] + ([sigma_end] if sigma_end is not None and sigma_end > sigma_min else [])
    if renoise and min(renoise) < sigma_min:
        raise ValueError(f"noise level {min(renoise):g} lies below the consistency function's sigma_min {sigma_min:g}")
    model_kwargs = model_kwargs or {}
    x = noise * (sigmas[0] if sigma_max is None else sigma_max)
    with th.no_grad():
        for i, sigma in enumerate(sigmas):
            x0 = f(x, x.new_full((x.shape[0],), sigma), **model_kwargs)
            x = x0.clamp(-1, 1) if clip_denoised else x0
            if i < len(renoise):
                x = x + noise_fn(x) * math.sqrt(renoise[i] ** 2 - sigma_min**2)
    return x.clamp(-1, 1)


def cm_ts_sigmas(ts, steps, sigma_min=0.002, sigma_max=80.0, rho=RHO):
    """consistency_models' multistep `ts` as consistency_sample's (sigmas, sigma_end).

    ts: increasing indices into a grid of `steps` Karras levels (0 = sigma_max), e.g. "0,22,39" with
    steps 40: f is evaluated at the levels of all but the last index (in float64, then float32, as
    consistency_models), and the output is left at the last one, clipped to [sigma_min, sigma_max].
    Returns (sigmas: list of len(ts) - 1 floats, sigma_end: float).
    """
    if isinstance(ts, str):
        ts = [int(index) for index in ts.split(",")]
    if len(ts) < 2 or list(ts) != sorted(set(ts)) or ts[0] < 0 or ts[-1] >= steps:
        raise ValueError(f"ts must be at least 2 increasing indices in [0, {steps - 1}] (e.g. 0,22,{steps - 1}), "
                         f"got {','.join(map(str, ts))}")
    max_inv_rho = sigma_max ** (1 / rho)
    levels = [(max_inv_rho + index / (steps - 1) * (sigma_min ** (1 / rho) - max_inv_rho)) ** rho for index in ts]
    return levels[:-1], float(np.clip(levels[-1], sigma_min, sigma_max))
