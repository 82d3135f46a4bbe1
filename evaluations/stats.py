"""Batch statistics: a batch's Inception activations reduced to what the metrics need, and their npz form.

A statistics file holds the release's ``mu``, ``sigma`` (pool_3, FID) and ``mu_s``, ``sigma_s``
(spatial feature, sFID) in float64, plus ``pool_3``: the pool_3 activations in float16 for
precision and recall. Precision/recall round features to float16 anyway, so stored activations give
the same precision and recall as the images they came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from evaluations.metrics import NHOOD_SIZE, frechet_distance, statistics
from evaluations.npz_io import BatchFileError, load_arrays

MOMENT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
POOL_KEY = "pool_3"


@dataclasses.dataclass
class BatchStats:
    """mu [D], sigma [D, D] of pool_3; mu_s [S], sigma_s [S, S] of the spatial feature; pool [N, D]
    pool_3 activations, or None when a file stores only the moments (no precision/recall then)."""

    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray
    sigma_s: np.ndarray
    pool: np.ndarray | None = None

    @classmethod
    def from_activations(cls, acts):
        """From ``{"pool": [N, D], "spatial": [N, S]}`` activations (as evaluator.batch_activations returns)."""
        (mu, sigma), (mu_s, sigma_s) = statistics(acts["pool"]), statistics(acts["spatial"])
        return cls(mu, sigma, mu_s, sigma_s, acts["pool"])

    @classmethod
    def load(cls, path, headers):
        """The statistics stored in ``path``; ``headers`` from npz_io.read_headers, checked by check_stored."""
        keys = MOMENT_KEYS + ((POOL_KEY,) if POOL_KEY in headers else ())
        arrays = load_arrays(path, keys)
        return cls(*(arrays[k] for k in MOMENT_KEYS), pool=arrays.get(POOL_KEY))

    def save(self, path, **extra):
        """Write the moments, pool_3 as float16 (when present) and any ``extra`` arrays to an npz.

        Returns the path written (np.savez adds ".npz" to a name without it)."""
        arrays = {key: getattr(self, key) for key in MOMENT_KEYS}
        if self.pool is not None:
            arrays[POOL_KEY] = np.asarray(self.pool, dtype=np.float16)
        np.savez(path, **arrays, **extra)
        return str(path) if str(path).endswith(".npz") else f"{path}.npz"

    def frechet_distances(self, ref):
        """(FID, sFID) of this batch against the reference BatchStats ``ref``."""
        return (frechet_distance(self.mu, self.sigma, ref.mu, ref.sigma),
                frechet_distance(self.mu_s, self.sigma_s, ref.mu_s, ref.sigma_s))

    @property
    def count(self):
        """Number of pool_3 activation rows, or None."""
        return None if self.pool is None else len(self.pool)


def has_stored(headers):
    """Whether an npz (its read_headers dict) stores statistics."""
    return any(key in headers for key in MOMENT_KEYS + (POOL_KEY,))


def check_stored(path, headers, dims):
    """Raise BatchFileError unless the stored statistics are complete, floating and of feature sizes
    ``dims`` = (D, S) (the feature extractor's pool_3 and spatial sizes)."""
    missing = [key for key in MOMENT_KEYS if key not in headers]
    if missing:
        raise BatchFileError(
            f"{path} stores statistics without {missing}: a statistics file holds {list(MOMENT_KEYS)} "
            "(and pool_3 for precision/recall); rewrite it with `evaluator.py --save_stats`"
        )
    pool_dim, spatial_dim = dims
    expected = {"mu": (pool_dim,), "sigma": (pool_dim, pool_dim), "mu_s": (spatial_dim,),
                "sigma_s": (spatial_dim, spatial_dim)}
    if POOL_KEY in headers:
        rows = headers[POOL_KEY][0][0] if headers[POOL_KEY][0] else 0
        if rows <= NHOOD_SIZE:
            raise BatchFileError(f"{path}: {POOL_KEY} has {rows} rows; precision/recall need more than "
                                 f"{NHOOD_SIZE}")
        expected[POOL_KEY] = (rows, pool_dim)
    for key, shape in expected.items():
        got, dtype = headers[key]
        if got != shape or not np.issubdtype(dtype, np.floating):
            raise BatchFileError(
                f"{path}: {key} is {dtype} {got}, expected floating {shape}. The feature sizes are "
                f"{pool_dim} (pool_3) and {spatial_dim} (spatial): statistics from another feature "
                "extractor cannot be compared; recompute them with `evaluator.py --save_stats`"
            )
