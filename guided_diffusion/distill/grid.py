"""The noise levels of a consistency model: Karras et al.'s rho spacing of sigma, on the continuous sigma
axis of an EDM model (consistency_models) or rounded to the integer timesteps of a VP (ADM) schedule.

The sigma view: x = x_0 + sigma z; a VP step t has sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).
"""

import numpy as np
import torch as th

RHO = 7.0  # Karras et al. 2022's spacing exponent


def karras_level(index, num_levels, sigma_min, sigma_max, rho=RHO):
    """Level `index` (an integer tensor, any shape) of num_levels Karras levels, index 0 = sigma_max; float32.

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with
    consistency_models' float32 operations, in its order.
    """
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + index / (num_levels - 1) * (sigma_min ** (1 / rho) - max_inv_rho)) ** rho


def karras_sigmas(num_levels, sigma_min=0.002, sigma_max=80.0, rho=RHO):
    """[num_levels] float32 decreasing levels, index 0 = sigma_max (consistency_models' loss grid).

    Each level is computed on its own, so it takes torch's scalar pow as consistency_models' loss does on
    a batch narrower than the vector width: gathering from this grid gives its sigmas bit for bit (the
    vectorised pow differs in the last bit for a few levels of a 201-level grid). As consistency_models'
    float32 arithmetic gives, the ends are within an ulp of sigma_max and sigma_min, not equal to them.
    """
    if num_levels < 2:
        raise ValueError(f"a consistency grid needs at least 2 noise levels, got {num_levels}")
    return th.stack([karras_level(th.tensor(i), num_levels, sigma_min, sigma_max, rho) for i in range(num_levels)])


def vp_sigmas(alphas_cumprod):
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of a VP schedule: [T] float64, increasing in t."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def timestep_grid(alphas_cumprod, num_levels, sigma_max=80.0, rho=RHO):
    """num_levels distinct timesteps of a VP schedule at Karras spacing, and their sigmas.

    alphas_cumprod: [T] of the schedule (a respaced one: its own steps). The levels run from
    min(sigma_max, sigma_{T-1}) down to sigma_0, each rounded to the nearest timestep in log sigma.
    Returns (timesteps [num_levels] int64, decreasing, the last 0; their sigma_t [num_levels] float32, exactly
    the schedule's values). Raises ValueError when the rounded levels are not distinct.
    """
    if num_levels < 2:
        raise ValueError(f"a consistency grid needs at least 2 noise levels, got {num_levels}")
    sigma = vp_sigmas(alphas_cumprod)
    if sigma_max <= sigma[0]:
        raise ValueError(f"sigma_max={sigma_max:g} must exceed the schedule's smallest sigma, {sigma[0]:.4g}")
    log_sigma, sigma_top = np.log(sigma), min(sigma_max, float(sigma[-1]))
    timesteps = _rounded_timesteps(log_sigma, num_levels, sigma_top, rho)
    if len(set(timesteps.tolist())) < num_levels:
        fits = _largest_fitting(log_sigma, num_levels, sigma_top, rho)
        raise ValueError(
            f"a grid of {num_levels} levels does not fit a schedule of {len(sigma)} timesteps below "
            f"sigma_max={sigma_max:g}: rounded to its timesteps, some levels fall on the same one; use fewer "
            f"levels (e.g. --num_scales {fits}, which fit) or a larger sigma_max")
    return th.from_numpy(timesteps), th.from_numpy(sigma).float()[timesteps]


def _rounded_timesteps(log_sigma, num_levels, sigma_top, rho):
    """The nearest timestep in log sigma to each of num_levels Karras levels from sigma_top to sigma_0: [n]."""
    fractions = np.arange(num_levels) / (num_levels - 1)
    top, bottom = sigma_top ** (1 / rho), np.exp(log_sigma[0]) ** (1 / rho)
    levels = rho * np.log(top + fractions * (bottom - top))
    return np.abs(log_sigma[None, :] - levels[:, None]).argmin(axis=1)


def _largest_fitting(log_sigma, num_levels, sigma_top, rho):
    """A level count below num_levels whose rounded timesteps are distinct, found by bisection (the largest
    such count where fitting is monotone in it, as on the released schedules)."""
    low, high = 2, num_levels  # low fits (sigma_top and sigma_0 are distinct timesteps), high does not
    while high - low > 1:
        middle = (low + high) // 2
        distinct = len(set(_rounded_timesteps(log_sigma, middle, sigma_top, rho).tolist())) == middle
        low, high = (middle, high) if distinct else (low, middle)
    return low
