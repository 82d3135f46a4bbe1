"""guided_diffusion.image_metrics: PSNR's closed forms, SSIM against a straightforward windowed numpy
implementation (and scikit-image's when it is installed), measurement consistency."""

import math

import numpy as np
import pytest
import torch as th

from guided_diffusion.image_metrics import measurement_consistency, psnr, ssim
from guided_diffusion.editing.operators import Inpainting, SuperResolution, box_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return th.from_numpy(np.random.default_rng(seed).uniform(-1, 1, shape))


def test_psnr_identical_images_and_constant_offsets():
    x = _rand(3, 3, 8, 8).clamp(-0.8, 0.8)
    assert th.isinf(psnr(x, x)).all()
    offsets = th.tensor([0.1, 0.2, 0.05], dtype=th.float64).view(3, 1, 1, 1)
    expected = [10 * math.log10(4 / d ** 2) for d in (0.1, 0.2, 0.05)]  # data range 2
    assert np.allclose(psnr(x + offsets, x).numpy(), expected)
    assert math.isclose(psnr(x + offsets, x, reduction="mean").item(), sum(expected) / 3)


def test_psnr_of_uint8_images_uses_255():
    ref = th.from_numpy(np.random.default_rng(0).integers(0, 250, (2, 1, 6, 6), dtype=np.uint8))
    assert np.allclose(psnr(ref + 5, ref).numpy(), 10 * math.log10(255 ** 2 / 25))
    assert np.allclose(psnr(ref + 5, ref, data_range=2).numpy(), 10 * math.log10(4 / 25))


def test_psnr_on_the_known_pixels_of_a_mask():
    mask = box_mask(8)  # 1 = known
    x = _rand(2, 3, 8, 8)
    holes_only = x + 0.5 * (1 - mask)
    assert th.isinf(psnr(holes_only, x, mask=mask)).all()
    assert np.allclose(psnr(x + 0.1 * mask, x, mask=mask).numpy(), 10 * math.log10(4 / 0.01))
    per_image = th.stack([mask[0], 1 - mask[0]])  # [N, 1, H, W]: image 1 knows only the box
    assert th.isinf(psnr(holes_only, x, mask=per_image)).tolist() == [True, False]
    with pytest.raises(ValueError, match="no known pixels"):
        psnr(x, x, mask=th.zeros(1, 1, 8, 8))


def _ssim_by_windows(x, y, data_range):
    """Straightforward SSIM of two [H, W] arrays: every 11x11 window inside the image, Gaussian weights
    w (sigma 1.5, summing to 1), weighted means and centred (co)variances."""
    g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i, j in np.ndindex(x.shape[0] - 10, x.shape[1] - 10):
        a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
        ma, mb = (w * a).sum(), (w * b).sum()
        va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
        values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_a_windowed_implementation():
    x = _rand(3, 2, 13, 15, seed=1)
    y = (x + 0.3 * _rand(3, 2, 13, 15, seed=2)).clamp(-1, 1)
    y[2] = _rand(2, 13, 15, seed=3)  # an unrelated image: SSIM near 0
    expected = [np.mean([_ssim_by_windows(x[n, c].numpy(), y[n, c].numpy(), 2.0) for c in range(2)])
                for n in range(3)]
    got = ssim(y, x)
    assert np.allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert 0.3 < got[0] < 0.99 and abs(got[2]) < 0.2
    assert th.equal(ssim(x, x), th.ones(3, dtype=th.float64))


def test_ssim_of_uint8_images_uses_255():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 1, 12, 12)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
    expected = _ssim_by_windows(y[0, 0].astype(float), x[0, 0].astype(float), 255.0)
    assert math.isclose(ssim(y, x).item(), expected, rel_tol=1e-10)


def test_ssim_and_psnr_errors():
    with pytest.raises(ValueError, match="at least 11x11 pixels"):
        ssim(th.zeros(1, 1, 7, 7), th.zeros(1, 1, 7, 7))
    with pytest.raises(ValueError, match=r"the images are \[1, 1, 8, 8\] but the references \[1, 1, 7, 7\]"):
        psnr(th.zeros(1, 1, 8, 8), th.zeros(1, 1, 7, 7))
    with pytest.raises(ValueError, match="reduction='sum'"):
        psnr(th.zeros(1, 1, 8, 8), th.ones(1, 1, 8, 8), reduction="sum")


def test_measurement_consistency_is_the_rms_over_measured_entries():
    op = SuperResolution(2)
    x = _rand(2, 3, 8, 8)
    y = op.A(x) + th.tensor([0.3, 0.1], dtype=th.float64).view(2, 1, 1, 1)
    assert np.allclose(measurement_consistency(op.A(x), y).numpy(), [0.3, 0.1])
    mask = box_mask(8)
    inpaint = Inpainting(mask)
    y = inpaint.A(x) + 0.2 * mask  # off by 0.2 on every known pixel, holes ignored
    assert np.allclose(measurement_consistency(inpaint.A(x) + 5 * (1 - mask), y, mask).numpy(), 0.2)


def test_a_perfect_restoration_scores_the_noise_sigma():
    op = SuperResolution(2, noise_sigma=0.05)
    x = th.zeros(4, 3, 64, 64, dtype=th.float64)
    generator = th.Generator().manual_seed(0)
    y = op.measure(x, lambda v: th.randn(v.shape, generator=generator, dtype=v.dtype))
    score = measurement_consistency(op.A(x), y, reduction="mean").item()
    assert abs(score / 0.05 - 1) < 0.05  # 3072 noise values per image
