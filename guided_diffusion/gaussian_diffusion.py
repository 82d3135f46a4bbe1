"""Gaussian diffusion (DDPM, improved DDPM, ADM): the release's `GaussianDiffusion` interface, as a face
over this package's parts, plus the training losses and the variational bound in bits per dimension.

The parts: `schedules` (the float64 tables), `denoiser` (model output -> predictions), `samplers`
(DDPM, DDIM, DPM-Solver++ with one signature) and `guidance` (classifier and classifier-free
guidance, release-style cond_fn). Results agree with the release to the last float.

Notation: T = num_timesteps, t in [0, T), alpha_bar_t = alphas_cumprod[t]; x: [N, C, H, W] (any
trailing shape works), t: [N] long.
"""

import enum

import numpy as np
import torch as th

from . import samplers
from .denoiser import Denoiser, ModelMeanType, ModelVarType
from .guidance import GuidedDenoiser, as_guides, shift_mean, shift_score
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import Schedule, betas_for_alpha_bar, gather, get_named_beta_schedule

_extract_into_tensor = gather  # the release's name: table [T] at timesteps t [N], float32, broadcast to a shape

__all__ = [
    "GaussianDiffusion", "LossType", "ModelMeanType", "ModelVarType", "betas_for_alpha_bar",
    "get_named_beta_schedule",
]

# The schedule's tables, readable as attributes of the diffusion (the release's names).
_SCHEDULE_ATTRIBUTES = frozenset(
    "betas num_timesteps alphas_cumprod alphas_cumprod_prev alphas_cumprod_next sqrt_alphas_cumprod "
    "sqrt_one_minus_alphas_cumprod log_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod "
    "sqrt_recipm1_alphas_cumprod posterior_variance posterior_log_variance_clipped posterior_mean_coef1 "
    "posterior_mean_coef2 timestep_map original_num_steps".split()
)


class LossType(enum.Enum):
    MSE = enum.auto()  # MSE on the mean target (+ the vb term when the variance is learned)
    RESCALED_MSE = enum.auto()  # same, vb term scaled by T / 1000 (--rescale_learned_sigmas)
    KL = enum.auto()  # the variational bound term alone
    RESCALED_KL = enum.auto()  # the variational bound term times T, for the whole bound

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


class GaussianDiffusion:
    """Training and sampling utilities of one diffusion process.

    betas: [T] float64 noise schedule (see get_named_beta_schedule).
    model_mean_type, model_var_type, loss_type: a ModelMeanType, ModelVarType and LossType.
    rescale_timesteps: call the model with t * 1000 / T (float) instead of the integer t, so that
    models see the same timestep range whatever T is.
    The schedule's float64 tables (betas, alphas_cumprod, posterior_variance, ...) read as attributes.
    """

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self._set_schedule(self._make_schedule(betas))

    def _make_schedule(self, betas):
        return Schedule(betas)

    def _set_schedule(self, schedule):
        self.schedule = schedule
        self.denoiser = Denoiser(schedule, self.model_mean_type, self.model_var_type)

    def __getattr__(self, name):
        if name in _SCHEDULE_ATTRIBUTES and "schedule" in vars(self):
            return getattr(self.schedule, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------------------------------------
    # Forward process q and the posterior

    def q_mean_variance(self, x_start, t):
        """Mean, variance and log-variance of q(x_t | x_0), each shaped like x_start."""
        shape = x_start.shape
        return (
            gather(self.schedule.sqrt_alphas_cumprod, t, shape) * x_start,
            gather(1.0 - self.schedule.alphas_cumprod, t, shape),
            gather(self.schedule.log_one_minus_alphas_cumprod, t, shape),
        )

    def q_sample(self, x_start, t, noise=None):
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        noise = th.randn_like(x_start) if noise is None else noise
        if noise.shape != x_start.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have x_start's shape {tuple(x_start.shape)}")
        signal = gather(self.schedule.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        return signal + gather(self.schedule.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        return self.schedule.posterior(x_start, x_t, t)

    # ----------------------------------------------------------------------------------------
    # Reverse process p (see denoiser.Denoiser). Every sampler and loss reads the model through
    # p_mean_variance (and _scale_timesteps), guidance through condition_mean / condition_score: a
    # subclass that overrides them changes every sampler, as in the release.

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the model to get p(x_{t-1} | x_t) and the predicted x_0.

        model(x, self._scale_timesteps(t), **model_kwargs) -> [N, C or 2C, ...]. clip_denoised clamps
        the predicted x_0 to [-1, 1]; denoised_fn, if given, is applied to it before clamping.
        Returns a dict of tensors shaped like x: "mean", "variance", "log_variance", "pred_xstart".
        """
        output = model(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return self.denoiser.predict(output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    def _fixed_variance(self):
        return self.denoiser.fixed_variance()

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return self.schedule.xstart_from_eps(x_t, t, eps)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return self.schedule.xstart_from_xprev(x_t, t, xprev)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return self.schedule.eps_from_xstart(x_t, t, pred_xstart)

    def _scale_timesteps(self, t):
        """The timesteps the model sees: t, or t * 1000 / T as float with rescale_timesteps."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ----------------------------------------------------------------------------------------
    # Classifier guidance. cond_fn(x, t, **model_kwargs) -> grad_x log p(y | x_t) (times the scale),
    # called with the timesteps the model sees. See guidance.py for the general guide API.

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Guided DDPM mean: mean + variance * grad (Sohl-Dickstein et al.; Dhariwal & Nichol Alg. 1).

        Returns the new mean [N, ...] (float32)."""
        return shift_mean(p_mean_var, cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {})))

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Guided score for DDIM (Dhariwal & Nichol Alg. 2): eps <- eps - sqrt(1 - alpha_bar_t) * grad.

        Returns a copy of p_mean_var with "pred_xstart" and "mean" recomputed from the new eps.
        """
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return shift_score(self.schedule, p_mean_var, x, t, gradient)

    # ----------------------------------------------------------------------------------------
    # Samplers (see samplers.py). Steps return {"sample": x_{t-1}, "pred_xstart": x_0 estimate}.
    # noise_fn(x) -> a standard normal tensor like x; every random draw goes through it (default
    # th.randn_like, which reproduces the release's random stream). The loops call p_sample and
    # ddim_sample at every step, so that a subclass overriding those changes the loops too.

    def _bind(self, model, cond_fn, on, clip_denoised, denoised_fn, model_kwargs):
        """The guided denoiser the sampler steps call."""
        return GuidedDenoiser(self, model, as_guides(cond_fn=cond_fn), on=on, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn, model_kwargs=model_kwargs)

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 noise_fn=th.randn_like):
        """One ancestral (DDPM) step: x_{t-1} = mean + sigma_t * z (no noise at t = 0)."""
        denoise = self._bind(model, cond_fn, "mean", clip_denoised, denoised_fn, model_kwargs)
        return samplers.ddpm_step(denoise, x, t, noise_fn)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, noise_fn=th.randn_like):
        """One DDIM step (Song et al. eq. 12); eta = 0 is deterministic, eta = 1 is DDPM-like."""
        denoise = self._bind(model, cond_fn, "score", clip_denoised, denoised_fn, model_kwargs)
        return samplers.ddim_step(denoise, x, t, noise_fn, eta)

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """One deterministic DDIM step forward in time, x_t -> x_{t+1} (the ODE run backwards)."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample follows the deterministic ODE only: use eta=0.0")
        denoise = self._bind(model, None, "score", clip_denoised, denoised_fn, model_kwargs)
        return samplers.ddim_reverse_step(denoise, x, t)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, noise_fn=th.randn_like):
        """Samples [*shape] from the model by ancestral sampling over all T steps.

        noise: optional x_T (else noise_fn(th.empty(shape))); device: defaults to the model's.
        """
        return samplers.run(self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress, noise_fn))

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  noise_fn=th.randn_like):
        """Like p_sample_loop, but yields every step's p_sample dict, from t = T - 1 down to 0."""
        def step(x, t):
            return self.p_sample(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                 cond_fn=cond_fn, model_kwargs=model_kwargs, noise_fn=noise_fn)

        return self._loop(step, model, shape, noise, device, progress, noise_fn)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, noise_fn=th.randn_like):
        """Samples [*shape] from the model with DDIM over all T steps (see p_sample_loop)."""
        return samplers.run(self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress, eta,
            noise_fn))

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     noise_fn=th.randn_like):
        """Like ddim_sample_loop, but yields every step's ddim_sample dict."""
        def step(x, t):
            return self.ddim_sample(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                    cond_fn=cond_fn, model_kwargs=model_kwargs, eta=eta, noise_fn=noise_fn)

        return self._loop(step, model, shape, noise, device, progress, noise_fn)

    def _loop(self, step, model, shape, noise, device, progress, noise_fn):
        """Yield step(x_t, t) from t = T - 1 down to 0 without gradients, x_T = noise or noise_fn(empty)."""
        x = samplers.initial_noise(model, shape, noise, device, noise_fn)
        steps = samplers.markov_chain(step, x, range(self.num_timesteps - 1, -1, -1))
        return samplers.without_grad(samplers.with_progress(steps, self.num_timesteps, progress))

    # ----------------------------------------------------------------------------------------
    # Losses and the variational bound

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the variational bound, in bits per dimension: [N].

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the discretized decoder NLL
        -log p(x_0 | x_1) at t = 0. Returns {"output": [N], "pred_xstart": [N, ...]}.
        """
        prediction = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        return {"output": self._bound_term(prediction, x_start, x_t, t), "pred_xstart": prediction["pred_xstart"]}

    def _bound_term(self, prediction, x_start, x_t, t):
        """The bound's term at t (bits per dimension, [N]) of a p_mean_variance prediction."""
        true_mean, _, true_log_variance = self.schedule.posterior(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, prediction["mean"], prediction["log_variance"])
        log_likelihood = discretized_gaussian_log_likelihood(
            x_start, means=prediction["mean"], log_scales=0.5 * prediction["log_variance"]
        )
        decoder_nll = mean_flat(-log_likelihood) / np.log(2.0)
        return th.where(t == 0, decoder_nll, mean_flat(kl) / np.log(2.0))

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Training losses of one batch at timesteps t [N].

        Returns a dict of [N] tensors: "loss", and "mse" / "vb" where they apply. With a learned
        variance and an MSE loss, the vb term (the hybrid loss) sees the predicted mean detached so
        that it trains only the variance.
        """
        model_kwargs = model_kwargs or {}
        noise = th.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise=noise)
        if self.loss_type.is_vb():
            bound = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)
            loss = bound["output"]
            return {"loss": loss * self.num_timesteps if self.loss_type == LossType.RESCALED_KL else loss}
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)

        output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        mean_output, variance_output = self.denoiser.split(output, x_t)
        terms = {"mse": mean_flat((self._mse_target(x_start, x_t, t, noise) - mean_output) ** 2)}
        if variance_output is None:
            terms["loss"] = terms["mse"]
            return terms
        # The hybrid loss: the bound trains the variance only (the mean is detached).
        frozen = self.denoiser.predict(th.cat([mean_output.detach(), variance_output], dim=1), x_t, t,
                                       clip_denoised=False)
        terms["vb"] = self._bound_term(frozen, x_start, x_t, t)
        if self.loss_type == LossType.RESCALED_MSE:
            terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)  # the paper's weight at T = 1000
        terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def _mse_target(self, x_start, x_t, t, noise):
        """What the mean channels should output at x_t."""
        if self.model_mean_type == ModelMeanType.EPSILON:
            return noise
        if self.model_mean_type == ModelMeanType.START_X:
            return x_start
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self.schedule.posterior(x_start, x_t, t)[0]
        raise NotImplementedError(self.model_mean_type)

    def _prior_bpd(self, x_start):
        """KL(q(x_{T-1} | x_0) || N(0, I)) in bits per dimension: [N]. Not trainable."""
        last = th.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=th.long)
        mean, _, log_variance = self.q_mean_variance(x_start, last)
        return mean_flat(normal_kl(mean1=mean, logvar1=log_variance, mean2=0.0, logvar2=0.0)) / np.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """The whole variational bound of x_start [N, ...] in bits per dimension, plus diagnostics.

        Returns a dict: "total_bpd" [N] (= prior_bpd + vb.sum(1)), "prior_bpd" [N], and per timestep
        [N, T]: "vb" (the bound's terms), "xstart_mse", "mse" (of the implied eps). As in the release,
        column j of these holds timestep T - 1 - j.
        """
        columns = {"vb": [], "xstart_mse": [], "mse": []}
        for i in reversed(range(self.num_timesteps)):
            t = th.full((x_start.shape[0],), i, device=x_start.device, dtype=th.long)
            noise = th.randn_like(x_start)
            x_t = self.q_sample(x_start=x_start, t=t, noise=noise)
            with th.no_grad():
                term = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised,
                                          model_kwargs=model_kwargs)
            eps = self.schedule.eps_from_xstart(x_t, t, term["pred_xstart"])
            columns["vb"].append(term["output"])
            columns["xstart_mse"].append(mean_flat((term["pred_xstart"] - x_start) ** 2))
            columns["mse"].append(mean_flat((eps - noise) ** 2))
        result = {name: th.stack(values, dim=1) for name, values in columns.items()}
        result["prior_bpd"] = self._prior_bpd(x_start)
        result["total_bpd"] = result["vb"].sum(dim=1) + result["prior_bpd"]
        return result
