"""The denoiser: a model's output at x_t turned into the reverse process's predictions (x_0, eps, and
the mean and variance of p(x_{t-1} | x_t)) for one schedule and one parameterisation.

Every sampler, loss and guide reads the model's output through this one place.
"""

import enum

import numpy as np
import torch as th

from .schedules import gather


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


class Denoiser:
    """Predictions of the reverse process from a model's output at steps t of a schedule.

    schedule: a schedules.Schedule. model_mean_type, model_var_type: what the output channels hold.
    (Calling the model, with the timesteps it sees, is GaussianDiffusion.p_mean_variance's job.)
    """

    def __init__(self, schedule, model_mean_type, model_var_type):
        self.schedule = schedule
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type

    @property
    def learns_variance(self):
        return self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)

    def split(self, output, x):
        """output [N, C or 2C, ...] -> (mean channels [N, C, ...], variance channels or None)."""
        if not self.learns_variance:
            return output, None
        expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        if tuple(output.shape) != expected:
            raise ValueError(
                f"a learned variance needs a model output of shape {expected} (mean and variance "
                f"channels), got {tuple(output.shape)}: build the model with --learn_sigma True"
            )
        return th.split(output, x.shape[1], dim=1)

    def predict(self, output, x, t, clip_denoised=True, denoised_fn=None):
        """p(x_{t-1} | x_t) from a model output at x [N, C, ...], steps t [N].

        denoised_fn, if given, maps the predicted x_0 before clip_denoised clamps it to [-1, 1].
        Returns {"mean", "variance", "log_variance", "pred_xstart"}, each shaped like x.
        """
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must hold one timestep per example: shape {tuple(x.shape[:1])}, got {tuple(t.shape)}")
        mean_output, variance_output = self.split(output, x)
        variance, log_variance = self.variance(variance_output, x, t)

        pred_xstart = self.finish_xstart(self.xstart(mean_output, x, t), clip_denoised, denoised_fn)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            mean = mean_output
        else:
            mean = self.schedule.posterior(pred_xstart, x, t)[0]
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    @staticmethod
    def finish_xstart(x_start, clip_denoised=True, denoised_fn=None):
        """x_0 as the samplers use it: denoised_fn (if given), then clamped to [-1, 1] if clip_denoised."""
        if denoised_fn is not None:
            x_start = denoised_fn(x_start)
        return x_start.clamp(-1, 1) if clip_denoised else x_start

    def xstart(self, mean_output, x, t):
        """The unclipped x_0 of the model's mean channels."""
        if self.model_mean_type == ModelMeanType.START_X:
            return mean_output
        if self.model_mean_type == ModelMeanType.EPSILON:
            return self.schedule.xstart_from_eps(x, t, mean_output)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self.schedule.xstart_from_xprev(x, t, mean_output)
        raise NotImplementedError(self.model_mean_type)

    def eps(self, mean_output, x, t):
        """The (unclipped) noise prediction of the model's mean channels."""
        if self.model_mean_type == ModelMeanType.EPSILON:
            return mean_output
        return self.schedule.eps_from_xstart(x, t, self.xstart(mean_output, x, t))

    def from_eps(self, eps, x, t):
        """The model's mean channels that hold the noise prediction eps (inverse of `eps`)."""
        if self.model_mean_type == ModelMeanType.EPSILON:
            return eps
        x_start = self.schedule.xstart_from_eps(x, t, eps)
        if self.model_mean_type == ModelMeanType.START_X:
            return x_start
        return self.schedule.posterior(x_start, x, t)[0]

    def variance(self, variance_output, x, t):
        """(variance, log-variance) shaped like x: fixed, or from the variance channels."""
        if variance_output is None:
            variance, log_variance = self.fixed_variance()
            return gather(variance, t, x.shape), gather(log_variance, t, x.shape)
        if self.model_var_type == ModelVarType.LEARNED:
            log_variance = variance_output
        else:
            min_log = gather(self.schedule.posterior_log_variance_clipped, t, x.shape)
            max_log = gather(np.log(self.schedule.betas), t, x.shape)
            frac = (variance_output + 1) / 2  # v in [-1, 1] -> [0, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
        return th.exp(log_variance), log_variance

    def fixed_variance(self):
        """(variance [T], log-variance [T]) numpy tables of a fixed variance type."""
        schedule = self.schedule
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return schedule.posterior_variance, schedule.posterior_log_variance_clipped
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            # beta_t, with the posterior variance at t = 0 for a better decoder log-likelihood
            variance = np.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
            return variance, np.log(variance)
        raise NotImplementedError(self.model_var_type)
