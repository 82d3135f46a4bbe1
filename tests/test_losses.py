"""Closed-form checks of the likelihood pieces in guided_diffusion.losses."""

import math

import numpy as np
import pytest
import torch as th

from guided_diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)

BIN_CENTRES = th.arange(256, dtype=th.float64) / 127.5 - 1.0  # the 8-bit pixel values in [-1, 1]


def test_mean_flat_averages_all_but_the_batch_dimension():
    x = th.arange(24, dtype=th.float32).reshape(2, 3, 4)
    assert th.equal(mean_flat(x), th.tensor([5.5, 17.5]))


def test_normal_kl_of_equal_gaussians_is_zero():
    mean = th.randn(5, 3, dtype=th.float64)
    logvar = th.randn(5, 3, dtype=th.float64)
    assert th.allclose(normal_kl(mean, logvar, mean, logvar), th.zeros(5, 3, dtype=th.float64), atol=1e-15)


def test_normal_kl_known_value_and_against_torch_distributions():
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(th.tensor(0.0, dtype=th.float64), 0.0, 1.0, th.tensor(math.log(4.0), dtype=th.float64))
    assert kl.item() == pytest.approx(math.log(2.0) - 0.25, abs=1e-12)
    # Python-number log-variances become float32 tensors first (as in the release): float32 accuracy.
    kl32 = normal_kl(th.tensor(0.0), 0.0, 1.0, math.log(4.0))
    assert kl32.dtype == th.float32 and kl32.item() == pytest.approx(math.log(2.0) - 0.25, abs=1e-6)

    m1, m2 = th.randn(100, dtype=th.float64), th.randn(100, dtype=th.float64)
    lv1, lv2 = th.randn(100, dtype=th.float64), th.randn(100, dtype=th.float64)
    expected = th.distributions.kl_divergence(
        th.distributions.Normal(m1, (0.5 * lv1).exp()), th.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert th.allclose(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


def test_normal_kl_needs_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        normal_kl(0.0, 0.0, 1.0, 0.0)


def test_approx_cdf_is_close_to_the_exact_normal_cdf():
    x = th.linspace(-6, 6, 1001, dtype=th.float64)
    exact = 0.5 * (1 + th.erf(x / math.sqrt(2)))
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 2e-4


@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (0.7, math.log(0.02)), (-0.95, math.log(0.5))])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
    x = BIN_CENTRES.float()
    means = th.full_like(x, mean)
    log_scales = th.full_like(x, log_scale)
    probs = discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales).double().exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_likelihood_matches_gaussian_bin_probabilities():
    # Interior bin k covers [x_k - 1/255, x_k + 1/255]; the end bins extend to -inf / +inf.
    mean, std = 0.1, 0.3
    x = BIN_CENTRES
    upper = th.where(x > 0.999, th.tensor(math.inf, dtype=th.float64), x + 1 / 255)
    lower = th.where(x < -0.999, th.tensor(-math.inf, dtype=th.float64), x - 1 / 255)
    normal = th.distributions.Normal(mean, std)
    exact = normal.cdf(upper) - normal.cdf(lower)
    got = discretized_gaussian_log_likelihood(
        x, means=th.full_like(x, mean), log_scales=th.full_like(x, math.log(std))
    ).exp()
    assert (got - exact).abs().max() < 2e-4  # the error of the tanh CDF approximation
    assert got.argmax().item() == int(np.argmax(exact.numpy()))


def test_discretized_likelihood_clamps_tiny_probabilities():
    x = th.tensor([0.0, -1.0, 1.0])
    # A very narrow Gaussian far away from every bin: each probability underflows to the 1e-12 floor.
    logp = discretized_gaussian_log_likelihood(
        x, means=th.tensor([0.9, 0.9, -0.9]), log_scales=th.full((3,), math.log(1e-3))
    )
    assert th.allclose(logp, th.full((3,), math.log(1e-12)))
