"""The low-resolution images a super-resolution run upsamples: a samples npz, checked and indexed."""

import numpy as np
import torch as th


class BaseSamples:
    """
    The low-resolution samples a super-resolution run upsamples: images uint8 [M, h, w, 3] and
    labels int64 [M] (or None). Sample i uses base sample i % M.
    """

    def __init__(self, images, labels):
        self.images = images
        self.labels = labels

    def __len__(self):
        return len(self.images)

    def low_res(self, indices, device=None, channels=3):
        """[len(indices), channels, h, w] float32 in [-1, 1], the model's `low_res` keyword
        (channels=1: the first channel of the stored RGB images, for a greyscale model)."""
        picked = self.images[[i % len(self) for i in indices]][..., :channels]
        x = th.from_numpy(picked).to(device=device, dtype=th.float32) / 127.5 - 1.0
        return x.permute(0, 3, 1, 2).contiguous()

    def labels_for(self, indices, device=None):
        """[len(indices)] int64 labels of the base samples picked for `indices`."""
        return th.from_numpy(self.labels[[i % len(self) for i in indices]]).to(device)


def load_base_samples(path, small_size, class_cond):
    """
    Reads a samples npz (as image_sample.py writes it) for super_res_sample.py: arr_0 must be
    uint8 [M, small_size, small_size, 3]; arr_1 (int labels [M]) is required when class_cond.
    Raises ValueError naming the problem otherwise.
    """
    if not path:
        raise ValueError("--base_samples is required: the npz of low-resolution samples to upsample")
    try:
        archive = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--base_samples {path} is not a readable npz file ({err})") from err
    with archive:
        if "arr_0" not in archive.files:
            raise ValueError(
                f"--base_samples {path} has no arr_0 (it holds {archive.files}); pass the "
                "samples_NxHxWx3.npz written by image_sample.py"
            )
        images = archive["arr_0"]
        labels = archive["arr_1"] if class_cond and "arr_1" in archive.files else None
    expected = (small_size, small_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or not len(images):
        raise ValueError(
            f"--base_samples {path}: arr_0 is {images.dtype} {list(images.shape)}, expected uint8 "
            f"[N, {small_size}, {small_size}, 3] (N > 0); check --small_size or the file"
        )
    if class_cond:
        if labels is None:
            raise ValueError(
                f"--base_samples {path} has no arr_1 labels but --class_cond True needs them; "
                "sample the base images with a class-conditional model or pass --class_cond False"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"--base_samples {path}: arr_1 is {labels.dtype} {list(labels.shape)}, expected "
                f"integer labels [{len(images)}]"
            )
        labels = labels.astype(np.int64)
    return BaseSamples(images, labels)
