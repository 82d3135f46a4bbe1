"""Likelihood pieces of the variational bound: Gaussian KL, the discretized Gaussian decoder
log-likelihood of 8-bit images, and the per-example mean over non-batch dimensions.

All results are in nats; callers divide by log(2) for bits.
"""

import numpy as np
import torch as th

_HALF_BIN = 1.0 / 255.0  # half the width of one of 256 bins over [-1, 1]
_MIN_PROBABILITY = 1e-12


def mean_flat(tensor):
    """Mean over every dimension but the first: [N, ...] -> [N]."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    Arguments broadcast against each other; any of them may be a Python float, but at least one
    must be a tensor (it sets the dtype and device of the result).
    """
    tensors = [arg for arg in (mean1, logvar1, mean2, logvar2) if isinstance(arg, th.Tensor)]
    if not tensors:
        raise TypeError("normal_kl needs at least one torch.Tensor argument; got only Python numbers")
    logvar1, logvar2 = (v if isinstance(v, th.Tensor) else th.tensor(v).to(tensors[0]) for v in (logvar1, logvar2))
    log_ratio = -1.0 + logvar2 - logvar1
    variance_ratio = th.exp(logvar1 - logvar2)
    squared_distance = ((mean1 - mean2) ** 2) * th.exp(-logvar2)
    return 0.5 * (log_ratio + variance_ratio + squared_distance)


def approx_standard_normal_cdf(x):
    """Fast approximation of the standard normal CDF Phi(x) (tanh form, max error about 2e-4)."""
    inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))
    return 0.5 * (1.0 + th.tanh(inner))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats) of 8-bit images under a Gaussian discretized into 256 bins.

    x: [N, ...] pixel values scaled to [-1, 1] (bin centres k / 127.5 - 1); means and log_scales
    (log standard deviations) have the same shape. Each bin spans x +- 1/255; the first and last bins
    extend to -inf and +inf so that the 256 probabilities sum to one. Probabilities are clamped at
    1e-12 before the log. Returns a tensor shaped like x.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"x, means and log_scales must share one shape, got {x.shape}, {means.shape}, {log_scales.shape}")
    offset = x - means
    inv_scale = th.exp(-log_scales)
    below_upper_edge = approx_standard_normal_cdf(inv_scale * (offset + _HALF_BIN))
    below_lower_edge = approx_standard_normal_cdf(inv_scale * (offset - _HALF_BIN))

    def safe_log(p):
        return th.log(p.clamp(min=_MIN_PROBABILITY))

    lowest_bin = safe_log(below_upper_edge)  # (-inf, x + 1/255]
    highest_bin = safe_log(1.0 - below_lower_edge)  # [x - 1/255, +inf)
    inner_bin = safe_log(below_upper_edge - below_lower_edge)
    return th.where(x < -0.999, lowest_bin, th.where(x > 0.999, highest_bin, inner_bin))
