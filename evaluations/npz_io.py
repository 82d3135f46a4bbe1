"""Streaming access to ``.npz`` batches: read array headers and ``arr_0`` in chunks without loading it whole.

A 50k x 256x256x3 batch is ~10 GB; the reader parses the ``.npy`` header of the zip member with
numpy's own format functions and then reads ``batch_size`` rows at a time (works for both
``np.savez`` and ``np.savez_compressed``). Unreadable files raise ``BatchFileError`` naming the file.
"""

import os
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np
from numpy.lib import format as npy_format

EXPECTED = (
    "expected an .npz written by np.savez: a batch (arr_0 = uint8 images [N, H, W, 3]) or a statistics "
    "file from `evaluator.py --save_stats`"
)
# what a damaged zip or .npy member raises while its header or data is read
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


class BatchFileError(ValueError):
    """An evaluator input that cannot be used; the message names the file and what was expected."""


class NpzArray:
    """One array of an open npz: ``shape``, ``dtype`` and ``read_batches(batch_size)``."""

    def __init__(self, member, shape, dtype, where):
        self._member = member
        self.shape = shape
        self.dtype = dtype
        self.where = where  # "path:key", for error messages

    def __len__(self):
        return self.shape[0]

    def read_batches(self, batch_size):
        """Yield consecutive [<=batch_size, ...] arrays covering all rows, in order."""
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        for start in range(0, len(self), batch_size):
            count = min(batch_size, len(self) - start)
            try:
                data = self._member.read(count * row_bytes)
            except READ_ERRORS as error:
                raise BatchFileError(f"{self.where} cannot be read ({error}): the file is damaged") from error
            if len(data) != count * row_bytes:
                raise BatchFileError(f"{self.where} ends after {start + len(data) // row_bytes} rows of "
                                     f"{len(self)}: the file is truncated")
            yield np.frombuffer(data, dtype=self.dtype).reshape((count,) + tuple(self.shape[1:]))


def _read_header(member):
    """(shape, fortran_order, dtype) of an open .npy stream, leaving it at the first data byte."""
    version = npy_format.read_magic(member)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(member)
    return npy_format.read_array_header_2_0(member)


@contextmanager
def _open_zip(path):
    """The npz at ``path`` as a ZipFile; a missing, empty or non-zip file is a BatchFileError."""
    if not os.path.isfile(path):
        raise BatchFileError(f"{path} does not exist; {EXPECTED}")
    if os.path.getsize(path) == 0:
        raise BatchFileError(f"{path} is empty (0 bytes); {EXPECTED}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise BatchFileError(f"{path} is not a complete .npz file ({error}: truncated, or not an npz); "
                             f"{EXPECTED}") from error
    with zf:
        yield zf


def read_headers(path):
    """{key: (shape, dtype)} of every array in the npz at ``path``, read without loading the data."""
    headers = {}
    with _open_zip(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            try:
                with zf.open(name) as member:
                    shape, _, dtype = _read_header(member)
            except READ_ERRORS as error:
                raise BatchFileError(f"{path}: array {name} is damaged ({error}); {EXPECTED}") from error
            headers[name[: -len(".npy")]] = (tuple(shape), dtype)
    if not headers:
        raise BatchFileError(f"{path} holds no arrays; {EXPECTED}")
    return headers


def npz_keys(path):
    """Names of the arrays stored in an npz file."""
    return list(read_headers(path))


@contextmanager
def open_npz_array(path, key="arr_0"):
    """Context manager giving an NpzArray for ``key`` of the npz at ``path``."""
    with _open_zip(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise BatchFileError(
                f"{path} has no array {key!r} (it has {npz_keys(path)}); sample batches store images in arr_0"
            )
        with zf.open(f"{key}.npy") as member:
            try:
                shape, fortran, dtype = _read_header(member)
            except READ_ERRORS as error:
                raise BatchFileError(f"{path}: array {key} is damaged ({error}); {EXPECTED}") from error
            if fortran and len(shape) > 1:
                raise BatchFileError(f"{path}:{key} is stored in Fortran order; save it C-contiguous")
            yield NpzArray(member, shape, dtype, f"{path}:{key}")


def load_arrays(path, keys):
    """{key: array} for ``keys`` of the npz at ``path`` (loaded whole); damage is a BatchFileError."""
    with _open_zip(path):  # the clear errors for missing, empty and non-zip files
        pass
    try:
        with np.load(path) as data:
            return {key: data[key] for key in keys}
    except READ_ERRORS as error:
        raise BatchFileError(f"{path} cannot be read ({error}): the file is damaged; {EXPECTED}") from error
