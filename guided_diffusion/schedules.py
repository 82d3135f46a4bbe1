"""Noise schedules of a discrete Gaussian diffusion: named beta schedules, the float64 tables the
process reads (alpha_bar, posterior coefficients, ...), respacing, and the gather that turns a table
into per-example float32 tensors.

Tables stay float64 numpy arrays; `gather` indexes them at a batch's timesteps and only then casts to
float32, the order in which the paper's release computes, so results agree with it to the last bit.
"""

import math

import numpy as np
import torch as th


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas [T] (float64) of a named schedule.

    "linear": Ho et al.'s 1e-4 .. 0.02 over 1000 steps, both ends scaled by 1000 / T so that any T
    gives the same overall noise. "cosine": Nichol & Dhariwal's alpha_bar(t) = cos((t + 0.008) / 1.008
    * pi / 2)^2, betas capped at 0.999 ("squaredcos_cap_v2", GLIDE's name for it, is the same schedule).
    """
    if schedule_name in ("cosine", "squaredcos_cap_v2"):
        return betas_for_alpha_bar(num_diffusion_timesteps, _cosine_alpha_bar)
    if schedule_name != "linear":
        raise NotImplementedError(f"unknown beta schedule {schedule_name!r}: use --noise_schedule linear or cosine")
    scale = 1000 / num_diffusion_timesteps
    if scale * 0.02 > 1:
        raise ValueError(f"--noise_schedule linear needs --diffusion_steps >= 20: over {num_diffusion_timesteps} steps "
                         f"its last beta, 0.02 * 1000 / T, is {scale * 0.02:g} > 1; use more steps or --noise_schedule "
                         "cosine")
    return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)


def _cosine_alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Betas [T] discretizing a continuous alpha_bar: [0, 1] -> (0, 1] (cumulative product of 1 - beta).

    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta); the cap avoids the
    singularity at t = 1.
    """
    levels = [alpha_bar(i / num_diffusion_timesteps) for i in range(num_diffusion_timesteps + 1)]
    return np.array([min(1 - later / earlier, max_beta) for earlier, later in zip(levels, levels[1:])])


def gather(table, t, shape):
    """table [T] (float64 numpy) at timesteps t [N], as float32 broadcast to shape [N, ...]."""
    values = th.from_numpy(table).to(device=t.device)[t].float()
    return values.view(-1, *[1] * (len(shape) - 1)).expand(shape)


class Schedule:
    """The float64 tables of a diffusion with the given betas, under the release's attribute names.

    betas: [T] in (0, 1]. timestep_map: for a respaced schedule, the original timestep of each of its
    steps (None: the steps are the original ones); original_num_steps: T of the original process;
    original_alphas_cumprod: its alpha_bar table [original_num_steps] (None: this schedule's own).
    """

    def __init__(self, betas, timestep_map=None, original_num_steps=None, original_alphas_cumprod=None):
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with every value in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = timestep_map
        self.original_num_steps = original_num_steps or self.num_timesteps

        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas, axis=0)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        one_minus = 1.0 - alpha_bar
        self.alphas_cumprod = alpha_bar
        self.alphas_cumprod_prev = alpha_bar_prev
        self.alphas_cumprod_next = np.append(alpha_bar[1:], 0.0)
        self.original_alphas_cumprod = alpha_bar if original_alphas_cumprod is None else original_alphas_cumprod

        # q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t), and its inversion x_0(x_t, eps)
        self.sqrt_alphas_cumprod = np.sqrt(alpha_bar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(one_minus)
        self.log_one_minus_alphas_cumprod = np.log(one_minus)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alpha_bar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alpha_bar - 1)

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t); beta~_0 = 0, so its log takes beta~_1.
        posterior_variance = betas * (1.0 - alpha_bar_prev) / one_minus
        self.posterior_variance = posterior_variance
        self.posterior_log_variance_clipped = np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * np.sqrt(alpha_bar_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - alpha_bar_prev) * np.sqrt(alphas) / one_minus

    def respaced(self, use_timesteps):
        """The schedule over the kept steps (indices of this schedule): the kept alpha_bar values stay,
        the betas between them follow (beta'_k = 1 - alpha_bar[s_k] / alpha_bar[s_{k-1}])."""
        use_timesteps = set(use_timesteps)
        kept = [i for i in range(self.num_timesteps) if i in use_timesteps]
        kept_alpha_bar = self.alphas_cumprod[kept]
        betas = 1 - kept_alpha_bar / np.append(1.0, kept_alpha_bar[:-1])
        original = self.original_steps()
        return Schedule(betas, timestep_map=[original[i] for i in kept], original_num_steps=self.original_num_steps,
                        original_alphas_cumprod=self.original_alphas_cumprod)

    def original_steps(self):
        """The original timestep of each step of this schedule: a list of ints [T]."""
        return list(range(self.num_timesteps)) if self.timestep_map is None else list(self.timestep_map)

    # Conversions between x_t, x_0, eps and the posterior, per example at timesteps t [N]; x: [N, ...].

    def xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return gather(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps

    def eps_from_xstart(self, x_t, t, x_start):
        """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
        scaled_x_t = gather(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
        return (scaled_x_t - x_start) / gather(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def xstart_from_xprev(self, x_t, t, x_prev):
        """x_0 from the posterior mean x_prev = coef1 x_0 + coef2 x_t."""
        inverse_coef1 = gather(1.0 / self.posterior_mean_coef1, t, x_t.shape)
        ratio = gather(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape)
        return inverse_coef1 * x_prev - ratio * x_t

    def posterior(self, x_start, x_t, t):
        """(mean, variance, clipped log-variance) of q(x_{t-1} | x_t, x_0), each shaped like x_t."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} must have the same shape")
        shape = x_t.shape
        mean = gather(self.posterior_mean_coef1, t, shape) * x_start + gather(self.posterior_mean_coef2, t, shape) * x_t
        return mean, gather(self.posterior_variance, t, shape), gather(self.posterior_log_variance_clipped, t, shape)
