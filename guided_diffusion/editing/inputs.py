"""The images image_edit.py restores or edits (--input): a folder of images or a samples npz, checked
against the model's image size and channel count.

A folder: every .jpg/.jpeg/.png/.gif under it (recursive, sorted by name as image_datasets lists them),
converted by PIL to the model's channels ("L" or "RGB") but never resized. Labels come from the file
names' class prefix (the name up to the first "_", as image_datasets reads it) when every prefix is an
integer or starts with one followed by "-" ("3_a.png", "3-dress_00012.png" as datasets/fashion_mnist.py
writes them): otherwise there are none.
An npz as the release writes it: arr_0 uint8 [N, H, W, C], optional arr_1 integer labels [N]. An RGB
batch for a 1-channel model is accepted when its three channels are equal (greyscale saved as RGB, as
sample_io does) and its first channel is used.
"""

import os
import re

import numpy as np
import torch as th

from ..image_datasets import PIL_MODES, _read_image, class_name_of, list_image_files

_LABEL_PREFIX = re.compile(r"(\d+)(-.*)?")  # a class name that gives an integer label


def load_edit_inputs(path, image_size, image_channels):
    """(x [N, C, S, S] float32 in [-1, 1] (uint8 / 127.5 - 1), labels int64 [N] or None) from --input.

    path: a folder of images or an .npz file; image_size S and image_channels C: the model's.
    Raises ValueError with a one-line message naming the problem and the fix.
    """
    if not path:
        raise ValueError("--input is required: a folder of images or an npz batch (arr_0 uint8 NHWC)")
    if image_channels not in PIL_MODES:
        raise ValueError(f"image_channels={image_channels!r}: use 3 (RGB) or 1 (greyscale)")
    if os.path.isdir(path):
        images, labels = _read_folder(path, image_channels)
    elif os.path.isfile(path):
        images, labels = _read_npz(path, image_channels)
    else:
        raise ValueError(f"--input {path} does not exist; give a folder of images or an npz batch")
    if images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"--input {path} holds {images.shape[1]}x{images.shape[2]} images but the model makes "
                         f"{image_size}x{image_size}; resize the images or give the model's --image_size")
    x = th.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x.contiguous(), None if labels is None else th.from_numpy(labels)


def _read_folder(path, image_channels):
    """(uint8 [N, H, W, C], int64 labels [N] or None) of the images under the folder `path`."""
    try:
        files = list_image_files(path)
    except ValueError as err:
        raise ValueError(f"--input {path}: {err}") from None
    arrays, unreadable = [], []
    for file in files:
        try:
            arrays.append(np.asarray(_read_image(file, PIL_MODES[image_channels])))
        except Exception as exc:  # noqa: BLE001 (any decoding error means an unusable file)
            unreadable.append(f"{file} ({type(exc).__name__}: {exc})")
    if unreadable:
        raise ValueError(f"--input {path}: {len(unreadable)} of {len(files)} image files cannot be read, first "
                         f"{unreadable[0]}; remove or replace them")
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(f"--input {path} mixes image sizes {', '.join(f'{h}x{w}' for h, w in sizes)}; give "
                         "images of the model's --image_size")
    matches = [_LABEL_PREFIX.fullmatch(class_name_of(f)) for f in files]
    labels = np.array([int(m[1]) for m in matches], np.int64) if all(matches) else None
    return np.stack(arrays).reshape(len(arrays), *sizes[0], image_channels), labels


def _read_npz(path, image_channels):
    """(uint8 [N, H, W, C], int64 labels [N] or None) of an npz batch, C = image_channels."""
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files if key in ("arr_0", "arr_1")}
    except (OSError, ValueError) as err:
        raise ValueError(f"--input {path} is not a readable npz file ({err}); give a folder of images or an "
                         "npz batch (arr_0 uint8 NHWC)") from None
    images, labels = arrays.get("arr_0"), arrays.get("arr_1")
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or not len(images):
        found = "no arr_0" if images is None else f"arr_0 {images.dtype} {list(images.shape)}"
        raise ValueError(f"--input {path} has {found}; expected uint8 images [N, H, W, C] with N > 0, as "
                         "image_sample.py writes them")
    if labels is not None and (labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"--input {path}: arr_1 is {labels.dtype} {list(labels.shape)}, expected integer "
                         f"labels [{len(images)}]; fix or drop arr_1")
    channels = images.shape[-1]
    if channels == 3 and image_channels == 1:
        if not ((images[..., :1] == images[..., 1:]).all()):
            raise ValueError(f"--input {path} holds colour RGB images but the model has 1 channel; convert them "
                             "to greyscale first (or use a 3-channel model)")
        images = images[..., :1]
    elif channels != image_channels:
        raise ValueError(f"--input {path} holds {channels}-channel images (arr_0 {list(images.shape)}, read as "
                         f"NHWC) but the model has {image_channels} (--image_channels); convert them")
    return images, None if labels is None else labels.astype(np.int64)
