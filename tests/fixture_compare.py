"""Comparing this project's float32 numbers with numbers pinned from another codebase's code.

Bit for bit where the kernels provably round as they did for the pins: the kernel canary
(fixtures/kernel_canary.py) recomputed here gives the digests recorded in the fixture folder's
provenance.json. Elsewhere within the computation's own error bound: every network output is allowed
to be off by NETWORK_RTOL of its largest value (about 100 float32 ulps; other kernels measured 3e-7),
and a number derived from network outputs may move as far as it moves when the network's outputs are
moved that much (the computation's conditioning, measured by running it again on a perturbed network),
plus FLOOR_RTOL of its largest value for the arithmetic outside the network.

GUIDED_DIFFUSION_FIXTURES=exact (strict: the fixtures' own build), =tolerance (the bound, also on the
fixtures' build: to see that it still catches a broken computation), or =auto (the default: the canary
decides).
"""

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from kernel_canary import kernel_canary  # noqa: E402

MODE_VARIABLE = "GUIDED_DIFFUSION_FIXTURES"
NETWORK_RTOL = 1e-5
FLOOR_RTOL = 1e-6
PERTURBATION_SEED = 1


def comparison(provenance_path):
    """(exact: bool, why: str) for the fixture folder whose provenance.json is at provenance_path."""
    mode = os.environ.get(MODE_VARIABLE, "auto")
    if mode not in ("auto", "exact", "tolerance"):
        raise ValueError(f"{MODE_VARIABLE} must be auto, exact or tolerance, got {mode!r}")
    if mode != "auto":
        return mode == "exact", f"{MODE_VARIABLE}={mode}"
    pinned = json.loads(Path(provenance_path).read_text()).get("kernel_canary", {})
    here = kernel_canary()
    differing = sorted(name for name in set(pinned) | set(here) if pinned.get(name) != here.get(name))
    if differing:
        return False, f"the kernel canary differs from the fixtures' build in: {', '.join(differing)}"
    return True, "the kernel canary matches the fixtures' build"


class OutputError(th.nn.Module):
    """`model` with each output moved by `size` times its largest magnitude: all up (signs=None) or by a
    fixed random sign pattern (drawn from its own generator: the global RNG is left alone)."""

    def __init__(self, model, size=NETWORK_RTOL, random_signs=False):
        super().__init__()
        self.model, self.size = model, size
        self.generator = th.Generator().manual_seed(PERTURBATION_SEED) if random_signs else None

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        step = self.size * out.detach().abs().max()
        if self.generator is None:
            return out + step
        signs = th.randint(0, 2, out.shape, generator=self.generator).to(out) * 2 - 1
        return out + step * signs


def load_pins(path):
    """{key: array} of a pinned .npz file, with its "meta" entry (a JSON string) decoded."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    if "meta" in arrays:
        arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def pins_in(folder):
    """pinned(name) -> load_pins(folder / f"{name}.npz"), each file read once."""
    return functools.cache(lambda name: load_pins(Path(folder) / f"{name}.npz"))


def _numpy(value):
    return value.detach().float().numpy() if isinstance(value, th.Tensor) else np.asarray(value)


def assert_pinned(compute, model, pinned, exact, prefix=""):
    """compute(model) -> {key: tensor}; each value equals pinned[prefix + key] bit for bit when exact, else
    lies within the bound (module docstring) of it, elementwise."""
    values = {key: _numpy(value) for key, value in compute(model).items()}
    moved = [] if exact else [{k: _numpy(v) for k, v in compute(OutputError(model, random_signs=r)).items()}
                              for r in (False, True)]
    for key, value in values.items():
        desired = pinned[prefix + key]
        if exact:
            np.testing.assert_array_equal(value, desired, err_msg=key)
            continue
        bound = np.max([np.abs(m[key] - value) for m in moved], axis=0) + FLOOR_RTOL * np.abs(desired).max()
        error = np.abs(value - desired)
        worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.shape else ()
        assert (error <= bound).all(), (
            f"{key}: {int((error > bound).sum())} of {error.size} elements outside the bound; worst at {worst}: "
            f"{value[worst]} vs pinned {desired[worst]}, error {error[worst]:.3g} > bound {bound[worst]:.3g}")
