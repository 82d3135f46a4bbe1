"""Forward models y = A(x) + n for restoration: inpainting masks, average-pool super-resolution, blur.

Every operator takes images x [N, C, H, W] in [-1, 1] and is differentiable in x (DPS takes the gradient
of ||y - A(x0_hat)|| through it). `measure(x)` adds Gaussian measurement noise of standard deviation
`noise_sigma` (in [-1, 1] pixel units) drawn by `noise_fn`, as the samplers draw theirs;
`degraded(y)` shows a measurement as an image [N, C, H, W] at the input size; `known_mask` is the
inpainting mask (1 = known pixel, [1 or N, 1, H, W]) and None for the other operators.
"""

import math
import os

import numpy as np
import torch as th
import torch.nn.functional as F
from PIL import Image

TASKS = ("inpaint", "super_res", "deblur")  # the tasks with a forward model
MASK_SPECS = "box, box:S, box:TOP,LEFT,HEIGHT,WIDTH, half:left|right|top|bottom, random:FRACTION or a PNG file"


class Operator:
    """A forward model y = A(x) + n, n ~ N(0, noise_sigma^2 I). Subclasses define A and may define
    degraded; noise_sigma >= 0 is in the units of x ([-1, 1] pixels)."""

    known_mask = None

    def __init__(self, noise_sigma=0.0):
        if not noise_sigma >= 0:
            raise ValueError(f"--noise_sigma {noise_sigma} is negative; give a standard deviation >= 0 "
                             "(in [-1, 1] pixel units, e.g. 0.05)")
        self.noise_sigma = float(noise_sigma)

    def A(self, x):
        """x: [N, C, H, W] -> the noiseless measurement y."""
        raise NotImplementedError

    def measure(self, x, noise_fn=th.randn_like):
        """y = A(x) + noise_sigma * noise_fn(A(x)); noise_fn(y) -> standard normal like y (e.g. a
        sample_seeds.SeededBatch's noise_like, so runs are seeded). No noise is drawn when sigma is 0."""
        y = self.A(x)
        if self.noise_sigma == 0:
            return y
        return y + self.noise_sigma * noise_fn(y)

    def degraded(self, y):
        """A measurement y as an image [N, C, H, W] for display (here: y itself)."""
        return y


class Inpainting(Operator):
    """A(x) = m * x with the known-pixel mask m [1 or N, 1, H, W] (1 = known, 0 = hole), broadcast over
    channels (and the batch). The noise of measure() is masked too: y = m * (x + n), holes stay 0 (mid-grey)."""

    def __init__(self, known_mask, noise_sigma=0.0):
        super().__init__(noise_sigma)
        if known_mask.dim() != 4 or known_mask.shape[1] != 1:
            raise ValueError(f"known_mask is {list(known_mask.shape)}; expected [1 or N, 1, H, W]")
        self.known_mask = known_mask.float()

    def A(self, x):
        if x.shape[-2:] != self.known_mask.shape[-2:]:
            raise ValueError(f"the mask is {_size(self.known_mask)} but the images are {_size(x)}; give a mask "
                             "of the model's --image_size")
        return self.known_mask.to(x.device) * x

    def measure(self, x, noise_fn=th.randn_like):
        return self.known_mask.to(x.device) * super().measure(x, noise_fn)

    def degraded(self, y):
        """The measurement with its holes at 0, which shows as mid-grey."""
        return self.known_mask.to(y.device) * y


class SuperResolution(Operator):
    """A(x) = average pooling over factor x factor blocks: [N, C, H, W] -> [N, C, H / f, W / f].

    A A^T = I / f^2, so the pseudo-inverse A^+ = f^2 A^T is nearest-neighbour upsampling (each block
    takes its average): degraded(y) = A^+ y.
    """

    def __init__(self, factor, noise_sigma=0.0):
        super().__init__(noise_sigma)
        if not (isinstance(factor, int) and factor >= 1):
            raise ValueError(f"--factor {factor!r} is not a positive integer; use 2, 4 or 8")
        self.factor = factor

    def A(self, x):
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"--factor {self.factor} does not divide the image size {_size(x)}; use a factor "
                             "that does (e.g. 2, 4 or 8 for a power-of-two size)")
        return F.avg_pool2d(x, self.factor)

    def degraded(self, y):
        return pseudo_inverse_upsample(y, self.factor)


class GaussianBlur(Operator):
    """A(x) = x convolved with a normalised Gaussian kernel, each channel alone; same size as x.

    The kernel is separable: g[i] = exp(-i^2 / (2 sigma^2)) / sum, i = -r..r, kernel_size = 2r + 1 (odd;
    default 2 ceil(3 sigma) + 1). Borders use reflect padding: mirrored about the edge pixel, which is
    not repeated (numpy's "reflect", torch's F.pad "reflect"), so r must be < H and W.
    """

    def __init__(self, sigma, kernel_size=None, noise_sigma=0.0):
        super().__init__(noise_sigma)
        if not sigma > 0:
            raise ValueError(f"--blur_sigma {sigma} must be > 0 (in pixels, e.g. 2)")
        kernel_size = 2 * math.ceil(3 * sigma) + 1 if kernel_size is None else kernel_size
        if not (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1):
            raise ValueError(f"blur kernel size {kernel_size!r} must be a positive odd integer")
        self.sigma, self.kernel_size = float(sigma), kernel_size
        self.kernel = gaussian_kernel(kernel_size, self.sigma).float()  # [kernel_size]

    def A(self, x):
        r = self.kernel_size // 2
        if r >= min(x.shape[-2:]):
            raise ValueError(f"a blur kernel of size {self.kernel_size} needs images larger than {r} pixels, "
                             f"got {_size(x)}; use a smaller --blur_sigma")
        c = x.shape[1]
        g = self.kernel.to(device=x.device, dtype=x.dtype)
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def gaussian_kernel(kernel_size, sigma):
    """[kernel_size] float64: exp(-i^2 / (2 sigma^2)) for i = -(kernel_size // 2) .. kernel_size // 2, summing to 1."""
    offsets = th.arange(kernel_size, dtype=th.float64) - kernel_size // 2
    g = th.exp(-offsets ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def pseudo_inverse_upsample(y, factor):
    """y: [N, C, h, w] -> [N, C, h f, w f], each pixel repeated over a factor x factor block."""
    return y.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def bicubic_upsample(y, factor):
    """y: [N, C, h, w] -> [N, C, h f, w f] by bicubic interpolation (torch's: Keys' kernel with a = -0.75,
    half-pixel centres, edge pixels repeated), clamped to [-1, 1]; the super-resolution baseline."""
    return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def _size(x):
    """'HxW' of a tensor [..., H, W], for messages."""
    return f"{x.shape[-2]}x{x.shape[-1]}"


def box_mask(image_size, box=None):
    """[1, 1, S, S] known mask with a hole: box = (top, left, height, width), or a side length for a
    centred square, or None for the centred square of side S // 2 (the central 14x14 of 28x28)."""
    if box is None or isinstance(box, int):
        side = image_size // 2 if box is None else box
        top = (image_size - side) // 2
        box = (top, top, side, side)
    top, left, height, width = box
    if not (0 <= top and 0 <= left and height > 0 and width > 0
            and top + height <= image_size and left + width <= image_size):
        raise ValueError(f"mask box (top {top}, left {left}, height {height}, width {width}) does not fit "
                         f"in {image_size}x{image_size} images; give a box inside the image")
    mask = th.ones(1, 1, image_size, image_size)
    mask[..., top:top + height, left:left + width] = 0
    return mask


def half_mask(image_size, side):
    """[1, 1, S, S] known mask whose `side` half ("left", "right", "top" or "bottom") is the hole."""
    half = image_size // 2
    boxes = {"left": (0, 0, image_size, half), "right": (0, half, image_size, image_size - half),
             "top": (0, 0, half, image_size), "bottom": (half, 0, image_size - half, image_size)}
    if side not in boxes:
        raise ValueError(f"--mask half:{side}: the side must be one of {', '.join(boxes)}")
    return box_mask(image_size, boxes[side])


def random_mask(image_size, fraction, seed=0):
    """[1, 1, S, S] known mask with round(fraction * S^2) hole pixels at places drawn by
    numpy's default_rng(seed) (the same mask for every image of a run)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"--mask random:{fraction}: the fraction of missing pixels must be in [0, 1]")
    holes = np.random.default_rng(seed).permutation(image_size * image_size)[:round(fraction * image_size ** 2)]
    mask = np.ones(image_size * image_size, dtype=np.float32)
    mask[holes] = 0
    return th.from_numpy(mask).view(1, 1, image_size, image_size)


def mask_from_file(path, image_size):
    """[1, 1, S, S] known mask from an image file: white (grey level >= 128 after conversion to
    greyscale) = known, black = hole. The file must be S x S."""
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--mask {path} cannot be read as an image ({err}); give a PNG with white = "
                         "known pixels, black = holes") from err
    if grey.shape != (image_size, image_size):
        raise ValueError(f"--mask {path} is {grey.shape[1]}x{grey.shape[0]} but the model's images are "
                         f"{image_size}x{image_size}; give a mask of the model's --image_size")
    return th.from_numpy((grey >= 128).astype(np.float32)).view(1, 1, image_size, image_size)


def parse_mask(spec, image_size, seed=0):
    """The known mask [1, 1, S, S] of a --mask value: "box" (centred S/2 square), "box:SIDE",
    "box:TOP,LEFT,HEIGHT,WIDTH", "half:left|right|top|bottom" (that half is the hole),
    "random:FRACTION" (that share of pixels missing, drawn with `seed`), or a path to a mask image."""
    kind, _, arg = spec.partition(":")
    if kind == "box":
        numbers = _numbers(spec, arg, int)
        if len(numbers) not in (0, 1, 4):
            raise ValueError(f"--mask {spec!r}: give box, box:SIDE or box:TOP,LEFT,HEIGHT,WIDTH")
        return box_mask(image_size, numbers[0] if len(numbers) == 1 else numbers or None)
    if kind == "half":
        return half_mask(image_size, arg)
    if kind == "random":
        fraction = _numbers(spec, arg, float)
        if len(fraction) != 1:
            raise ValueError(f"--mask {spec!r}: give random:FRACTION, e.g. random:0.5")
        return random_mask(image_size, fraction[0], seed)
    if os.path.isfile(spec):
        return mask_from_file(spec, image_size)
    raise ValueError(f"--mask {spec!r} is neither a mask kind nor an existing file; use one of: {MASK_SPECS}")


def _numbers(spec, arg, kind):
    """'3,4' -> [kind('3'), kind('4')]; '' -> []."""
    try:
        return [kind(v) for v in arg.split(",")] if arg else []
    except ValueError:
        raise ValueError(f"--mask {spec!r} has a malformed number; use one of: {MASK_SPECS}") from None


def operator_from_flags(task, image_size, mask="box", factor=4, blur_sigma=2.0, blur_kernel_size=None,
                        noise_sigma=0.0, mask_seed=0):
    """The operator of an image_edit.py task, or None for the tasks without a measurement
    ("sdedit", "reconstruct").

    task:        "inpaint" | "super_res" | "deblur" | "sdedit" | "reconstruct".
    image_size:  the model's image side S (checked against the mask and the factor here).
    mask:        --mask, see parse_mask (inpaint).
    factor:      --factor, the pooling factor, dividing S (super_res).
    blur_sigma:  --blur_sigma in pixels; blur_kernel_size odd or None for 2 ceil(3 sigma) + 1 (deblur).
    noise_sigma: --noise_sigma, the measurement noise's standard deviation in [-1, 1] units.
    mask_seed:   the seed of a "random:F" mask.
    Raises ValueError with a one-line message naming the bad flag.
    """
    if task in ("sdedit", "reconstruct"):
        return None
    if task == "inpaint":
        operator = Inpainting(parse_mask(mask, image_size, mask_seed), noise_sigma)
    elif task == "super_res":
        operator = SuperResolution(factor, noise_sigma)
    elif task == "deblur":
        operator = GaussianBlur(blur_sigma, blur_kernel_size, noise_sigma)
    else:
        raise ValueError(f"--task {task!r} is unknown; use one of: {', '.join(TASKS)}, sdedit, reconstruct")
    operator.A(th.zeros(1, 1, image_size, image_size))  # the size checks (mask, factor, blur radius)
    return operator
