"""Restoration and editing with a trained diffusion model as the prior: DPS, RePaint, GLIDE's inpainting,
SDEdit and DDIM inversion, each a small function over the samplers (samplers.py) and the guides (guidance.py).

Images are x [N, C, H, W] in [-1, 1]; `diffusion` is a (respaced) GaussianDiffusion whose steps the
methods walk; `model(x, t, **model_kwargs)` as the samplers take it; `guidance` is any guide or list
of guides (classifier, classifier-free, clean-image, measurement), which apply under every method.
Formulas: SPEC.md, "Beyond the release, second part"; docs/editing.md.
"""

import torch as th

from .. import samplers
from ..guidance import CleanImageGuidance, GuidedDenoiser, MeasurementGuidance, as_guides
from ..schedules import gather


def dps(diffusion, model, shape, forward, measurement, zeta, *, guidance=(), **sample_keywords):
    """DPS (Chung et al. 2023) for y = A(x_0) + n under any sampler: after each step to x'_{t-1},
    x_{t-1} = x'_{t-1} - zeta * grad_{x_t} ||y - A(x0_hat(x_t))||_2, the gradient taken through the model.

    shape: (N, C, H, W) of the outputs; forward: A, x [N, C, H, W] -> y (an editing/operators.py operator's `A`);
    measurement: y [N, ...]; zeta: the step size (order 0.1 to 1 at 1000 steps; larger for fewer steps);
    guidance: more guides; sample_keywords: samplers.sample's (sampler, noise, noise_fn, model_kwargs, ...).
    Returns x_0 [N, C, H, W].
    """
    guides = (MeasurementGuidance(forward, measurement, zeta), *as_guides(guidance))
    return samplers.sample(diffusion, model, tuple(shape), guidance=guides, **sample_keywords)


def repaint_states(num_steps, jump_length=10, resamplings=10):
    """RePaint's walk over the states of a num_steps-step diffusion: a list of ints from num_steps (pure
    noise) down to 0 (the output).

    State s holds x at the noise level alpha_bar_{s-1} of step s - 1 (state 0: the clean image). The walk
    goes down one state at a time; each time it reaches a state s that is a multiple of jump_length with
    s + jump_length <= num_steps, it goes back up jump_length states and down again, resamplings - 1
    times (resamplings = 1: no resampling, plain DDPM). Model evaluations: the number of down moves,
    num_steps + (resamplings - 1) * jump_length * (the number of such states).
    """
    if jump_length < 1 or resamplings < 1:
        raise ValueError(f"RePaint needs --jump_length >= 1 and --resamplings >= 1, got {jump_length} and "
                         f"{resamplings} (1 resampling: none)")
    states = [num_steps]
    for s in range(num_steps - 1, -1, -1):
        states.append(s)
        if s % jump_length == 0 and s + jump_length <= num_steps:
            up_and_down = list(range(s + 1, s + jump_length + 1)) + list(range(s + jump_length - 1, s - 1, -1))
            states.extend(up_and_down * (resamplings - 1))
    return states


def repaint(diffusion, model, measurement, known_mask, *, jump_length=10, resamplings=10, guidance=(), noise=None,
            noise_fn=th.randn_like, clip_denoised=True, denoised_fn=None, model_kwargs=None, progress=False):
    """RePaint (Lugmayr et al. 2022): inpainting with an unconditionally trained model.

    Going down from state s (see repaint_states) to s - 1:
        x_{s-1} = m * q(y | s - 1) + (1 - m) * p_theta(x_{s-1} | x_s),
    q(y | s - 1) = sqrt(alpha_bar) y + sqrt(1 - alpha_bar) z the known image noised to that level (y itself
    at state 0, so the known pixels of the output are y's exactly), p_theta one DDPM step
    (samplers.ddpm_step, guides applied on its mean); going up from s to s + 1 with
    q(x_{s+1} | x_s) = N(sqrt(1 - beta_s) x_s, beta_s I), beta_s the (respaced) schedule's.

    measurement: y [N, C, H, W] (holes may hold anything); known_mask: m [1 or N, 1, H, W], 1 = known;
    noise: x at state num_steps (default noise_fn(y)); noise_fn draws every random number, in the order
    step noise, known-image noise per down move and one draw per up move. Returns x_0 [N, C, H, W].
    """
    denoise = GuidedDenoiser(diffusion, model, as_guides(guidance), on="mean", clip_denoised=clip_denoised,
                             denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    states = repaint_states(diffusion.num_timesteps, jump_length, resamplings)
    x = noise_fn(measurement) if noise is None else noise
    mask = known_mask.to(device=x.device, dtype=x.dtype)
    steps = _repaint_moves(denoise, x, measurement, mask, states, noise_fn)
    return samplers.run(samplers.without_grad(samplers.with_progress(steps, len(states) - 1, progress)))


def _repaint_moves(denoise, x, known, mask, states, noise_fn):
    """Yield {"sample", "pred_xstart"} after each move of the walk `states` (see repaint)."""
    schedule = denoise.schedule
    pred_xstart = None
    for here, there in zip(states, states[1:]):
        t = th.full((x.shape[0],), min(here, there), device=x.device, dtype=th.long)
        if there < here:
            step = samplers.ddpm_step(denoise, x, t, noise_fn)
            alpha_bar = gather(schedule.alphas_cumprod_prev, t, x.shape)
            noised_known = alpha_bar.sqrt() * known + (1 - alpha_bar).sqrt() * noise_fn(known)
            x, pred_xstart = mask * noised_known + (1 - mask) * step["sample"], step["pred_xstart"]
        else:
            beta = gather(schedule.betas, t, x.shape)
            x = (1 - beta).sqrt() * x + beta.sqrt() * noise_fn(x)
        yield {"sample": x, "pred_xstart": pred_xstart}


def glide_inpaint(diffusion, model, shape, measurement, known_mask, *, model_kwargs=None, denoised_fn=None,
                  dynamic_threshold=None, **sample_keywords):
    """GLIDE's inpainting (Nichol et al. 2022) with a model trained to inpaint (text/model.py's TextUNet with
    inpaint=True), under any sampler and any guidance: the known pixels y = m * x and the mask m are the
    model's inpaint_image / inpaint_mask inputs at every step (both branches of classifier-free guidance),
    and every x_0 the sampler derives is replaced by the known pixels where they are known:
    x0_hat <- (1 - m) * x0_hat + m * y (after denoised_fn and dynamic thresholding, so the output's known
    pixels are y's exactly).

    shape: (N, C, H, W) of the outputs; measurement: y [N, C, H, W] (holes may hold anything); known_mask:
    m [1 or N, 1, H, W], 1 = known; model_kwargs: the caption's {"tokens", "mask"}; sample_keywords:
    samplers.sample's (sampler, noise, noise_fn, guidance, ...). Returns x_0 [N, C, H, W].
    """
    n = shape[0]
    mask = known_mask.to(device=measurement.device, dtype=measurement.dtype).expand(n, 1, *shape[2:])
    known = mask * measurement
    finish = [f for f in (denoised_fn, dynamic_threshold and samplers.dynamic_thresholding(dynamic_threshold)) if f]

    def keep_known(x0):
        for f in finish:
            x0 = f(x0)
        return (1 - mask) * x0 + mask * known

    model_kwargs = dict(model_kwargs or {}, inpaint_image=known, inpaint_mask=mask)
    return samplers.sample(diffusion, model, tuple(shape), denoised_fn=keep_known, model_kwargs=model_kwargs,
                           **sample_keywords)


def sdedit_start_step(diffusion, strength):
    """The (respaced) step SDEdit starts from, or None for strength 0 (the input is returned).

    t0 = strength * T in the original process, i.e. original timestep strength * T - 1 (strength 1: T - 1,
    pure noise); the kept step whose original timestep is nearest to it (the lower one on a tie).
    """
    check_strength(strength)
    if strength == 0:
        return None
    target = strength * diffusion.schedule.original_num_steps - 1
    original = diffusion.schedule.original_steps()
    return min(range(len(original)), key=lambda i: (abs(original[i] - target), i))


def check_strength(strength):
    """Raise ValueError unless 0 <= strength <= 1."""
    if not 0 <= strength <= 1:
        raise ValueError(f"--strength {strength} is outside [0, 1]: give 0 (keep the input) to 1 (ignore it), "
                         "e.g. 0.5")


def sdedit(diffusion, model, x, strength, *, noise=None, noise_fn=th.randn_like, **sample_keywords):
    """SDEdit (Meng et al. 2022): noise x [N, C, H, W] to t0 with q(x_t0 | x_0) =
    N(sqrt(alpha_bar_t0) x, (1 - alpha_bar_t0) I), then sample from t0 down to 0 with any sampler and any
    guidance (sample_keywords: samplers.sample's; model_kwargs={"y": target} with a class guide edits toward
    a class). strength in [0, 1]: 0 returns x, 1 keeps only x's sqrt(alpha_bar_{T-1}) share of the start.

    noise: the z of q(x_t0 | x_0) (default noise_fn(x)). Returns x_0 [N, C, H, W].
    """
    start = sdedit_start_step(diffusion, strength)
    if start is None:
        return x
    z = noise_fn(x) if noise is None else noise
    t0 = th.full((x.shape[0],), start, device=x.device, dtype=th.long)
    noised = diffusion.q_sample(x, t0, noise=z)
    return samplers.sample(diffusion, model, tuple(x.shape), noise=noised, noise_fn=noise_fn, start_step=start,
                           **sample_keywords)


def reconstruct(diffusion, model, x, *, clip_denoised=True, model_kwargs=None, noise_fn=th.randn_like,
                progress=False):
    """DDIM inversion of x [N, C, H, W] to x_T (samplers.invert), then deterministic DDIM sampling from
    it (eta = 0). Returns (the reconstruction x_0, the latent x_T), both [N, C, H, W]; the
    reconstruction error falls as the (respaced) steps grow."""
    latent = samplers.invert(diffusion, model, x, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                             progress=progress)
    back = samplers.sample(diffusion, model, tuple(x.shape), sampler="ddim", noise=latent,
                           clip_denoised=clip_denoised, model_kwargs=model_kwargs, noise_fn=noise_fn,
                           progress=progress)
    return back, latent


def check_loss(loss, shape, model_kwargs=None, device=None):
    """Raise the guide's ValueError now if loss(x0 [n, C, H, W], **model_kwargs) does not return one value
    per sample: a dry run of CleanImageGuidance(loss) on zeros of `shape` (n = shape[0]) on `device`,
    through a path that has a gradient, as during sampling."""
    x = th.zeros(shape, device=device).requires_grad_(True)
    CleanImageGuidance(loss, 1.0)(x, None, {"pred_xstart": x * 1}, **(model_kwargs or {}))


def with_label(model, label):
    """model(x, t, **kwargs) that always sees the class `label` (e.g. model.null_class, the unconditional
    branch), whatever y the guides read from model_kwargs (a target class for a clean classifier). Not
    for classifier-free guidance, whose two branches it would both relabel."""

    def labelled(x, t, y=None, **kwargs):
        return model(x, t, y=th.full((x.shape[0],), label, device=x.device, dtype=th.long), **kwargs)

    return labelled
