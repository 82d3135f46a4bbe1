"""Metric math against closed forms and a brute-force k-NN computation."""

import numpy as np
import pytest
import torch as th

from evaluations import metrics


def test_fid_identical_statistics_is_zero():
    rng = np.random.RandomState(0)
    mu, sigma = metrics.statistics(rng.randn(200, 6))
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_matches_formula_for_full_covariances():
    rng = np.random.RandomState(1)
    a, b = rng.randn(4, 4), rng.randn(4, 4)
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    mu1, mu2 = rng.randn(4), rng.randn(4)
    # tr sqrt(s1 s2) = sum of sqrt of the eigenvalues of s1 s2 (real and positive)
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="statistics do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_are_mean_and_unbiased_covariance():
    x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0]])
    mu, sigma = metrics.statistics(x)
    np.testing.assert_allclose(mu, [2.0, 3.0])
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])


def test_inception_score_uniform_is_one_and_one_hot_is_k():
    assert metrics.inception_score(np.full((20, 10), 0.1)) == pytest.approx(1.0)
    k = 7
    one_hot = np.eye(k)[np.arange(70) % k]
    assert metrics.inception_score(one_hot) == pytest.approx(k)


def test_inception_score_averages_splits():
    first = np.eye(4)[np.arange(4) % 2]  # two classes used: IS 2
    second = np.eye(4)[np.arange(4)]  # four classes used: IS 4
    assert metrics.inception_score(np.concatenate([first, second]), split_size=4) == pytest.approx(3.0)


def _brute_force_pr(ref, sample, k):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    d = ((ref[:, None] - sample[None]) ** 2).sum(-1)
    precision = (d <= radii(ref)[:, None]).any(0).mean()
    recall = (d <= radii(sample)[None]).any(1).mean()
    return precision, recall


@pytest.mark.parametrize("block", [10000, 7])
def test_precision_recall_matches_brute_force(block):
    rng = np.random.RandomState(2)
    ref = rng.randn(60, 5).astype(np.float32)
    sample = (rng.randn(45, 5) * 1.5 + 0.7).astype(np.float32)
    expected = _brute_force_pr(ref.astype(np.float64), sample.astype(np.float64), 3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    got = metrics.precision_recall(ref, sample, block=block, half=False)
    assert got == pytest.approx(expected, abs=1e-12)
    got_half = metrics.precision_recall(ref, sample, block=block)
    assert got_half == pytest.approx(expected, abs=0.05)


def test_precision_recall_identical_and_far_apart_sets():
    rng = np.random.RandomState(3)
    points = rng.randn(30, 8).astype(np.float32)
    assert metrics.precision_recall(points, points) == (1.0, 1.0)
    assert metrics.precision_recall(points, points + 100.0) == (0.0, 0.0)


def test_half_distances_fall_back_to_float32_when_not_finite():
    u = th.full((2, 4), 300.0)  # squared norms 360000 overflow float16 (max 65504)
    v = th.zeros(3, 4)
    dist = metrics.pairwise_distances(u, v)
    assert th.isfinite(dist).all()
    assert th.allclose(dist, th.full((2, 3), 360000.0))


def test_precision_recall_rejects_bad_features():
    with pytest.raises(ValueError, match="one D"):
        metrics.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="more than k"):
        metrics.precision_recall(np.zeros((3, 3)), np.zeros((10, 3)))


def test_fid_rejects_a_clearly_complex_square_root():
    # sqrt(diag(1, -1)) = diag(1, i): the imaginary part on the diagonal is 1, far above 1e-3
    with pytest.raises(ValueError, match="imaginary component 1.0"):
        metrics.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
