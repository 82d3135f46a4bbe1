"""Gaussian diffusion as in DDPM, improved DDPM and ADM: noise schedules, the forward process q,
the learned reverse process p, the DDPM and DDIM samplers (with classifier guidance through
``cond_fn``), the training losses and the variational bound in bits per dimension.

The arithmetic follows the paper's release operation by operation so that results agree with it to
the last float: schedules are float64 numpy arrays, gathered at the batch's timesteps and only then
cast to float32 (``_extract_into_tensor``).

Notation: T = num_timesteps, t in [0, T), alpha_bar_t = alphas_cumprod[t]; x: [N, C, H, W] (any
trailing shape works), t: [N] long.
"""

import enum
import functools
import math

import numpy as np
import torch as th

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas [T] (float64) of a named schedule.

    "linear": Ho et al.'s 1e-4 .. 0.02 over 1000 steps, both ends scaled by 1000 / T so that any T
    gives the same overall noise. "cosine": Nichol & Dhariwal's alpha_bar(t) = cos((t + 0.008) / 1.008
    * pi / 2)^2, betas clipped at 0.999.
    """
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        beta_start = scale * 0.0001
        beta_end = scale * 0.02
        return np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    raise NotImplementedError(
        f"unknown beta schedule {schedule_name!r}: use --noise_schedule linear or cosine"
    )


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Betas [T] discretizing a continuous alpha_bar: [0, 1] -> (0, 1] (cumulative product of 1 - beta).

    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta); the cap avoids the
    singularity at t = 1.
    """
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


class ModelMeanType(enum.Enum):
    """What the model's (first C) output channels predict."""

    PREVIOUS_X = enum.auto()  # the posterior mean of x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise added to x_0


class ModelVarType(enum.Enum):
    """How the reverse-process variance is obtained.

    LEARNED and LEARNED_RANGE read C extra output channels: a log-variance, or v in [-1, 1]
    interpolating log(beta_t) and log(posterior variance) (improved DDPM).
    """

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()  # the posterior variance beta~_t
    FIXED_LARGE = enum.auto()  # beta_t (posterior variance at t = 0)
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()  # MSE on the mean target (+ the vb term when the variance is learned)
    RESCALED_MSE = enum.auto()  # same, vb term scaled by T / 1000 (--rescale_learned_sigmas)
    KL = enum.auto()  # the variational bound term alone
    RESCALED_KL = enum.auto()  # the variational bound term times T, for the whole bound

    def is_vb(self):
        return self == LossType.KL or self == LossType.RESCALED_KL


class GaussianDiffusion:
    """Utilities for training and sampling a diffusion model.

    betas: [T] float64 noise schedule (see get_named_beta_schedule).
    model_mean_type, model_var_type, loss_type: a ModelMeanType, ModelVarType and LossType.
    rescale_timesteps: call the model with t * 1000 / T (float) instead of the integer t, so that
    models see the same timestep range whatever T is.
    """

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with every value in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, so the log uses the t = 1 value there.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # ----------------------------------------------------------------------------------------
    # Forward process q

    def q_mean_variance(self, x_start, t):
        """Mean, variance and log-variance of q(x_t | x_0), each shaped like x_start."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        if noise is None:
            noise = th.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        assert x_start.shape == x_t.shape
        posterior_mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = _extract_into_tensor(
            self.posterior_log_variance_clipped, t, x_t.shape
        )
        assert (
            posterior_mean.shape[0]
            == posterior_variance.shape[0]
            == posterior_log_variance_clipped.shape[0]
            == x_start.shape[0]
        )
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    # ----------------------------------------------------------------------------------------
    # Reverse process p

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the model to get p(x_{t-1} | x_t) and the predicted x_0.

        model(x, timesteps, **model_kwargs) -> [N, C or 2C, ...]. clip_denoised clamps the predicted
        x_0 to [-1, 1]; denoised_fn, if given, is applied to it before clamping.
        Returns a dict of tensors shaped like x: "mean", "variance", "log_variance", "pred_xstart".
        """
        if model_kwargs is None:
            model_kwargs = {}
        B, C = x.shape[:2]
        assert t.shape == (B,)
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            _check_learned_sigma_output(model_output, x)
            model_output, model_var_values = th.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = model_var_values
            else:
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
                frac = (model_var_values + 1) / 2  # v in [-1, 1] -> [0, 1]
                model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = th.exp(model_log_variance)
        else:
            variance, log_variance = self._fixed_variance()
            model_variance = _extract_into_tensor(variance, t, x.shape)
            model_log_variance = _extract_into_tensor(log_variance, t, x.shape)

        def process_xstart(x_start):
            if denoised_fn is not None:
                x_start = denoised_fn(x_start)
            if clip_denoised:
                return x_start.clamp(-1, 1)
            return x_start

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output))
            model_mean = model_output
        elif self.model_mean_type in (ModelMeanType.START_X, ModelMeanType.EPSILON):
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        else:
            raise NotImplementedError(self.model_mean_type)

        assert model_mean.shape == model_log_variance.shape == pred_xstart.shape == x.shape
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def _fixed_variance(self):
        """(variance [T], log-variance [T]) numpy arrays of a fixed variance type."""
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            # beta_t, with the posterior variance at t = 0 for a better decoder log-likelihood.
            variance = np.append(self.posterior_variance[1], self.betas[1:])
            return variance, np.log(variance)
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return self.posterior_variance, self.posterior_log_variance_clipped
        raise NotImplementedError(self.model_var_type)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        assert x_t.shape == eps.shape
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        assert x_t.shape == xprev.shape
        return (  # inverts posterior mean = coef1 * x_0 + coef2 * x_t
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _scale_timesteps(self, t):
        """The timesteps the model sees: t, or t * 1000 / T as float with rescale_timesteps."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ----------------------------------------------------------------------------------------
    # Classifier guidance. cond_fn(x, t, **model_kwargs) -> grad_x log p(y | x_t) (times the scale).

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Guided DDPM mean: mean + variance * grad (Sohl-Dickstein et al.; Dhariwal & Nichol Alg. 1)."""
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Guided score for DDIM (Dhariwal & Nichol Alg. 2): eps <- eps - sqrt(1 - alpha_bar_t) * grad.

        Returns a copy of p_mean_var with "pred_xstart" and "mean" recomputed from the new eps.
        """
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        out = p_mean_var.copy()
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(x_start=out["pred_xstart"], x_t=x, t=t)
        return out

    # ----------------------------------------------------------------------------------------
    # Samplers. Each step maps x_t to {"sample": x_{t-1}, "pred_xstart": x_0 estimate}.
    # noise_fn(x) -> a standard normal tensor like x; every random draw goes through it (default
    # th.randn_like, which reproduces the release's random stream).

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 noise_fn=th.randn_like):
        """One ancestral (DDPM) step: x_{t-1} = mean + sigma_t * z (no noise at t = 0)."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        noise = noise_fn(x)
        nonzero_mask = _nonzero_mask(t, x)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + nonzero_mask * th.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, noise_fn=th.randn_like):
        """One DDIM step (Song et al. eq. 12); eta = 0 is deterministic, eta = 1 is DDPM-like."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        # Re-derive eps from the (possibly clipped) x_0 estimate.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = (
            eta
            * th.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * th.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        noise = noise_fn(x)  # drawn even when eta = 0, as the release does
        mean_pred = out["pred_xstart"] * th.sqrt(alpha_bar_prev) + th.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        sample = mean_pred + _nonzero_mask(t, x) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """One deterministic DDIM step forward in time, x_t -> x_{t+1} (the ODE run backwards)."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample follows the deterministic ODE only: use eta=0.0")
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean_pred = out["pred_xstart"] * th.sqrt(alpha_bar_next) + th.sqrt(1 - alpha_bar_next) * eps
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, noise_fn=th.randn_like):
        """Samples [*shape] from the model by ancestral sampling over all T steps.

        noise: optional x_T (else noise_fn(th.empty(shape))); device: defaults to the model's.
        """
        return _last(self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress,
            noise_fn=noise_fn,
        ))["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  noise_fn=th.randn_like):
        """Like p_sample_loop, but yields every step's p_sample dict, from t = T - 1 down to 0."""
        step = functools.partial(
            self.p_sample, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, noise_fn=noise_fn,
        )
        yield from self._sample_loop_progressive(step, model, shape, noise, device, progress, noise_fn)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, noise_fn=th.randn_like):
        """Samples [*shape] from the model with DDIM over all T steps (see p_sample_loop)."""
        return _last(self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
            noise_fn=noise_fn,
        ))["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     noise_fn=th.randn_like):
        """Like ddim_sample_loop, but yields every step's ddim_sample dict."""
        step = functools.partial(
            self.ddim_sample, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, eta=eta, noise_fn=noise_fn,
        )
        yield from self._sample_loop_progressive(step, model, shape, noise, device, progress, noise_fn)

    def _sample_loop_progressive(self, step, model, shape, noise, device, progress, noise_fn):
        """The reverse-time loop shared by every sampler: step(model, x_t, t) -> {"sample": ...}."""
        if device is None:
            device = _default_device(model, noise)
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list like (N, C, H, W), got {shape!r}")
        img = noise if noise is not None else noise_fn(th.empty(shape, device=device))
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        for i in indices:
            t = th.tensor([i] * shape[0], device=device)
            with th.no_grad():
                out = step(model, img, t)
                yield out
                img = out["sample"]

    # ----------------------------------------------------------------------------------------
    # Losses and the variational bound

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the variational bound, in bits per dimension: [N].

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the discretized decoder NLL
        -log p(x_0 | x_1) at t = 0. Returns {"output": [N], "pred_xstart": [N, ...]}.
        """
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / np.log(2.0)

        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        assert decoder_nll.shape == x_start.shape
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)

        output = th.where((t == 0), decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Training losses of one batch at timesteps t [N].

        Returns a dict of [N] tensors: "loss", and "mse" / "vb" where they apply. With a learned
        variance and an MSE loss, the vb term (the hybrid loss) sees the predicted mean detached so
        that it trains only the variance.
        """
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = th.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)

        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(
                model=model, x_start=x_start, x_t=x_t, t=t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] *= self.num_timesteps
        elif self.loss_type in (LossType.MSE, LossType.RESCALED_MSE):
            model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
            if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
                _check_learned_sigma_output(model_output, x_t)
                model_output, model_var_values = th.split(model_output, x_t.shape[1], dim=1)
                frozen_out = th.cat([model_output.detach(), model_var_values], dim=1)
                terms["vb"] = self._vb_terms_bpd(
                    model=lambda *_, r=frozen_out: r, x_start=x_start, x_t=x_t, t=t, clip_denoised=False
                )["output"]
                if self.loss_type == LossType.RESCALED_MSE:
                    # Keeps the vb term's weight independent of T (the paper uses T = 1000).
                    terms["vb"] *= self.num_timesteps / 1000.0

            if self.model_mean_type == ModelMeanType.PREVIOUS_X:
                target = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0]
            elif self.model_mean_type == ModelMeanType.START_X:
                target = x_start
            elif self.model_mean_type == ModelMeanType.EPSILON:
                target = noise
            else:
                raise NotImplementedError(self.model_mean_type)
            assert model_output.shape == target.shape == x_start.shape
            terms["mse"] = mean_flat((target - model_output) ** 2)
            terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        else:
            raise NotImplementedError(self.loss_type)
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_{T-1} | x_0) || N(0, I)) in bits per dimension: [N]. Not trainable."""
        batch_size = x_start.shape[0]
        t = th.tensor([self.num_timesteps - 1] * batch_size, device=x_start.device)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0.0, logvar2=0.0)
        return mean_flat(kl_prior) / np.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """The whole variational bound of x_start [N, ...] in bits per dimension, plus diagnostics.

        Returns a dict: "total_bpd" [N] (= prior_bpd + vb.sum(1)), "prior_bpd" [N], and per timestep
        [N, T]: "vb" (the bound's terms), "xstart_mse", "mse" (of the implied eps). As in the release,
        column j of these holds timestep T - 1 - j.
        """
        device = x_start.device
        batch_size = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        for t in list(range(self.num_timesteps))[::-1]:
            t_batch = th.tensor([t] * batch_size, device=device)
            noise = th.randn_like(x_start)
            x_t = self.q_sample(x_start=x_start, t=t_batch, noise=noise)
            with th.no_grad():
                out = self._vb_terms_bpd(
                    model, x_start=x_start, x_t=x_t, t=t_batch, clip_denoised=clip_denoised,
                    model_kwargs=model_kwargs,
                )
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t_batch, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))

        vb = th.stack(vb, dim=1)
        xstart_mse = th.stack(xstart_mse, dim=1)
        mse = th.stack(mse, dim=1)
        prior_bpd = self._prior_bpd(x_start)
        total_bpd = vb.sum(dim=1) + prior_bpd
        return {
            "total_bpd": total_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }


def _check_learned_sigma_output(model_output, x):
    B, C = x.shape[:2]
    if model_output.shape != (B, C * 2, *x.shape[2:]):
        raise ValueError(
            f"a learned variance needs a model output of shape {(B, C * 2, *x.shape[2:])} (mean and "
            f"variance channels), got {tuple(model_output.shape)}: build the model with --learn_sigma True"
        )


def _default_device(model, noise):
    """The device of the given x_T, else of the model's parameters."""
    if noise is not None:
        return noise.device
    if isinstance(model, th.nn.Module):
        for param in model.parameters():
            return param.device
    raise ValueError("cannot infer the sampling device from this model: pass device=... (e.g. 'cuda')")


def _nonzero_mask(t, x):
    """[N, 1, 1, ...] float mask, 0 where t == 0 (the last step adds no noise)."""
    return (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))


def _last(iterable):
    item = None
    for item in iterable:
        pass
    return item


def _extract_into_tensor(arr, timesteps, broadcast_shape):
    """Gather the float64 numpy array arr [T] at timesteps [N], cast to float32 and broadcast.

    Returns a float32 tensor of broadcast_shape [N, ...] on the timesteps' device.
    """
    res = th.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)
