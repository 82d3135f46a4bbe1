"""The consistency loss (Song et al. 2023) of consistency distillation (CD, a teacher's ODE step) and
consistency training (CT, no teacher), one code path, with consistency_models' float operations in its
order and its random draws (the index, then the student's dropout, replayed for the target).

Callables as in parameterisation.py: student f, target f^- and teacher D, each
(x [B, C, H, W], sigma [B], **model_kwargs) -> [B, C, H, W]. Distances: l2, l1 and improved CT's
pseudo-Huber. LPIPS, consistency_models' default, is left out: its pretrained VGG weights cannot be
fetched offline.
"""

import math

import torch as th

from ..losses import mean_flat
from .parameterisation import SIGMA_DATA, per_example

LOSS_NORMS = ("l2", "l1", "pseudo-huber")
WEIGHT_SCHEDULES = ("uniform", "snr", "snr+1", "karras", "truncated-snr", "ict")
SOLVERS = ("heun", "euler")
HUBER_SCALE = 0.00054  # improved CT's c = 0.00054 sqrt(d), d = C * H * W


def draw_indices(batch_size, num_levels, device=None):
    """Grid indices n ~ U{0, ..., N - 2} [batch_size] int64, drawn from torch's global RNG exactly as
    consistency_models draws them (th.randint(0, N - 1, (B,))), so the same seed gives the same indices."""
    return th.randint(0, num_levels - 1, (batch_size,), device=device)


def loss_weight(weight_schedule, sigma_hi, sigma_lo, sigma_data=SIGMA_DATA):
    """lambda [B] of the noisier level sigma_hi [B] (snr = sigma_hi^-2, as consistency_models), or improved
    CT's 1 / (sigma_hi - sigma_lo) ("ict")."""
    snr = sigma_hi**-2
    weights = {
        "uniform": lambda: th.ones_like(snr),
        "snr": lambda: snr,
        "snr+1": lambda: snr + 1,
        "karras": lambda: snr + 1.0 / sigma_data**2,
        "truncated-snr": lambda: th.clamp(snr, min=1.0),
        "ict": lambda: 1 / (sigma_hi - sigma_lo),
    }
    if weight_schedule not in weights:
        raise ValueError(f"unknown weight schedule {weight_schedule!r}: use one of {', '.join(WEIGHT_SCHEDULES)}")
    return weights[weight_schedule]()


def loss_distance(loss_norm, a, b, huber_c=None):
    """d(a, b) [B] between a, b [B, C, H, W].

    l2 and l1: the mean over C, H, W of the squared or absolute difference (consistency_models).
    pseudo-huber: sqrt(||a - b||^2 + c^2) - c with the squared norm summed over C, H, W (not averaged:
    improved CT's d), c = huber_c or 0.00054 sqrt(C H W).
    """
    if loss_norm == "l2":
        return mean_flat((a - b) ** 2)
    if loss_norm == "l1":
        return mean_flat(th.abs(a - b))
    if loss_norm == "pseudo-huber":
        c = HUBER_SCALE * math.sqrt(a[0].numel()) if huber_c is None else huber_c
        return th.sqrt(((a - b) ** 2).flatten(1).sum(dim=1) + c**2) - c
    raise ValueError(f"unknown loss norm {loss_norm!r}: use one of {', '.join(LOSS_NORMS)} (LPIPS is not available)")


def euler_step(denoise, x, sigma, sigma_next):
    """x at sigma_next [B] from x at sigma [B]: one Euler step of dx/dsigma = (x - D(x, sigma)) / sigma."""
    slope = (x - denoise(x, sigma)) / per_example(sigma, x)
    return x + slope * per_example(sigma_next - sigma, x)


def heun_step(denoise, x, sigma, sigma_next):
    """One Heun step (Karras et al. 2022, Alg. 1 without churn): Euler, then the trapezoid correction."""
    slope = (x - denoise(x, sigma)) / per_example(sigma, x)
    x_euler = x + slope * per_example(sigma_next - sigma, x)
    slope_next = (x_euler - denoise(x_euler, sigma_next)) / per_example(sigma_next, x)
    return x + (slope + slope_next) * per_example((sigma_next - sigma) / 2, x)


def consistency_losses(student, target, x_start, sigmas, indices, noise, *, teacher=None, solver="heun",
                       loss_norm="l2", weight_schedule="uniform", huber_c=None, sigma_data=SIGMA_DATA,
                       model_kwargs=None):
    """The per-example consistency loss lambda(sigma_hi) d(f(x_hi, sigma_hi), f^-(x_lo, sigma_lo)).

    x_start: x_0 [B, C, H, W]; sigmas: the grid [N], decreasing; indices: [B] in [0, N - 2] (draw_indices),
    sigma_hi = sigmas[n], sigma_lo = sigmas[n + 1]; noise: z [B, C, H, W]; x_hi = x_0 + sigma_hi z.
    teacher: D for CD, whose unclipped `solver` step ("heun" or "euler") takes x_hi to x_lo; None for CT,
    where x_lo is the Euler step with x_0 as the denoiser (x_0 + sigma_lo z up to rounding, as
    consistency_models computes it). The target runs under no_grad on the random state the student
    started from (torch's CPU generator, and x's CUDA one), so both see the same dropout draws.
    loss_norm, huber_c: see loss_distance; weight_schedule, sigma_data: see loss_weight.
    Returns {"loss": [B], "sigma": sigma_hi [B]}.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    model_kwargs = model_kwargs or {}
    sigma_hi, sigma_lo = sigmas[indices], sigmas[indices + 1]
    x_hi = x_start + noise * per_example(sigma_hi, x_start)

    random_state = _random_state(x_start.device)
    prediction = student(x_hi, sigma_hi, **model_kwargs)
    with th.no_grad():
        if teacher is None:
            x_lo = euler_step(lambda x, sigma: x_start, x_hi, sigma_hi, sigma_lo)
        else:
            step = heun_step if solver == "heun" else euler_step
            x_lo = step(lambda x, sigma: teacher(x, sigma, **model_kwargs), x_hi, sigma_hi, sigma_lo)
        _restore_random_state(random_state)
        target_prediction = target(x_lo, sigma_lo, **model_kwargs)

    weights = loss_weight(weight_schedule, sigma_hi, sigma_lo, sigma_data)
    return {"loss": loss_distance(loss_norm, prediction, target_prediction, huber_c) * weights, "sigma": sigma_hi}


def _random_state(device):
    """The states of the generators dropout draws from: torch's CPU one, and the device's on CUDA."""
    cuda = th.cuda.get_rng_state(device) if device.type == "cuda" else None
    return th.get_rng_state(), device, cuda


def _restore_random_state(state):
    cpu, device, cuda = state
    th.set_rng_state(cpu)
    if cuda is not None:
        th.cuda.set_rng_state(cuda, device)
