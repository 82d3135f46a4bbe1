"""Image quality against a reference: PSNR, SSIM and the measurement consistency of a restoration.

Images are tensors [N, C, H, W] (or arrays, converted with torch.as_tensor), either floats in [-1, 1]
(data range 2) or uint8 in [0, 255] (data range 255); `data_range` overrides that choice. Everything is
computed in float64. Each function returns one value per image [N] (reduction="none") or their mean
(reduction="mean", a 0-d tensor).
"""

import torch as th
import torch.nn.functional as F

from .editing.operators import gaussian_kernel

SSIM_WINDOW = 11  # Wang et al. 2004: an 11x11 Gaussian window of standard deviation 1.5
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(x, ref, mask=None, data_range=None, reduction="none"):
    """10 log10(data_range^2 / MSE) in dB, the MSE per image over the pixels where mask = 1 (mask:
    [1 or N, 1, H, W], e.g. an inpainting mask's known pixels; None: all pixels). Identical images
    give inf."""
    x, ref, data_range = _as_float64(x, ref, data_range)
    return _reduce(10 * th.log10(data_range ** 2 / _masked_mse(x, ref, mask)), reduction)


def ssim(x, ref, data_range=None, reduction="none"):
    """SSIM (Wang et al. 2004): the Gaussian-weighted (window 11, sigma 1.5) local statistics of each
    channel over the windows that fit inside the image (no padding; H, W >= 11), K1 = 0.01,
    K2 = 0.03, C_i = (K_i data_range)^2, biased (1/N) variances; the mean of the SSIM map over
    positions and channels. Identical images give 1."""
    x, ref, data_range = _as_float64(x, ref, data_range)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its window), "
                         f"got {x.shape[-2]}x{x.shape[-1]}")
    g = gaussian_kernel(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    window = th.outer(g, g).expand(x.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(image):
        return F.conv2d(image, window, groups=x.shape[1])

    mu_x, mu_r = local_mean(x), local_mean(ref)
    var_x = local_mean(x * x) - mu_x ** 2
    var_r = local_mean(ref * ref) - mu_r ** 2
    cov = local_mean(x * ref) - mu_x * mu_r
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2))
    return _reduce(ssim_map.flatten(1).mean(1), reduction)


def measurement_consistency(measured, y, mask=None, reduction="none"):
    """||A(x) - y|| / sqrt(dim) per image: the RMS difference between a restoration's measurement
    measured = A(x) and the given measurement y (same shape), over the entries where mask = 1 (an
    inpainting mask's known pixels; dim counts those entries), in the units of y. A perfect
    restoration scores the measurement noise's sigma."""
    measured, y = th.as_tensor(measured).double(), th.as_tensor(y).double()
    return _reduce(_masked_mse(measured, y, mask).sqrt(), reduction)


def _as_float64(x, ref, data_range):
    x, ref = th.as_tensor(x), th.as_tensor(ref)
    if x.shape != ref.shape:
        raise ValueError(f"the images are {list(x.shape)} but the references {list(ref.shape)}; compare "
                         "batches of the same shape [N, C, H, W]")
    if data_range is None:
        data_range = 255.0 if x.dtype == th.uint8 else 2.0
    return x.double(), ref.double(), float(data_range)


def _masked_mse(a, b, mask):
    """[N]: the mean of (a - b)^2 over the channels and the positions where mask [1 or N, 1, H, W] = 1."""
    squared = (a - b) ** 2
    if mask is None:
        return squared.flatten(1).mean(1)
    mask = th.as_tensor(mask, dtype=th.float64, device=a.device).expand(a.shape[0], 1, *a.shape[2:])
    count = mask.flatten(1).sum(1) * a.shape[1]
    if (count == 0).any():
        raise ValueError("the mask has no known pixels in some image; give a mask with 1 = known pixels")
    return (squared * mask).flatten(1).sum(1) / count


def _reduce(values, reduction):
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction={reduction!r}: use 'none' (one value per image) or 'mean'")
