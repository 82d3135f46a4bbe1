"""The sampling scripts' outputs: uint8 images, the release's npz and a PNG grid beside it (and the
editing script's original | degraded | output grid)."""

import math
import os

import numpy as np
import torch as th
from PIL import Image

GRID_MAX_IMAGES = 64  # samples_grid.png shows at most this many samples (the first ones)


def to_uint8_nhwc(x):
    """x: [N, C, H, W] floats in [-1, 1] -> [N, H, W, 3] uint8, (x + 1) * 127.5 clamped and truncated.

    A greyscale batch (C = 1) is repeated into 3 channels, so every npz holds RGB images.
    """
    images = ((x + 1) * 127.5).clamp(0, 255).to(th.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous()


def save_samples(out_dir, images, labels=None):
    """Writes out_dir/samples_{N}x{H}x{W}x{C}.npz (arr_0 = images uint8 [N, H, W, C], arr_1 = labels
    int64 [N] when given) and out_dir/samples_grid.png beside it. Returns the npz path."""
    path = save_npz(out_dir, "samples", images, labels)
    save_grid(images[:GRID_MAX_IMAGES], os.path.join(out_dir, "samples_grid.png"))
    return path


def save_npz(out_dir, prefix, images, labels=None):
    """Writes out_dir/{prefix}_{N}x{H}x{W}x{C}.npz: arr_0 = images uint8 [N, H, W, C], arr_1 = labels
    int64 [N] when given. Returns its path."""
    path = os.path.join(out_dir, f"{prefix}_{'x'.join(str(n) for n in images.shape)}.npz")
    arrays = [images] if labels is None else [images, np.asarray(labels, dtype=np.int64)]
    np.savez(path, *arrays)
    return path


def save_edit_grid(original, degraded, output, path):
    """The editing script's edit_grid.png: one row per input, original | degraded | output.

    Each argument: [N, C, H, W] floats in [-1, 1] (C = 1: a greyscale PNG, C = 3: RGB), converted as
    to_uint8_nhwc converts samples; 2 black pixels between the images, as in samples_grid.png.
    """
    if not original.shape == degraded.shape == output.shape:
        raise ValueError(f"edit grid columns differ in shape: original {list(original.shape)}, degraded "
                         f"{list(degraded.shape)}, output {list(output.shape)}; show them at the same size")
    columns = th.stack([original, degraded, output], dim=1).flatten(0, 1)  # [3N, C, H, W], row-major
    images = to_uint8_nhwc(columns.float().cpu())[..., :original.shape[1]]
    save_grid(images.numpy(), path, cols=3)


def save_grid(images, path, pad=2, cols=None):
    """images: uint8 [N, H, W, C] -> a PNG filled row by row, `cols` columns (default ceil(sqrt(N))),
    `pad` black pixels between and around the images."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k, image in enumerate(images):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[top:top + h, left:left + w] = image
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
