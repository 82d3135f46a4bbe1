"""guided_diffusion.editing.operators: each forward model against a hand computation (loops / numpy on tiny
images), the masks, the measurement noise's statistics and seeding, and the flag errors."""

import math

import numpy as np
import pytest
import torch as th
from PIL import Image

from guided_diffusion.editing.operators import (GaussianBlur, Inpainting, SuperResolution, bicubic_upsample, box_mask,
                                        half_mask, operator_from_flags, parse_mask, random_mask)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return th.from_numpy(np.random.default_rng(seed).uniform(-1, 1, shape))


# ----------------------------------------------------------------------------- masks


def test_default_box_is_the_central_14x14_of_28x28():
    mask = box_mask(28)[0, 0]
    assert mask.shape == (28, 28) and mask.sum() == 28 * 28 - 14 * 14
    assert (mask[7:21, 7:21] == 0).all()
    assert mask[6].all() and mask[21].all() and mask[:, 6].all() and mask[:, 21].all()


def test_given_box_and_half_masks_by_hand():
    expected = np.ones((5, 5))
    expected[1:4, 2:4] = 0  # top 1, left 2, height 3, width 2
    assert np.array_equal(box_mask(5, (1, 2, 3, 2))[0, 0].numpy(), expected)
    assert np.array_equal(parse_mask("box:1,2,3,2", 5)[0, 0].numpy(), expected)
    assert np.array_equal(parse_mask("box:2", 6)[0, 0].numpy(), box_mask(6, (2, 2, 2, 2))[0, 0].numpy())
    left = half_mask(4, "left")[0, 0].numpy()
    assert np.array_equal(left, [[0, 0, 1, 1]] * 4)
    assert np.array_equal(half_mask(4, "right")[0, 0].numpy(), 1 - left)
    assert np.array_equal(half_mask(4, "top")[0, 0].numpy(), left.T)
    assert np.array_equal(parse_mask("half:bottom", 4)[0, 0].numpy(), 1 - left.T)


def test_random_mask_has_the_fraction_of_holes_and_is_seeded():
    mask = random_mask(10, 0.37, seed=3)
    assert mask.shape == (1, 1, 10, 10) and int((mask == 0).sum()) == 37
    assert th.equal(mask, parse_mask("random:0.37", 10, seed=3))
    assert not th.equal(mask, random_mask(10, 0.37, seed=4))


def test_mask_file_white_is_known(tmp_path):
    grey = np.array([[0, 127, 128, 255]] * 4, np.uint8)
    Image.fromarray(grey).save(tmp_path / "m.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    expected = [[0, 0, 1, 1]] * 4
    assert np.array_equal(parse_mask(str(tmp_path / "m.png"), 4)[0, 0].numpy(), expected)
    assert np.array_equal(parse_mask(str(tmp_path / "rgb.png"), 4)[0, 0].numpy(), expected)
    with pytest.raises(ValueError, match=r"is 4x4 but the model's images are 8x8"):
        parse_mask(str(tmp_path / "m.png"), 8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be read as an image"):
        parse_mask(str(tmp_path / "bad.png"), 4)


@pytest.mark.parametrize("spec, message", [
    ("box:a", "malformed number"), ("box:1,2", "box:TOP,LEFT,HEIGHT,WIDTH"), ("box:5,5,4,4", "does not fit"),
    ("half:middle", "one of left, right, top, bottom"), ("random:1.5", r"in \[0, 1\]"), ("random:", "random:FRACTION"),
    ("nosuchfile.png", "neither a mask kind nor an existing file"),
])
def test_bad_mask_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mask(spec, 8)


# ----------------------------------------------------------------------------- forward models


def test_inpainting_zeroes_the_holes_by_hand():
    mask = box_mask(4, (1, 1, 2, 2))
    x = _rand(2, 3, 4, 4)
    y = Inpainting(mask).A(x)
    for n, c, i, j in np.ndindex(2, 3, 4, 4):
        hole = 1 <= i < 3 and 1 <= j < 3
        assert y[n, c, i, j] == (0 if hole else x[n, c, i, j])
    assert th.equal(Inpainting(mask).degraded(x), y)  # the holes show at 0, mid-grey, whatever y holds


def test_average_pooling_by_hand_and_nearest_upsampling():
    x = _rand(1, 2, 4, 6)
    op = SuperResolution(2)
    y = op.A(x)
    assert y.shape == (1, 2, 2, 3)
    for c, i, j in np.ndindex(2, 2, 3):
        block = [x[0, c, 2 * i + a, 2 * j + b].item() for a in range(2) for b in range(2)]
        assert math.isclose(y[0, c, i, j].item(), sum(block) / 4, rel_tol=1e-12)
    up = op.degraded(y)
    assert up.shape == x.shape
    for c, i, j in np.ndindex(2, 4, 6):
        assert up[0, c, i, j] == y[0, c, i // 2, j // 2]


def test_nearest_upsampling_is_the_pseudo_inverse_of_pooling():
    op, y = SuperResolution(4), _rand(2, 1, 3, 2)
    assert th.allclose(op.A(op.degraded(y)), y)  # A A^+ = I
    x = th.zeros(2, 1, 12, 8, dtype=th.float64, requires_grad=True)
    adjoint = th.autograd.grad((op.A(x) * y).sum(), x)[0]  # A^T y
    assert th.allclose(op.degraded(y), 16 * adjoint)  # A^+ = f^2 A^T


def _keys(d, a=-0.75):
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a if d < 2 else 0.0


def _bicubic_1d(v, f):
    """v: [n] -> [n f], Keys' cubic convolution at half-pixel centres, edge samples repeated."""
    out = []
    for o in range(len(v) * f):
        src = (o + 0.5) / f - 0.5
        i0 = math.floor(src)
        out.append(sum(v[min(max(i, 0), len(v) - 1)] * _keys(src - i) for i in range(i0 - 1, i0 + 3)))
    return np.array(out)


def test_bicubic_upsampling_by_hand():
    y = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 4))
    rows = np.stack([_bicubic_1d(r, 2) for r in y])  # along W, then along H
    expected = np.stack([_bicubic_1d(col, 2) for col in rows.T]).T
    got = bicubic_upsample(th.from_numpy(y).view(1, 1, 3, 4), 2)[0, 0].numpy()
    assert got.shape == (6, 8) and np.allclose(got, np.clip(expected, -1, 1), atol=1e-12)
    step = th.tensor([-1.0, 1.0, 1.0, -1.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert th.nn.functional.interpolate(step, scale_factor=4, mode="bicubic").max() > 1  # overshoots
    assert bicubic_upsample(step, 4).max() == 1  # clamped to the image range


@pytest.mark.parametrize("sigma, size", [(0.8, None), (1.5, 3)])
def test_gaussian_blur_by_hand(sigma, size):
    x = _rand(1, 2, 7, 8)
    op = GaussianBlur(sigma, size)
    k = 2 * math.ceil(3 * sigma) + 1 if size is None else size
    r = k // 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / g.sum() ** 2
    y = op.A(x)
    assert op.kernel_size == k and y.shape == x.shape
    for c in range(2):
        padded = np.pad(x[0, c].numpy(), r, mode="reflect")  # mirrored about the edge pixel
        for i, j in np.ndindex(7, 8):
            expected = (padded[i:i + k, j:j + k] * kernel).sum()
            assert math.isclose(y[0, c, i, j].item(), expected, rel_tol=1e-5, abs_tol=1e-6)
    assert th.allclose(op.A(th.full((1, 1, 7, 8), 0.3)), th.tensor(0.3))  # the kernel sums to 1


def test_default_blur_kernel_size():
    assert GaussianBlur(2).kernel_size == 13 and GaussianBlur(0.5).kernel_size == 5


# ----------------------------------------------------------------------------- measurement noise


def _seeded(seed):
    generator = th.Generator().manual_seed(seed)
    return lambda y: th.randn(y.shape, generator=generator, dtype=y.dtype)


def test_measurement_noise_statistics_and_seeding():
    x = th.zeros(4, 3, 32, 32)
    op = GaussianBlur(1.0, noise_sigma=0.1)
    noise = op.measure(x, _seeded(0)) - op.A(x)
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 * 0.1 / math.sqrt(n)
    assert abs(noise.std().item() / 0.1 - 1) < 4 / math.sqrt(2 * n)  # the std's standard error
    assert th.equal(op.measure(x, _seeded(0)), op.measure(x, _seeded(0)))
    assert not th.equal(op.measure(x, _seeded(0)), op.measure(x, _seeded(1)))
    y = SuperResolution(4, noise_sigma=0.1).measure(x, _seeded(0))
    assert y.shape == (4, 3, 8, 8) and y.std() > 0.05


def test_no_noise_is_drawn_without_sigma():
    def refuse(y):
        raise AssertionError("noise drawn")
    x = _rand(1, 1, 4, 4)
    assert th.equal(SuperResolution(2).measure(x, refuse), SuperResolution(2).A(x))


def test_inpainting_noise_stays_out_of_the_holes():
    mask = box_mask(8)
    y = Inpainting(mask, noise_sigma=0.5).measure(th.zeros(2, 1, 8, 8), _seeded(0))
    assert (y[:, :, 2:6, 2:6] == 0).all() and (y * mask != 0).sum() == 2 * (64 - 16)


# ----------------------------------------------------------------------------- from flags


def test_operator_from_flags_builds_each_task():
    inpaint = operator_from_flags("inpaint", 28, mask="box", noise_sigma=0.05)
    assert isinstance(inpaint, Inpainting) and inpaint.noise_sigma == 0.05
    assert th.equal(inpaint.known_mask, box_mask(28))
    sr = operator_from_flags("super_res", 28, factor=4)
    assert isinstance(sr, SuperResolution) and sr.known_mask is None and sr.A(th.zeros(1, 1, 28, 28)).shape[-1] == 7
    blur = operator_from_flags("deblur", 28, blur_sigma=2.0)
    assert isinstance(blur, GaussianBlur) and blur.kernel_size == 13
    assert operator_from_flags("sdedit", 28) is None and operator_from_flags("reconstruct", 28) is None


@pytest.mark.parametrize("task, flags, message", [
    ("super_res", {"factor": 8}, "--factor 8 does not divide the image size 28x28"),
    ("super_res", {"factor": 0}, "--factor 0 is not a positive integer"),
    ("inpaint", {"mask": "box:40"}, "does not fit in 28x28"),
    ("deblur", {"blur_sigma": 0}, "--blur_sigma 0 must be > 0"),
    ("deblur", {"blur_sigma": 1, "blur_kernel_size": 4}, "must be a positive odd integer"),
    ("deblur", {"blur_sigma": 10}, "needs images larger than 30 pixels, got 28x28"),
    ("deblur", {"noise_sigma": -0.1}, "--noise_sigma -0.1 is negative"),
    ("colorize", {}, "--task 'colorize' is unknown"),
])
def test_flag_errors_name_the_flag(task, flags, message):
    with pytest.raises(ValueError, match=message):
        operator_from_flags(task, 28, **flags)


def test_a_mask_of_another_size_is_refused_at_measurement():
    with pytest.raises(ValueError, match="the mask is 8x8 but the images are 6x6"):
        Inpainting(box_mask(8)).A(th.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match=r"expected \[1 or N, 1, H, W\]"):
        Inpainting(th.ones(8, 8))

