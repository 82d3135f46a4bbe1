"""Streaming access to ``.npz`` batches: read ``arr_0`` in chunks without loading it whole.

A 50k x 256x256x3 batch is ~10 GB; the reader parses the ``.npy`` header of the zip member with
numpy's own format functions and then reads ``batch_size`` rows at a time (works for both
``np.savez`` and ``np.savez_compressed``).
"""

import zipfile
from contextlib import contextmanager

import numpy as np
from numpy.lib import format as npy_format

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class NpzArray:
    """One array of an open npz: ``shape``, ``dtype`` and ``read_batches(batch_size)``."""

    def __init__(self, member, shape, dtype):
        self._member = member
        self.shape = shape
        self.dtype = dtype

    def __len__(self):
        return self.shape[0]

    def read_batches(self, batch_size):
        """Yield consecutive [<=batch_size, ...] arrays covering all rows, in order."""
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        for start in range(0, len(self), batch_size):
            count = min(batch_size, len(self) - start)
            data = self._member.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError("npz array ends early: the file is truncated")
            yield np.frombuffer(data, dtype=self.dtype).reshape((count,) + tuple(self.shape[1:]))


def npz_keys(path):
    """Names of the arrays stored in an npz file."""
    with zipfile.ZipFile(path) as zf:
        return [name[: -len(".npy")] for name in zf.namelist() if name.endswith(".npy")]


@contextmanager
def open_npz_array(path, key="arr_0"):
    """Context manager giving an NpzArray for ``key`` of the npz at ``path``."""
    with zipfile.ZipFile(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise KeyError(
                f"{path} has no array {key!r} (it has {npz_keys(path)}); sample batches store images in arr_0"
            )
        with zf.open(f"{key}.npy") as member:
            version = npy_format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(member)
            else:
                shape, fortran, dtype = npy_format.read_array_header_2_0(member)
            if fortran and len(shape) > 1:
                raise ValueError(f"{path}:{key} is stored in Fortran order; save it C-contiguous")
            yield NpzArray(member, shape, dtype)


def read_statistics(path):
    """The precomputed (mu, sigma, mu_s, sigma_s) of an npz if it carries all four, else None."""
    keys = npz_keys(path)
    if not all(k in keys for k in STAT_KEYS):
        return None
    with np.load(path) as data:
        return tuple(data[k] for k in STAT_KEYS)
