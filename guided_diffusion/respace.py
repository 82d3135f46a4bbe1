"""Timestep respacing: sample (or train) with a subset of a diffusion's timesteps.

The kept steps keep their alphas_cumprod; the betas between them are recomputed, and the model is
still called with the original timestep indices (through `_WrappedModel`, as in the release).
"""

import copy
import itertools
import re

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion

KARRAS_RHO = 7.0  # Karras et al. 2022's spacing exponent


def space_timesteps(num_timesteps, section_counts, alphas_cumprod=None):
    """The set of original timesteps to keep (at least 2, at most num_timesteps).

    section_counts:
    - "ddimN": the integer stride giving exactly N steps from 0 (as in the DDIM paper);
    - "logsnrN": N steps uniform in lambda = log(alpha / sigma) between t = T - 1 and t = 0;
    - "karrasN": N steps at Karras et al.'s rho = 7 spacing of sigma = sqrt((1 - alpha_bar) / alpha_bar);
    - otherwise a comma-separated string or a list of counts, one per section of equal length (the first
      sections take the remainder), each evenly spaced with a rounded fractional stride that keeps its
      first and last step. E.g. space_timesteps(300, "10,15,20") keeps 10 steps of [0, 100), 15 of
      [100, 200) and 20 of [200, 300); "250" keeps 250 evenly spaced steps of all.
    logsnrN and karrasN need the schedule's alphas_cumprod [num_timesteps]; each of their levels is
    rounded to the nearest timestep in log sigma, collisions moved to the next free timestep, so that
    exactly N distinct timesteps are kept, 0 and T - 1 among them.
    - "fast27": GLIDE's upsampler schedule, "10,10,3,2,2" with step T - 1 replaced by T - 3 (fewer DDIM
      artifacts from the noisiest step).
    """
    if section_counts == "fast27":
        kept = space_timesteps(num_timesteps, "10,10,3,2,2")
        return (kept - {num_timesteps - 1}) | {num_timesteps - 3}
    named = re.fullmatch(r"(ddim|logsnr|karras)(\d+)", section_counts) if isinstance(section_counts, str) else None
    if named:
        kind, count = named.group(1), int(named.group(2))
        _check_count(count, num_timesteps, section_counts)
        if kind == "ddim":
            return _ddim_timesteps(num_timesteps, count)
        if alphas_cumprod is None:
            raise ValueError(f"timestep_respacing {section_counts!r} needs the schedule's alphas_cumprod")
        return _noise_level_timesteps(np.asarray(alphas_cumprod, dtype=np.float64), count, kind)
    if isinstance(section_counts, str):
        try:
            section_counts = [int(count) for count in section_counts.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep_respacing {section_counts!r} is not understood: use a step count such as 250, "
                "comma-separated counts per section, ddimN, logsnrN or karrasN"
            ) from None
    _check_count(sum(section_counts), num_timesteps, ",".join(map(str, section_counts)))
    base_size, remainder = divmod(num_timesteps, len(section_counts))
    sizes = [base_size + (index < remainder) for index in range(len(section_counts))]
    starts = itertools.accumulate(sizes[:-1], initial=0)
    kept = set()
    for start, size, count in zip(starts, sizes, section_counts):
        if count > size:
            raise ValueError(
                f"cannot take {count} steps from a section of {size} steps "
                f"(timestep_respacing {section_counts} over {num_timesteps} steps): use fewer steps per section"
            )
        kept.update(_evenly_spaced(start, size, count))
    return kept


def _check_count(count, num_timesteps, respacing):
    """Sampling needs at least 2 kept steps and cannot keep more than T."""
    if count < 2:
        raise ValueError(
            f"timestep_respacing {respacing!r} keeps {count} step(s): sampling needs at least 2 (e.g. 10 or ddim10)"
        )
    if count > num_timesteps:
        raise ValueError(
            f"timestep_respacing {respacing!r} asks for {count} steps of a {num_timesteps}-step diffusion: "
            f"use at most {num_timesteps}"
        )


def _evenly_spaced(start, size, count):
    """count steps of [start, start + size) keeping the first and last, at a rounded fractional stride.

    The stride is accumulated (not multiplied) and rounded half to even, as in the release.
    """
    if count < 1:
        return []
    stride = 1 if count == 1 else (size - 1) / (count - 1)
    offsets = itertools.accumulate(itertools.repeat(stride, count - 1), initial=0.0)
    return [start + round(offset) for offset in offsets]


def _ddim_timesteps(num_timesteps, desired_count):
    """{0, s, 2s, ...} with the smallest integer stride s giving exactly desired_count steps."""
    counts = {stride: len(range(0, num_timesteps, stride)) for stride in range(1, num_timesteps)}
    stride = next((s for s, n in counts.items() if n == desired_count), None)
    if stride is not None:
        return set(range(0, num_timesteps, stride))
    nearest = sorted(sorted(set(counts.values()), key=lambda n: abs(n - desired_count))[:4])
    raise ValueError(
        f"no integer stride gives exactly {desired_count} of {num_timesteps} steps for "
        f"timestep_respacing 'ddim{desired_count}': use a nearby count ({', '.join(f'ddim{n}' for n in nearest)}) "
        f"or a plain count like '{desired_count}'"
    )


def _noise_level_timesteps(alphas_cumprod, count, kind):
    """count distinct timesteps from T - 1 down to 0, uniform in lambda (logsnr) or at the rho = 7
    spacing of sigma (karras), each rounded to the nearest timestep in log sigma."""
    log_sigma = 0.5 * (np.log1p(-alphas_cumprod) - np.log(alphas_cumprod))  # increasing in t
    low, high = log_sigma[0], log_sigma[-1]
    fractions = np.linspace(0.0, 1.0, count)
    if kind == "logsnr":
        levels = high + fractions * (low - high)
    else:
        inv_rho = 1.0 / KARRAS_RHO
        sigma_max, sigma_min = np.exp(high), np.exp(low)
        levels = np.log((sigma_max**inv_rho + fractions * (sigma_min**inv_rho - sigma_max**inv_rho)) ** KARRAS_RHO)
    nearest = np.abs(log_sigma[None, :] - levels[:, None]).argmin(axis=1)
    steps = sorted(int(t) for t in nearest)
    steps[0], steps[-1] = 0, len(alphas_cumprod) - 1
    for i in range(1, count):  # collisions move up to the next free timestep...
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = len(alphas_cumprod) - 1
    for i in range(count - 2, -1, -1):  # ...and below T - 1
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return set(steps)


class _WrappedModel:
    """model(x, t) called with the original timesteps of a respaced diffusion's steps t (scaled to
    [0, 1000) with rescale_timesteps): what the release's SpacedDiffusion hands to its base methods."""

    def __init__(self, model, timestep_map, rescale_timesteps, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps
        self._maps = {}  # the map as a tensor per (device, dtype)

    def __call__(self, x, ts, **kwargs):
        key = (ts.device, ts.dtype)
        if key not in self._maps:
            self._maps[key] = th.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        original = self._maps[key][ts]
        if self.rescale_timesteps:
            original = original.float() * (1000.0 / self.original_num_steps)
        return self.model(x, original, **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over a subset of the base process's timesteps.

    use_timesteps: the original timesteps to keep (e.g. from space_timesteps).
    kwargs: the base GaussianDiffusion's arguments (betas of the full schedule).
    timestep_map[i] is the original timestep of step i; original_num_steps the base process's T.
    The model and the release's cond_fn are called through `_wrap_model`, so they see original timesteps.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.base_betas = np.array(kwargs["betas"], dtype=np.float64)
        super().__init__(**kwargs)

    def _make_schedule(self, betas):
        return super()._make_schedule(betas).respaced(self.use_timesteps)

    def keeping(self, use_timesteps):
        """A copy of this diffusion (same class, same overrides) over other original timesteps."""
        spaced = copy.copy(self)
        spaced.use_timesteps = set(use_timesteps)
        spaced._set_schedule(spaced._make_schedule(self.base_betas))
        return spaced

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _set_schedule(self, schedule):
        super()._set_schedule(schedule)
        self._timestep_map_tensors = {}  # shared by the wrapped models: one copy per device

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        wrapped = _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)
        wrapped._maps = self._timestep_map_tensors
        return wrapped

    def _scale_timesteps(self, t):
        return t  # _WrappedModel maps and scales
