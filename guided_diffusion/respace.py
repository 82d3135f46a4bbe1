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
# consistency_models' tuned two-step levels sigma on ImageNet-64: the default first and last of consistencyN
CONSISTENCY_SIGMAS = (80.0, 1.38)


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
    - "at:T1,T2,...": exactly the listed original timesteps (distinct, in [0, T), any order);
    - "consistencyN": t = 0 and the N levels of consistency_timesteps (needs alphas_cumprod): the
      consistency sampler's N evaluations (see consistency_respacing).
    """
    if section_counts == "fast27":
        kept = space_timesteps(num_timesteps, "10,10,3,2,2")
        return (kept - {num_timesteps - 1}) | {num_timesteps - 3}
    if isinstance(section_counts, str) and section_counts.startswith("at:"):
        kept = _listed_timesteps(num_timesteps, section_counts)
        _check_count(len(kept), num_timesteps, section_counts)
        return kept
    named = isinstance(section_counts, str) and re.fullmatch(r"(ddim|logsnr|karras|consistency)(\d+)", section_counts)
    if named:
        kind, count = named.group(1), int(named.group(2))
        _check_count(count + (kind == "consistency"), num_timesteps, section_counts)  # consistency adds t = 0
        if kind == "ddim":
            return _ddim_timesteps(num_timesteps, count)
        if alphas_cumprod is None:
            raise ValueError(f"timestep_respacing {section_counts!r} needs the schedule's alphas_cumprod")
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if kind == "consistency":
            return {0, *consistency_timesteps(alphas_cumprod, count)}
        return _noise_level_timesteps(alphas_cumprod, count, kind)
    if isinstance(section_counts, str):
        try:
            section_counts = [int(count) for count in section_counts.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep_respacing {section_counts!r} is not understood: use a step count such as 250, "
                "comma-separated counts per section, ddimN, logsnrN, karrasN, consistencyN or at:T1,T2,..."
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
            f"timestep_respacing {respacing!r} keeps {count} step(s): sampling needs at least 2 steps (e.g. 10 or "
            "ddim10; one evaluation of a consistency model is --sampler consistency's, which keeps t = 0 too)"
        )
    if count > num_timesteps:
        raise ValueError(
            f"timestep_respacing {respacing!r} asks for {count} steps of a {num_timesteps}-step diffusion: "
            f"use at most {num_timesteps}"
        )


def _at_timesteps(respacing):
    """The timesteps of "at:T1,T2,..." as a list of ints, in the order given."""
    try:
        return [int(step) for step in respacing[len("at:"):].split(",")]
    except ValueError:
        raise ValueError(f"timestep_respacing {respacing!r}: at: takes comma-separated original timesteps, "
                         "e.g. at:991,597") from None


def _listed_timesteps(num_timesteps, respacing):
    """The set of "at:T1,T2,..."'s timesteps, each once and in [0, num_timesteps)."""
    listed = _at_timesteps(respacing)
    outside = [step for step in listed if not 0 <= step < num_timesteps]
    if outside:
        raise ValueError(f"timestep_respacing {respacing!r}: timestep {outside[0]} is not a step of the "
                         f"{num_timesteps}-step diffusion: give timesteps in [0, {num_timesteps - 1}]")
    repeated = sorted({step for step in listed if listed.count(step) > 1})
    if repeated:
        raise ValueError(f"timestep_respacing {respacing!r} lists timestep {repeated[0]} more than once: "
                         "give each once")
    return set(listed)


def consistency_respacing(respacing):
    """The respacing the consistency sampler's diffusion keeps, for --timestep_respacing `respacing`.

    "N" (or "consistencyN") -> "consistencyN": N evaluations at consistency_timesteps' levels;
    "at:T1,T2,..." -> the same with t = 0 added: the boundary, where the consistency function is the
    identity (never evaluated), kept so that one evaluation is a diffusion of 2 steps. Other forms: ValueError.
    """
    count = re.fullmatch(r"(?:consistency)?(\d+)", respacing.strip())
    if count:
        return f"consistency{count.group(1)}"
    if respacing.startswith("at:"):
        listed = _at_timesteps(respacing)
        return respacing if 0 in listed else "at:" + ",".join(map(str, [0, *listed]))
    raise ValueError(
        "--sampler consistency takes --timestep_respacing N (N evaluations at its default levels, e.g. 2) or "
        f"at:T1,T2,... (at those original timesteps, e.g. at:991,597), got {respacing!r}")


def consistency_timesteps(alphas_cumprod, count):
    """The consistency sampler's default `count` levels as original timesteps: a list of ints, decreasing.

    Karras levels (rho = 7) from sigma = 80 (capped at the schedule's top) down to sigma = 1.38, one level
    being sigma = 80 alone, each rounded to the nearest timestep in log sigma, sigma = sqrt((1 - alpha_bar) /
    alpha_bar). 80 then 1.38 is consistency_models' tuned two-step schedule on ImageNet-64 (its ts 0,22,39
    of 40 levels): 991, 597 on the 1000-step cosine schedule, 930, 321 on the linear one. alphas_cumprod:
    [T] of the original schedule. ValueError when two levels fall on one timestep, or one on t = 0.
    """
    log_sigma = _log_sigmas(alphas_cumprod)
    sigma_max, sigma_last = CONSISTENCY_SIGMAS
    levels = _karras_log_levels(min(sigma_max, np.exp(log_sigma[-1])), sigma_last, count)
    steps = [int(step) for step in _nearest_timesteps(log_sigma, levels)]
    if len(set(steps)) < count or 0 in steps:
        raise ValueError(
            f"timestep_respacing 'consistency{count}': rounded to the {len(log_sigma)} timesteps of this schedule, "
            f"{count} levels from sigma {sigma_max:g} to {sigma_last:g} fall on timesteps {steps} (repeated or t = 0): "
            "use fewer steps, or list the timesteps: at:T1,T2,...")
    return steps


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
    log_sigma = _log_sigmas(alphas_cumprod)
    low, high = log_sigma[0], log_sigma[-1]
    if kind == "logsnr":
        levels = high + np.linspace(0.0, 1.0, count) * (low - high)
    else:
        levels = _karras_log_levels(np.exp(high), np.exp(low), count)
    steps = sorted(int(t) for t in _nearest_timesteps(log_sigma, levels))
    steps[0], steps[-1] = 0, len(alphas_cumprod) - 1
    for i in range(1, count):  # collisions move up to the next free timestep...
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = len(alphas_cumprod) - 1
    for i in range(count - 2, -1, -1):  # ...and below T - 1
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return set(steps)


def _log_sigmas(alphas_cumprod):
    """log sigma_t = log sqrt((1 - alpha_bar_t) / alpha_bar_t) of every timestep: [T], increasing in t."""
    return 0.5 * (np.log1p(-alphas_cumprod) - np.log(alphas_cumprod))


def _karras_log_levels(sigma_max, sigma_min, count):
    """log of count levels at Karras et al.'s rho = 7 spacing from sigma_max to sigma_min (count 1: sigma_max)."""
    inv_rho = 1.0 / KARRAS_RHO
    fractions = np.linspace(0.0, 1.0, count)
    return np.log((sigma_max**inv_rho + fractions * (sigma_min**inv_rho - sigma_max**inv_rho)) ** KARRAS_RHO)


def _nearest_timesteps(log_sigma, levels):
    """The timestep nearest in log sigma to each level: [len(levels)] int."""
    return np.abs(log_sigma[None, :] - levels[:, None]).argmin(axis=1)


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
