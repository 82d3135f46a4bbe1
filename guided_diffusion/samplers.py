"""Samplers: reverse-time solvers of a diffusion, all with one signature (as k-diffusion's).

    sampler(denoise, x, timesteps, *, noise_fn=torch.randn_like, **options) -> iterator of steps

denoise: a guidance.GuidedDenoiser, denoise(x, t) -> {"mean", "variance", "log_variance", "pred_xstart"
[, "sample_shift"]}, with the schedule as denoise.schedule; x: x_t [N, C, H, W] at the first of
`timesteps`, the schedule's steps to visit from the highest down to 0 (normally all of them; respace the
diffusion for fewer); noise_fn(x) -> a standard normal tensor like x, used for every random draw. A
sampler yields one dict per step, {"sample": x after the step, "pred_xstart": its x_0 estimate}; the
"sample_shift" of after_step guides (DPS) is added to each step's sample. `run` drives one to the end.

`sample` is the entry point; SAMPLERS maps the --sampler names to their SamplerSpec. Notation as in
SPEC: alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t),
and the variance-exploding noise level s_t = sigma_t / alpha_t of Karras et al.
"""

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch as th

from .guidance import GuidedDenoiser, as_guides
from .schedules import gather


def ddpm(denoise, x, timesteps, *, noise_fn=th.randn_like):
    """Ancestral sampling (Ho et al. 2020): x_{t-1} = mean + sigma_t z, no noise at t = 0."""
    return markov_chain(lambda x_t, t: ddpm_step(denoise, x_t, t, noise_fn), x, timesteps)


def ddim(denoise, x, timesteps, *, noise_fn=th.randn_like, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 DDPM-like.

    Draws noise at every step even with eta = 0 (multiplied by zero), as the release does.
    """
    return markov_chain(lambda x_t, t: ddim_step(denoise, x_t, t, noise_fn, eta), x, timesteps)


def dpmpp_2m(denoise, x, timesteps, *, noise_fn=th.randn_like, lower_order_final=False):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep, on the data prediction x_0; deterministic.

    x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D with h = lambda_next - lambda,
    D = x_0 at the first step and, with r = h_prev / h, D = (1 + 1 / (2r)) x_0 - (1 / (2r)) x_0_prev
    after it. The last step returns x_0 (as k-diffusion and diffusers do). lower_order_final: the last
    update (into the final timestep) is first order, D = x_0. noise_fn is unused.
    """
    return _dpmpp_2m(denoise, x, timesteps, 0.0, noise_fn, lower_order_final)


def dpmpp_2m_sde(denoise, x, timesteps, *, noise_fn=th.randn_like, eta=1.0, lower_order_final=False):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's sample_dpmpp_2m_sde, midpoint correction).

    x_next = (sigma_next / sigma) exp(-eta h) x + alpha_next (1 - exp(-(1 + eta) h)) D
             + sigma_next sqrt(1 - exp(-2 eta h)) z,
    D as in dpmpp_2m; one standard normal draw z per step (none on the last, which returns x_0, and
    none with eta = 0, which is dpmpp_2m).
    """
    return _dpmpp_2m(denoise, x, timesteps, float(eta), noise_fn, lower_order_final)


def heun(denoise, x, timesteps, *, noise_fn=th.randn_like, churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. 2022's second-order sampler (Algorithm 2) on the discrete timesteps.

    Between visited steps i -> j: an Euler step of the probability-flow ODE in s = sigma / alpha (which
    is DDIM's step), then a trapezoidal correction with the eps at the Euler point: x_next =
    (alpha_j / alpha_i) x + alpha_j (s_j - s_i) (eps_i + eps_j) / 2. The last step returns x_0 (2N - 1
    model evaluations for N steps). churn > 0 first raises the noise level where s_tmin <= s_i <= s_tmax
    to s_hat = s_i (1 + gamma), gamma = min(churn / N, sqrt(2) - 1), rounded to the nearest original
    timestep (as EDM rounds for ADM models), adding noise sqrt(s_hat^2 - s_i^2) * s_noise * z: one draw per
    raised step. With churn = 0 it is deterministic.
    """
    visit = list(timesteps)
    raised = {}
    if churn > 0:
        denoise, visit, raised = _with_raised_steps(denoise, visit, churn, s_tmin, s_tmax)
    schedule = denoise.schedule
    alpha, s = schedule.sqrt_alphas_cumprod, schedule.sqrt_recipm1_alphas_cumprod
    for i, j in zip(visit, visit[1:] + [None]):
        if i in raised:
            hat = raised[i]
            spread = alpha[hat] * math.sqrt(s[hat] ** 2 - s[i] ** 2) * s_noise
            x = float(alpha[hat] / alpha[i]) * x + float(spread) * noise_fn(x)
            i = hat
        t = _batch_of(i, x)
        prediction = denoise(x, t)
        if j is None:
            yield {"sample": _shifted(prediction["pred_xstart"], prediction), "pred_xstart": prediction["pred_xstart"]}
            return
        eps = schedule.eps_from_xstart(x, t, prediction["pred_xstart"])
        decay, step = float(alpha[j] / alpha[i]), float(alpha[j] * (s[j] - s[i]))
        euler = decay * x + step * eps
        t_next = _batch_of(j, x)
        eps_next = schedule.eps_from_xstart(euler, t_next, denoise(euler, t_next, after_step=False)["pred_xstart"])
        x = _shifted(decay * x + step * (eps + eps_next) / 2, prediction)
        yield {"sample": x, "pred_xstart": prediction["pred_xstart"]}


def consistency(denoise, x, timesteps, *, noise_fn=th.randn_like):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) of a consistency model in ADM form
    (distill.parameterisation.VPModel): one evaluation at each visited step but t = 0.

    At a visited step of level s (x_VE = x_t / alpha_t the sigma view) the consistency function is
    f = (s_0 / s) x_VE + (1 - s_0 / s) x0_hat, x0_hat the denoiser's (guided, clipped) prediction and s_0 the
    level of the ORIGINAL schedule's t = 0, whatever the respacing keeps: f(x, s_0) = x_VE there, never
    evaluated. x_0 = f (clipped when clip_denoised) goes on to the next visited step j as x_j = alpha_j (x_0 +
    sqrt(s_j^2 - s_0^2) z) plus an after_step guide's shift, one noise_fn draw (times 0 into t = 0, as
    consistency_models draws); the last step returns x_0. From x_T = z at level s_1 this is consistency_models'
    sampler started from x_VE = sqrt(1 + s_1^2) z, its sigma_max z to 1e-4 at s_1 = 80.
    """
    schedule = denoise.schedule
    original = schedule.original_steps()
    alpha_bar = schedule.original_alphas_cumprod
    s = np.sqrt(1 / alpha_bar - 1)  # s_t of every original timestep
    visit = list(timesteps)
    for i, j in zip(visit, visit[1:] + [None]):
        x0, prediction = x / math.sqrt(alpha_bar[original[i]]), {}  # x_VE: f at s_0
        if original[i] != 0:
            prediction = denoise(x, _batch_of(i, x))
            skip = float(s[0] / s[original[i]])
            x0 = skip * x0 + (1 - skip) * prediction["pred_xstart"]
        x0 = x0.clamp(-1, 1) if denoise.clip_denoised else x0
        if j is None:
            yield {"sample": _shifted(x0, prediction), "pred_xstart": x0}
            return
        spread = float(np.sqrt(s[original[j]] ** 2 - s[0] ** 2))
        x = _shifted(math.sqrt(alpha_bar[original[j]]) * (x0 + spread * noise_fn(x0)), prediction)
        yield {"sample": x, "pred_xstart": x0}


def ddpm_step(denoise, x, t, noise_fn=th.randn_like):
    """One ancestral step x_t -> x_{t-1} at steps t [N]."""
    prediction, context = denoise.predict(x, t)
    noise = noise_fn(x)  # drawn before the guides run, as the release draws it
    prediction = denoise.guide(prediction, context)
    spread = _nonzero(t, x) * th.exp(0.5 * prediction["log_variance"])
    sample = _shifted(prediction["mean"] + spread * noise, prediction)
    return {"sample": sample, "pred_xstart": prediction["pred_xstart"]}


def ddim_step(denoise, x, t, noise_fn=th.randn_like, eta=0.0):
    """One DDIM step x_t -> x_{t-1} at steps t [N], eps re-derived from the (clipped) x_0."""
    schedule = denoise.schedule
    prediction = denoise(x, t)
    x0 = prediction["pred_xstart"]
    eps = schedule.eps_from_xstart(x, t, x0)
    alpha_bar = gather(schedule.alphas_cumprod, t, x.shape)
    alpha_bar_prev = gather(schedule.alphas_cumprod_prev, t, x.shape)
    sigma = eta * th.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * th.sqrt(1 - alpha_bar / alpha_bar_prev)
    noise = noise_fn(x)
    deterministic = x0 * th.sqrt(alpha_bar_prev) + th.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    return {"sample": _shifted(deterministic + _nonzero(t, x) * sigma * noise, prediction), "pred_xstart": x0}


def ddim_reverse_step(denoise, x, t):
    """One deterministic DDIM step forward in time, x_t -> x_{t+1} (the ODE run backwards)."""
    schedule = denoise.schedule
    x0 = denoise(x, t)["pred_xstart"]
    eps = schedule.eps_from_xstart(x, t, x0)
    alpha_bar_next = gather(schedule.alphas_cumprod_next, t, x.shape)
    return {"sample": x0 * th.sqrt(alpha_bar_next) + th.sqrt(1 - alpha_bar_next) * eps, "pred_xstart": x0}


@dataclass(frozen=True)
class SamplerSpec:
    """A --sampler: its function, where plain guides act ("mean": DDPM's mean shift, "score": the score
    shift) and whether x_0 is clipped again after a score guide's shift by default."""

    solve: Callable
    guidance_on: str
    reclip_guided: bool

    def options(self):
        """The sampler's own keyword options and their defaults (e.g. {"eta": 0.0})."""
        parameters = inspect.signature(self.solve).parameters.values()
        return {p.name: p.default for p in parameters if p.kind == p.KEYWORD_ONLY and p.name != "noise_fn"}


SAMPLERS = {
    "ddpm": SamplerSpec(ddpm, "mean", False),
    "ddim": SamplerSpec(ddim, "score", False),  # the release's DDIM: x_0 is not clipped again
    "dpm++2m": SamplerSpec(dpmpp_2m, "score", True),
    "dpm++2m-sde": SamplerSpec(dpmpp_2m_sde, "score", True),
    "heun": SamplerSpec(heun, "score", True),
    "consistency": SamplerSpec(consistency, "score", True),
}


def resolve_sampler(sampler="ddpm", use_ddim=False):
    """The sampler named by --sampler and the release's --use_ddim (True means ddim)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use --sampler {', '.join(SAMPLERS)}")
    if use_ddim and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--use_ddim True asks for ddim but --sampler is {sampler!r}: give only one of them")
    return "ddim" if use_ddim else sampler


def check_options(sampler, options):
    """Raise ValueError naming the sampler's options when `options` has a key it does not take."""
    known = SAMPLERS[sampler].options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(f"{name}={default}" for name, default in known.items()) or "no options"
        raise ValueError(f"sampler {sampler!r} does not take {', '.join(unknown)}: it takes {takes}")


def dynamic_thresholding(quantile):
    """A denoised_fn for dynamic thresholding (Saharia et al. 2022): per sample, s = max(1, the quantile
    of |x_0|), x_0 -> clamp(x_0, -s, s) / s. quantile in (0, 1], e.g. 0.995."""
    if not 0 < quantile <= 1:
        raise ValueError(f"--dynamic_threshold must be a quantile in (0, 1], e.g. 0.995, got {quantile}")

    def threshold(x0):
        level = th.quantile(x0.abs().flatten(1).float(), quantile, dim=1).clamp(min=1)
        level = level.to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
        return x0.clamp(-level, level) / level

    return threshold


def sample(diffusion, model, shape, *, sampler="ddpm", guidance=(), noise=None, clip_denoised=True,
           denoised_fn=None, model_kwargs=None, device=None, progress=False, noise_fn=th.randn_like,
           callback=None, start_step=None, dynamic_threshold=None, reclip_guided=None, **options):
    """Samples x_0 [*shape] with a named sampler over the steps of the (respaced) diffusion.

    guidance: None, a guide or a sequence of guides (guidance.ClassifierGuidance, ClassifierFreeGuidance,
    MeasurementGuidance, CleanImageGuidance, or your own; see docs/guidance.md). noise: x at the first
    step (x_T; else noise_fn(torch.empty(shape))). start_step: the (respaced) step to start from
    (default T - 1; SDEdit starts lower, from a noised image). dynamic_threshold: a quantile p (e.g.
    0.995) thresholds every x_0 dynamically. reclip_guided: clip x_0 again after a score guide's shift
    (None: the sampler's default, SAMPLERS[sampler].reclip_guided). options: the sampler's own keywords
    (eta, churn, lower_order_final, ...). callback: called after each step with {"i", "sample",
    "pred_xstart"}. The other keywords are as in GaussianDiffusion.p_sample_loop.
    """
    steps = sample_steps(diffusion, model, shape, sampler=sampler, guidance=guidance, noise=noise,
                         clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                         device=device, progress=progress, noise_fn=noise_fn, start_step=start_step,
                         dynamic_threshold=dynamic_threshold, reclip_guided=reclip_guided, **options)
    return run(steps, callback)


def sample_steps(diffusion, model, shape, *, sampler="ddpm", guidance=(), cond_fn=None, noise=None,
                 clip_denoised=True, denoised_fn=None, model_kwargs=None, device=None, progress=False,
                 noise_fn=th.randn_like, start_step=None, dynamic_threshold=None, reclip_guided=None, **options):
    """Like sample, but yields every step's dict; cond_fn: a release-style guide."""
    sampler = resolve_sampler(sampler)
    spec = SAMPLERS[sampler]
    check_options(sampler, options)
    if dynamic_threshold is not None:
        denoised_fn = _then(denoised_fn, dynamic_thresholding(dynamic_threshold))
    denoise = GuidedDenoiser(diffusion, model, as_guides(guidance, cond_fn), on=spec.guidance_on,
                             clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                             reclip_guided=spec.reclip_guided if reclip_guided is None else reclip_guided)
    first = diffusion.num_timesteps - 1 if start_step is None else start_step
    if not 0 <= first < diffusion.num_timesteps:
        raise ValueError(f"start_step {first} is not a step of this {diffusion.num_timesteps}-step diffusion")
    x = initial_noise(model, shape, noise, device, noise_fn)
    steps = spec.solve(denoise, x, range(first, -1, -1), noise_fn=noise_fn, **options)
    return without_grad(with_progress(steps, first + 1, progress))


def invert(diffusion, model, x_start, *, end_step=None, clip_denoised=True, denoised_fn=None, model_kwargs=None,
           progress=False):
    """DDIM inversion: the deterministic DDIM update run forward in time from x_start [N, ...] (taken as
    the sample at step 0) up to step end_step (default T - 1) of the (respaced) diffusion. Sampling with
    ddim from the result (start_step=end_step) reconstructs x_start, better as the steps grow."""
    last = diffusion.num_timesteps - 1 if end_step is None else end_step
    denoise = GuidedDenoiser(diffusion, model, on="score", clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                             model_kwargs=model_kwargs)
    steps = markov_chain(lambda x, t: ddim_reverse_step(denoise, x, t), x_start, range(last))
    return run(without_grad(with_progress(steps, last, progress)))


def run(steps, callback=None):
    """Drive a sampler's steps to the end; returns the last "sample"."""
    out = None
    for i, out in enumerate(steps):
        if callback is not None:
            callback({"i": i, **out})
    return out["sample"]


def markov_chain(step, x, timesteps):
    """Yield step(x_t, t) for each timestep (t: [N] long), feeding each "sample" into the next step."""
    for i in timesteps:
        out = step(x, _batch_of(i, x))
        yield out
        x = out["sample"]


def initial_noise(model, shape, noise, device, noise_fn):
    """x at the first step: `noise` if given, else noise_fn(torch.empty(shape)) on `device` (default: the
    model's)."""
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple or list like (N, C, H, W), got {shape!r}")
    if noise is not None:
        return noise
    return noise_fn(th.empty(shape, device=device if device is not None else _default_device(model)))


def with_progress(steps, total, progress):
    """The steps, with a tqdm bar of `total` steps when progress is set."""
    if not progress:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, total=total)


def without_grad(steps):
    """Run every step of a generator under torch.no_grad (guides that need gradients enable them)."""
    with th.no_grad():
        yield from steps


def _dpmpp_2m(denoise, x, timesteps, eta, noise_fn, lower_order_final):
    """DPM-Solver++(2M), deterministic (eta = 0) or SDE (eta > 0): see dpmpp_2m and dpmpp_2m_sde."""
    schedule = denoise.schedule
    timesteps = list(timesteps)
    alpha, sigma = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    lam = np.log(alpha) - np.log(sigma)
    x0_prev, h_prev = None, None
    for i, j in zip(timesteps, timesteps[1:] + [None]):
        prediction = denoise(x, _batch_of(i, x))
        x0 = prediction["pred_xstart"]
        if j is None:
            yield {"sample": _shifted(x0, prediction), "pred_xstart": x0}
            return
        h = lam[j] - lam[i]
        direction = x0
        if x0_prev is not None and not (lower_order_final and j == timesteps[-1]):
            half_inv_r = h / (2 * h_prev)  # 1 / (2r)
            direction = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
        x = float(sigma[j] / sigma[i] * np.exp(-eta * h)) * x - float(alpha[j] * np.expm1(-h - eta * h)) * direction
        if eta > 0:
            x = x + float(sigma[j] * np.sqrt(-np.expm1(-2 * eta * h))) * noise_fn(x)
        x = _shifted(x, prediction)
        x0_prev, h_prev = x0, h
        yield {"sample": x, "pred_xstart": x0}


def _with_raised_steps(denoise, visit, churn, s_tmin, s_tmax):
    """Heun's churn on the discrete timesteps: (denoise over a diffusion that also keeps the raised
    timesteps, the visited steps as its indices, {visited index: raised index})."""
    schedule = denoise.schedule
    original = schedule.original_steps()
    visited = [original[i] for i in visit]
    alpha_bar = schedule.original_alphas_cumprod
    log_s = 0.5 * (np.log1p(-alpha_bar) - np.log(alpha_bar))  # log s of every original timestep
    gamma = min(churn / len(visit), math.sqrt(2) - 1)
    raised = {}
    for tau in visited:
        if s_tmin <= math.exp(log_s[tau]) <= s_tmax:
            target = int(np.abs(log_s - (log_s[tau] + math.log1p(gamma))).argmin())
            if target > tau:
                raised[tau] = target
    needed = set(visited) | set(raised.values())
    if not needed <= set(original):
        if not hasattr(denoise.diffusion, "keeping"):
            raise ValueError("heun's churn needs a respaced diffusion (SpacedDiffusion) to add its raised steps")
        denoise = denoise.over(denoise.diffusion.keeping(set(original) | needed))
    index = {tau: k for k, tau in enumerate(denoise.schedule.original_steps())}
    return denoise, [index[tau] for tau in visited], {index[tau]: index[hat] for tau, hat in raised.items()}


def _then(first, second):
    """x -> second(first(x)), first optional."""
    return second if first is None else (lambda x: second(first(x)))


def _shifted(sample, prediction):
    """A step's sample plus the after_step guides' shift, if any."""
    shift = prediction.get("sample_shift")
    return sample if shift is None else sample + shift


def _batch_of(i, x):
    """The timestep i for every example of x: [N] long."""
    return th.tensor([i] * x.shape[0], device=x.device)


def _nonzero(t, x):
    """[N, 1, 1, ...] float mask, 0 where t == 0 (the last step adds no noise)."""
    return (t != 0).float().view(-1, *[1] * (x.dim() - 1))


def _default_device(model):
    """The device of the model's parameters."""
    if isinstance(model, th.nn.Module):
        for param in model.parameters():
            return param.device
    raise ValueError("cannot infer the sampling device from this model: pass device=... (e.g. 'cuda')")
