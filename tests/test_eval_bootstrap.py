"""evaluations/bootstrap.py: resampled FIDs equal the evaluator's FID of the resampled rows, and their
spread measures how much the FID of a sample of that size varies."""

import numpy as np
import pytest

from evaluations.bootstrap import FidBootstrap
from evaluations.metrics import frechet_distance, statistics


def _features(rng, n, d, shift=0.0):
    """n correlated Gaussian rows [n, d] (a fixed mixing matrix), shifted by `shift`."""
    mixing = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def _evaluator_fid(rows, reference):
    return frechet_distance(*statistics(rows), *statistics(reference))


@pytest.mark.parametrize("n, d", [(40, 64), (300, 16)])  # fewer rows than features (singular covariance), and more
def test_fid_and_resampled_fids_equal_the_evaluators(n, d):
    rng = np.random.default_rng(0)
    reference, rows = _features(rng, 500, d), _features(rng, n, d, shift=0.1)
    bootstrap = FidBootstrap(*statistics(reference))
    assert bootstrap.fid(rows) == pytest.approx(_evaluator_fid(rows, reference), rel=1e-4)
    draws = np.random.default_rng(5).integers(n, size=(3, n))
    expected = [_evaluator_fid(rows[drawn], reference) for drawn in draws]  # duplicated rows, as a resample holds
    fids = [bootstrap.fid(rows, np.bincount(drawn, minlength=n)) for drawn in draws]
    assert fids == pytest.approx(expected, rel=1e-4)
    # resampled() draws its rows with numpy's generator of the seed
    drawn = np.random.default_rng(7).integers(n, size=n)
    expected = _evaluator_fid(rows[drawn], reference)
    assert bootstrap.resampled(rows, rounds=1, seed=7)[0] == pytest.approx(expected, rel=1e-4)


def test_spread_matches_the_spread_over_independent_samples_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    reference = _features(rng, 4000, 8)
    bootstrap = FidBootstrap(*statistics(reference))
    for n in (100, 800):
        independent = [bootstrap.fid(_features(rng, n, 8, shift=0.2)) for _ in range(60)]
        rows = _features(rng, n, 8, shift=0.2)
        spread = bootstrap.spread(rows, bootstrap.fid(rows), rounds=60)
        assert spread["fid_std"] == pytest.approx(np.std(independent, ddof=1), rel=0.4)
        # the interval is the resamples' deviations from their own mean around the FID: their mean is biased up
        fids, fid = bootstrap.resampled(rows, rounds=60), bootstrap.fid(rows)
        assert fids.mean() > fid and spread["fid_std"] == np.std(fids, ddof=1)
        deviations = np.quantile(fids - fids.mean(), [0.025, 0.975])
        assert [spread["fid_low"], spread["fid_high"]] == pytest.approx(fid + deviations)
        if n == 100:
            small = spread["fid_std"]
    assert spread["fid_std"] < small / 2  # ~1 / sqrt(8) from 100 to 800 rows


def test_identical_samples_have_no_spread():
    rng = np.random.default_rng(2)
    bootstrap = FidBootstrap(*statistics(_features(rng, 200, 6)))
    rows = np.repeat(_features(rng, 1, 6, shift=1.0), 50, axis=0)
    fids = bootstrap.resampled(rows, rounds=10)
    assert np.ptp(fids) == pytest.approx(0, abs=1e-9) and fids[0] == pytest.approx(bootstrap.fid(rows), abs=1e-9)
    spread = bootstrap.spread(rows, bootstrap.fid(rows), rounds=10)
    assert spread["fid_std"] == pytest.approx(0, abs=1e-9)
    assert spread["fid_high"] - spread["fid_low"] == pytest.approx(0, abs=1e-9)


def test_paired_differences_are_the_evaluators_on_the_same_rows_of_both_runs():
    rng = np.random.default_rng(3)
    reference = _features(rng, 500, 8)
    a, b = _features(rng, 60, 8, shift=0.1), _features(rng, 60, 8, shift=0.3)
    bootstrap = FidBootstrap(*statistics(reference))
    one = bootstrap.paired(a, b, rounds=1, seed=4)
    drawn = np.random.default_rng(4).integers(60, size=60)  # one resample: the same rows of a and of b
    resampled = _evaluator_fid(a[drawn], reference) - _evaluator_fid(b[drawn], reference)
    full = _evaluator_fid(a, reference) - _evaluator_fid(b, reference)
    assert [one["fid_a"], one["fid_b"]] == pytest.approx([_evaluator_fid(x, reference) for x in (a, b)], rel=1e-4)
    assert one["difference"] == pytest.approx(full, rel=1e-4)
    assert one["rounds_below_zero"] == float(resampled < 0)
    # one round: its deviation from its own mean is 0, so the interval is the difference itself
    assert one["difference_low"] == one["difference_high"] == pytest.approx(full, rel=1e-4)


def test_pairing_tells_apart_runs_whose_own_spreads_overlap():
    """Two runs from the same starting points (shared rows) that differ by a small shift: each FID's
    own interval overlaps the other's, the paired difference's interval excludes 0."""
    rng = np.random.default_rng(5)
    bootstrap = FidBootstrap(*statistics(_features(rng, 4000, 8)))
    shared = _features(rng, 400, 8, shift=0.3)
    a, b = shared + 0.05 * rng.normal(size=shared.shape), shared + 0.05 * rng.normal(size=shared.shape) + 0.02
    spread_a, spread_b = (bootstrap.spread(x, bootstrap.fid(x), rounds=100) for x in (a, b))
    assert spread_a["fid_high"] > spread_b["fid_low"] and spread_b["fid_high"] > spread_a["fid_low"]
    paired = bootstrap.paired(a, b, rounds=100)
    assert paired["difference"] < 0 and paired["difference_high"] < 0 and paired["rounds_below_zero"] == 1.0
    assert paired["difference_high"] - paired["difference_low"] < (spread_a["fid_high"] - spread_a["fid_low"]) / 3
    same = bootstrap.paired(a, a.copy(), rounds=20)
    assert same["difference"] == 0 and same["difference_low"] == same["difference_high"] == 0


def test_paired_runs_need_features_of_one_shape():
    rng = np.random.default_rng(6)
    bootstrap = FidBootstrap(*statistics(_features(rng, 100, 4)))
    with pytest.raises(ValueError, match="same --num_samples and --seed"):
        bootstrap.paired(_features(rng, 30, 4), _features(rng, 31, 4))
