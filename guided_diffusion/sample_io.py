"""The sampling scripts' outputs: uint8 images, the release's npz and a PNG grid beside it."""

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
    path = os.path.join(out_dir, f"samples_{'x'.join(str(n) for n in images.shape)}.npz")
    arrays = [images] if labels is None else [images, np.asarray(labels, dtype=np.int64)]
    np.savez(path, *arrays)
    save_grid(images[:GRID_MAX_IMAGES], os.path.join(out_dir, "samples_grid.png"))
    return path


def save_grid(images, path, pad=2):
    """images: uint8 [N, H, W, C] -> a PNG with ceil(sqrt(N)) columns and `pad` black pixels between."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k, image in enumerate(images):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[top:top + h, left:left + w] = image
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
