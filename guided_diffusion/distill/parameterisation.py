"""Networks seen in the sigma view (x = x_0 + sigma z, sigma: [N] per example): the teacher's denoiser
D(x, sigma) -> x_0 estimate, and the student's consistency function f(x, sigma) with f(x, sigma_min) = x
exactly. Both are plain callables, (x [N, C, H, W], sigma [N], **model_kwargs) -> [N, C, H, W].

- EDMModel: a network with Karras et al.'s preconditioning, called as consistency_models calls its own
  (its float operations in its order, so that numbers agree with it bit for bit).
- VPModel: an ADM checkpoint (discrete timesteps, epsilon / x_0 / learned-sigma outputs) through its own
  diffusion, so that it keeps its preconditioning and never sees a fractional timestep.
"""

import torch as th

from ..schedules import gather
from .grid import vp_sigmas

SIGMA_DATA = 0.5  # the data's standard deviation assumed by the EDM scalings (images in [-1, 1])
NOISE_SCALE = 1000 * 0.25  # EDM's network noise input log(sigma) / 4, times ADM's timestep range (1000)


def per_example(values, x):
    """values [N] shaped [N, 1, ..., 1] to broadcast against x [N, ...]."""
    return values.view(-1, *[1] * (x.dim() - 1))


def edm_scalings(sigma, sigma_data=SIGMA_DATA):
    """(c_skip, c_out, c_in), each like sigma [N], of Karras et al.'s D = c_skip x + c_out F(c_in x, ...)."""
    variance = sigma**2 + sigma_data**2  # of x = x_0 + sigma z for data of standard deviation sigma_data
    return sigma_data**2 / variance, sigma * sigma_data / variance**0.5, 1 / variance**0.5


def boundary_scalings(sigma, sigma_min, sigma_data=SIGMA_DATA):
    """(c_skip, c_out, c_in) of consistency_models' f: c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
    c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2), so c_skip = 1 and c_out = 0 at sigma = sigma_min."""
    offset = sigma - sigma_min
    variance = sigma**2 + sigma_data**2
    return sigma_data**2 / (offset**2 + sigma_data**2), offset * sigma_data / variance**0.5, 1 / variance**0.5


class EDMModel:
    """A network net(c_in x, 250 log(sigma + 1e-44), **model_kwargs) -> F [N, C, H, W] with EDM's
    preconditioning (consistency_models' KarrasDenoiser.denoise).

    net: the network; sigma_min: the boundary level of `consistency` (consistency_models: 0.002);
    sigma_data: the data's standard deviation.
    `denoise` is the EDM denoiser (the teacher, distillation=False in consistency_models), `consistency`
    the consistency function with the boundary scalings (the student, distillation=True).
    """

    def __init__(self, net, sigma_min=0.002, sigma_data=SIGMA_DATA):
        self.net = net
        self.sigma_min = sigma_min
        self.sigma_data = sigma_data

    def denoise(self, x, sigma, **model_kwargs):
        """D(x, sigma) = c_skip x + c_out F: [N, C, H, W]."""
        return self._preconditioned(x, sigma, edm_scalings(sigma, self.sigma_data), model_kwargs)

    def consistency(self, x, sigma, **model_kwargs):
        """f(x, sigma) with the boundary scalings: [N, C, H, W], f(x, sigma_min) = x."""
        return self._preconditioned(x, sigma, boundary_scalings(sigma, self.sigma_min, self.sigma_data), model_kwargs)

    def _preconditioned(self, x, sigma, scalings, model_kwargs):
        c_skip, c_out, c_in = (per_example(c, x) for c in scalings)
        output = self.net(c_in * x, NOISE_SCALE * th.log(sigma + 1e-44), **model_kwargs)
        return c_out * output + c_skip * x


class VPModel:
    """An ADM (VP, discrete-timestep) model in the sigma view, called through its own diffusion.

    model: the network; diffusion: the GaussianDiffusion it goes with (respaced or not): its
    p_mean_variance calls the model (original timesteps, --rescale_timesteps), reads the epsilon, x_0 or
    previous-x channels and drops the learned-variance ones. clip_denoised: clamp x0_hat to [-1, 1] (off
    in training, on in sampling).
    sigma must be one of the schedule's sigma_t (`sigmas`, float32 [T]); at sigma_t the model sees
    x_t = sqrt(alpha_bar_t) x and the integer step t.
    """

    def __init__(self, model, diffusion, clip_denoised=False):
        self.model = model
        self.diffusion = diffusion
        self.clip_denoised = clip_denoised
        self.sigmas = th.from_numpy(vp_sigmas(diffusion.alphas_cumprod)).float()
        self._tables = {}  # self.sigmas per device

    @property
    def sigma_min(self):
        """sigma_0 of the schedule (its smallest), where f(x, sigma) = x."""
        return float(self.sigmas[0])

    def timesteps(self, sigma):
        """The step t [N] (int64) of each sigma [N]; refuses a sigma that is no step's sigma_t."""
        matches = sigma[:, None] == self._table(sigma.device)[None, :]
        found = matches.any(dim=1)
        if not bool(found.all()):
            raise ValueError(
                f"sigma {float(sigma[~found][0]):.6g} is not the sigma_t of any of the schedule's {len(self.sigmas)} "
                "timesteps (sqrt((1 - alpha_bar_t) / alpha_bar_t) in float32): take the noise levels from "
                "distill.grid.timestep_grid or VPModel.sigmas")
        return matches.int().argmax(dim=1)

    def denoise(self, x, sigma, **model_kwargs):
        """D(x, sigma) = x0_hat(sqrt(alpha_bar_t) x, t) of the diffusion (clamped if clip_denoised): [N, C, H, W].

        For an epsilon model the diffusion computes x0_hat = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1)
        eps_hat, which is x - sigma eps_hat up to float32 rounding."""
        t = self.timesteps(sigma)
        x_t = gather(self.diffusion.sqrt_alphas_cumprod, t, x.shape) * x
        prediction = self.diffusion.p_mean_variance(self.model, x_t, t, clip_denoised=self.clip_denoised,
                                                    model_kwargs=model_kwargs)
        return prediction["pred_xstart"]

    def consistency(self, x, sigma, **model_kwargs):
        """f(x, sigma) = (s0 / sigma) x + (1 - s0 / sigma) D(x, sigma), s0 = sigma_min: [N, C, H, W].

        Exactly x at s0: s0 / s0 is 1 in a tensor division (a Python float over a tensor would be its
        reciprocal times s0, off by an ulp). With the teacher's weights it is the teacher's denoiser plus
        s0 eps_hat for an epsilon model (x - D = sigma eps_hat)."""
        skip = per_example(self._table(sigma.device)[0] / sigma, x)
        return skip * x + (1 - skip) * self.denoise(x, sigma, **model_kwargs)

    def _table(self, device):
        """self.sigmas on `device`."""
        if device not in self._tables:
            self._tables[device] = self.sigmas.to(device)
        return self._tables[device]
