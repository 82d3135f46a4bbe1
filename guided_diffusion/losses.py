"""Likelihood pieces of the variational bound: Gaussian KL, the discretized Gaussian decoder
log-likelihood of 8-bit images, and the per-example mean over non-batch dimensions.

All results are in nats; callers divide by log(2) for bits.
"""

import numpy as np
import torch as th


def mean_flat(tensor):
    """Mean over every dimension but the first: [N, ...] -> [N]."""
    return tensor.mean(dim=list(range(1, len(tensor.shape))))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    Arguments broadcast against each other; any of them may be a Python float, but at least one
    must be a tensor (it sets the dtype and device of the result).
    """
    like = next((obj for obj in (mean1, logvar1, mean2, logvar2) if isinstance(obj, th.Tensor)), None)
    if like is None:
        raise TypeError("normal_kl needs at least one torch.Tensor argument; got only Python numbers")
    logvar1, logvar2 = [
        v if isinstance(v, th.Tensor) else th.tensor(v).to(like) for v in (logvar1, logvar2)
    ]
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + th.exp(logvar1 - logvar2)
        + ((mean1 - mean2) ** 2) * th.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    """Fast approximation of the standard normal CDF Phi(x) (tanh form, max error about 2e-4)."""
    return 0.5 * (1.0 + th.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats) of 8-bit images under a Gaussian discretized into 256 bins.

    x: [N, ...] pixel values scaled to [-1, 1] (bin centres k / 127.5 - 1); means and log_scales
    (log standard deviations) have the same shape. Each bin spans x +- 1/255; the first and last bins
    extend to -inf and +inf so that the 256 probabilities sum to one. Probabilities are clamped at
    1e-12 before the log. Returns a tensor shaped like x.
    """
    assert x.shape == means.shape == log_scales.shape, (x.shape, means.shape, log_scales.shape)
    centered_x = x - means
    inv_stdv = th.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = th.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = th.where(
        x < -0.999,
        log_cdf_plus,
        th.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )
    assert log_probs.shape == x.shape
    return log_probs
