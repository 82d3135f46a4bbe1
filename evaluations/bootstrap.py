"""The spread of an FID: resample the sample's features with replacement and recompute the FID against
a fixed reference, cheaply enough to do for every row of a table.

With the reference fixed, tr sqrt(S_r S_b) (S_r, S_b the reference's and a resample's covariances)
equals the sum of the square roots of the eigenvalues of R S_b R, R = S_r^(1/2), whose nonzero
eigenvalues are those of M M^T and of M^T M for M = W^(1/2) (X - mu_b) R / sqrt(N - 1), W the
multiplicities of the N' distinct rows that the resample drew. So each resampled FID costs one
symmetric eigenvalue problem of size min(N', D), not a D x D `sqrtm` of a non-symmetric product.
"""

import numpy as np

ROUNDS = 50  # resamples per FID
LEVEL = 0.95  # coverage of the reported interval


def psd_sqrt(sigma):
    """The symmetric square root of a covariance [D, D] (negative round-off eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


class FidBootstrap:
    """FIDs of sample features against one reference (mu [D], sigma [D, D]), and their spread.

    The reference's square root is computed once here, so one instance serves every row of a sweep.
    """

    def __init__(self, mu, sigma):
        self.mu = np.asarray(mu, dtype=np.float64)
        self.root = psd_sqrt(sigma)
        self.trace = float(np.trace(sigma))

    def fid(self, features, counts=None):
        """FID of features [N, D] (pool_3 activations) with each row taken counts[i] times (default
        once; sum(counts) = N as a resample draws): the evaluator's mean, unbiased covariance and
        Frechet distance, to round-off."""
        features = np.asarray(features, dtype=np.float64)
        counts = np.ones(len(features)) if counts is None else np.asarray(counts, dtype=np.float64)
        return self._fid(features, features @ self.root, counts)

    def resampled(self, features, rounds=ROUNDS, seed=0):
        """FIDs [rounds] of `rounds` resamples of features [N, D] (N rows drawn with replacement each),
        from numpy's generator seeded with `seed`: the same draws for every call with the same N."""
        features = np.asarray(features, dtype=np.float64)
        projected = features @ self.root  # once: each resample's M is a weighted, centred choice of its rows
        return np.array([self._fid(features, projected, counts) for counts in _draws(len(features), rounds, seed)])

    def paired(self, features_a, features_b, rounds=ROUNDS, seed=0):
        """FID(a) - FID(b) of two runs whose row i came from the same initial noise, label and step
        noise (features [N, D] each), with its spread: every resample draws the same rows of both, so
        what the runs share (the draw of N starting points) cancels and only how they differ remains.

        Returns {"fid_a", "fid_b", "difference", "difference_low", "difference_high", "rounds_below_zero"}:
        the central LEVEL interval of the resampled differences' deviations from their own mean, placed
        around the difference (as spread() does), and the fraction of resamples in which a scored below b.
        The difference is beyond the spread when the interval excludes 0.
        """
        a, b = (np.asarray(f, dtype=np.float64) for f in (features_a, features_b))
        if a.shape != b.shape:
            raise ValueError(f"paired runs need features of one shape, got {a.shape} and {b.shape}: the same "
                             "--num_samples and --seed, and the same feature extractor")
        differences = self.resampled(a, rounds, seed) - self.resampled(b, rounds, seed)  # the same draws of rows
        fid_a, fid_b = self.fid(a), self.fid(b)
        low, high = _deviations(differences)
        difference = fid_a - fid_b
        return {"fid_a": fid_a, "fid_b": fid_b, "difference": difference, "difference_low": float(difference + low),
                "difference_high": float(difference + high), "rounds_below_zero": float(np.mean(differences < 0))}

    def _fid(self, features, projected, counts):
        """fid() given projected = features @ root [N, D]."""
        kept = counts > 0
        weights = counts[kept]
        total = weights.sum()
        scale = np.sqrt(weights / (total - 1))[:, None]
        mean = weights @ features[kept] / total
        centred = (features[kept] - mean) * scale  # the covariance is centred^T centred
        m = (projected[kept] - mean @ self.root) * scale
        gram = m @ m.T if len(m) <= m.shape[1] else m.T @ m
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
        shift = mean - self.mu
        return float(shift @ shift + self.trace + np.sum(centred**2) - 2 * cross)

    def spread(self, features, fid, rounds=ROUNDS, seed=0):
        """{"fid_std", "fid_low", "fid_high"} of the FID `fid` of features [N, D]: the standard
        deviation of the resampled FIDs and the central LEVEL interval of their deviations from their
        own mean, placed around `fid`.

        Resamples hold about 63% distinct rows, which raises FID (it is biased upward at small N), so
        their mean sits above `fid`: only their spread is used, never their mean.
        """
        fids = self.resampled(features, rounds, seed)
        low, high = _deviations(fids)
        return {"fid_std": float(fids.std(ddof=1)), "fid_low": float(fid + low), "fid_high": float(fid + high)}


def _draws(n, rounds, seed):
    """`rounds` resamples of n rows with replacement, each as counts [n] of every row, from numpy's
    generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield np.bincount(rng.integers(n, size=n), minlength=n)


def _deviations(values):
    """The central LEVEL interval (low, high) of values' deviations from their own mean."""
    return np.quantile(values - values.mean(), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
