"""Samplers: reverse-time solvers of a diffusion, all with one signature (as k-diffusion's).

    sampler(denoise, x, timesteps, *, noise_fn=torch.randn_like, **options) -> iterator of steps

denoise: a guidance.GuidedDenoiser, denoise(x, t) -> {"mean", "variance", "log_variance",
"pred_xstart"}, with the schedule as denoise.schedule; x: x_T [N, C, H, W]; timesteps: the schedule's
steps to visit, from the last down to 0 (normally all of them; respace the diffusion for fewer);
noise_fn(x) -> a standard normal tensor like x, used for every random draw. A sampler yields one dict
per step, {"sample": x after the step, "pred_xstart": its x_0 estimate}; `run` drives one to the end.
`sample` is the entry point; SAMPLERS maps the --sampler names to (sampler, where guidance acts).
"""

import numpy as np
import torch as th

from .guidance import GuidedDenoiser, as_guides
from .schedules import gather


def ddpm(denoise, x, timesteps, *, noise_fn=th.randn_like):
    """Ancestral sampling (Ho et al. 2020): x_{t-1} = mean + sigma_t z, no noise at t = 0."""
    return _markov_chain(lambda x_t, t: ddpm_step(denoise, x_t, t, noise_fn), x, timesteps)


def ddim(denoise, x, timesteps, *, noise_fn=th.randn_like, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 DDPM-like.

    Draws noise at every step even with eta = 0 (multiplied by zero), as the release does.
    """
    return _markov_chain(lambda x_t, t: ddim_step(denoise, x_t, t, noise_fn, eta), x, timesteps)


def dpmpp_2m(denoise, x, timesteps, *, noise_fn=th.randn_like):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep, on the data prediction x_0; deterministic.

    With alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma) and
    h = lambda_next - lambda: x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D, where
    D = x_0 at the first step and, with r = h_prev / h, D = (1 + 1 / (2r)) x_0 - (1 / (2r)) x_0_prev
    after it. The last step returns x_0 (as k-diffusion and diffusers do). noise_fn is unused.
    """
    schedule = denoise.schedule
    timesteps = list(timesteps)
    alpha, sigma = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    lam = np.log(alpha) - np.log(sigma)
    x0_prev, h_prev = None, None
    for step, (i, j) in enumerate(zip(timesteps, timesteps[1:] + [None])):
        x0 = denoise(x, _batch_of(i, x))["pred_xstart"]
        if j is None:
            yield {"sample": x0, "pred_xstart": x0}
            return
        h = lam[j] - lam[i]
        if x0_prev is None:
            direction = x0
        else:
            half_inv_r = h / (2 * h_prev)  # 1 / (2r)
            direction = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
        x = float(sigma[j] / sigma[i]) * x - float(alpha[j] * np.expm1(-h)) * direction
        x0_prev, h_prev = x0, h
        yield {"sample": x, "pred_xstart": x0}


def ddpm_step(denoise, x, t, noise_fn=th.randn_like):
    """One ancestral step x_t -> x_{t-1} at steps t [N]."""
    prediction = denoise(x, t)
    noise = noise_fn(x)
    spread = _nonzero(t, x) * th.exp(0.5 * prediction["log_variance"])
    return {"sample": prediction["mean"] + spread * noise, "pred_xstart": prediction["pred_xstart"]}


def ddim_step(denoise, x, t, noise_fn=th.randn_like, eta=0.0):
    """One DDIM step x_t -> x_{t-1} at steps t [N], eps re-derived from the (clipped) x_0."""
    schedule = denoise.schedule
    x0 = denoise(x, t)["pred_xstart"]
    eps = schedule.eps_from_xstart(x, t, x0)
    alpha_bar = gather(schedule.alphas_cumprod, t, x.shape)
    alpha_bar_prev = gather(schedule.alphas_cumprod_prev, t, x.shape)
    sigma = eta * th.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * th.sqrt(1 - alpha_bar / alpha_bar_prev)
    noise = noise_fn(x)
    deterministic = x0 * th.sqrt(alpha_bar_prev) + th.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    return {"sample": deterministic + _nonzero(t, x) * sigma * noise, "pred_xstart": x0}


def ddim_reverse_step(denoise, x, t):
    """One deterministic DDIM step forward in time, x_t -> x_{t+1} (the ODE run backwards)."""
    schedule = denoise.schedule
    x0 = denoise(x, t)["pred_xstart"]
    eps = schedule.eps_from_xstart(x, t, x0)
    alpha_bar_next = gather(schedule.alphas_cumprod_next, t, x.shape)
    return {"sample": x0 * th.sqrt(alpha_bar_next) + th.sqrt(1 - alpha_bar_next) * eps, "pred_xstart": x0}


SAMPLERS = {"ddpm": (ddpm, "mean"), "ddim": (ddim, "score"), "dpm++2m": (dpmpp_2m, "score")}


def resolve_sampler(sampler="ddpm", use_ddim=False):
    """The sampler named by --sampler and the release's --use_ddim (True means ddim)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use --sampler {', '.join(SAMPLERS)}")
    if use_ddim and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--use_ddim True asks for ddim but --sampler is {sampler!r}: give only one of them")
    return "ddim" if use_ddim else sampler


def sample(diffusion, model, shape, *, sampler="ddpm", guidance=(), noise=None, clip_denoised=True,
           denoised_fn=None, model_kwargs=None, device=None, progress=False, noise_fn=th.randn_like,
           callback=None):
    """Samples x_0 [*shape] with a named sampler over every step of the (respaced) diffusion.

    guidance: a guide or a sequence of guides (guidance.ClassifierGuidance, ClassifierFreeGuidance, or
    your own; see docs/guidance.md). noise: x_T (else noise_fn(torch.empty(shape))). callback: called
    after each step with {"i": step index, "sample", "pred_xstart"}. The other keywords are as in
    GaussianDiffusion.p_sample_loop.
    """
    steps = sample_steps(diffusion, model, shape, sampler=sampler, guidance=guidance, noise=noise,
                         clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                         device=device, progress=progress, noise_fn=noise_fn)
    return run(steps, callback)


def sample_steps(diffusion, model, shape, *, sampler="ddpm", guidance=(), cond_fn=None, noise=None,
                 clip_denoised=True, denoised_fn=None, model_kwargs=None, device=None, progress=False,
                 noise_fn=th.randn_like, **options):
    """Like sample, but yields every step's dict; cond_fn: a release-style guide; options go to the
    sampler (e.g. eta=... for ddim)."""
    solver, guided_on = SAMPLERS[resolve_sampler(sampler)]
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple or list like (N, C, H, W), got {shape!r}")
    denoise = GuidedDenoiser(diffusion.denoiser, model, as_guides(guidance, cond_fn), on=guided_on,
                             clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    if device is None:
        device = _default_device(model, noise)
    x = noise if noise is not None else noise_fn(th.empty(shape, device=device))
    steps = solver(denoise, x, range(diffusion.num_timesteps - 1, -1, -1), noise_fn=noise_fn, **options)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=diffusion.num_timesteps)
    with th.no_grad():
        yield from steps


def run(steps, callback=None):
    """Drive a sampler's steps to the end; returns the last "sample"."""
    out = None
    for i, out in enumerate(steps):
        if callback is not None:
            callback({"i": i, **out})
    return out["sample"]


def _markov_chain(step, x, timesteps):
    """Yield step(x_t, t) for each timestep, feeding each "sample" into the next step."""
    for i in timesteps:
        out = step(x, _batch_of(i, x))
        yield out
        x = out["sample"]


def _batch_of(i, x):
    """The timestep i for every example of x: [N] long."""
    return th.tensor([i] * x.shape[0], device=x.device)


def _nonzero(t, x):
    """[N, 1, 1, ...] float mask, 0 where t == 0 (the last step adds no noise)."""
    return (t != 0).float().view(-1, *[1] * (x.dim() - 1))


def _default_device(model, noise):
    """The device of the given x_T, else of the model's parameters."""
    if noise is not None:
        return noise.device
    if isinstance(model, th.nn.Module):
        for param in model.parameters():
            return param.device
    raise ValueError("cannot infer the sampling device from this model: pass device=... (e.g. 'cuda')")
