"""Batch tools: build a reference npz from an image folder; dump an npz batch to PNG files; read the
images of an npz batch or a folder (the real images of a sweep's floor row).

    python evaluations/tools.py make_reference IMAGE_DIR OUT.npz --image_size 64 [--num_keep 10000]
    python evaluations/tools.py to_png BATCH.npz OUT_DIR
"""

import argparse
import dataclasses
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a script: make the `evaluations` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from evaluations import metrics
from evaluations.evaluator import add_inception_flags, batch_activations, check_images
from evaluations.npz_io import BatchFileError, open_npz_array
from evaluations.stats import BatchStats
from evaluations.weights import load_inception
from guided_diffusion.errors import ArgumentParser, run

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def list_images(folder):
    """Sorted paths of the image files anywhere under ``folder``."""
    paths = [
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not paths:
        raise FileNotFoundError(f"no image files under {folder!r}")
    return sorted(paths)


def load_square(path, image_size):
    """An image as uint8 [image_size, image_size, 3]: shorter side resized (bicubic), then centre-cropped."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = image_size / min(image.size)
        width, height = (max(image_size, round(side * scale)) for side in image.size)
        image = image.resize((width, height), Image.BICUBIC)
        left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
        return np.asarray(image.crop((left, top, left + image_size, top + image_size)))


def readable_images(paths, image_size, skipped):
    """Yield load_square(path) for each path, skipping (with a warning naming it) each unreadable file,
    which is appended to ``skipped``."""
    for path in paths:
        try:
            yield load_square(path, image_size)
        except (OSError, ValueError, SyntaxError) as error:  # truncated, not an image, corrupt header
            warnings.warn(f"skipping unreadable image {path}: {error}")
            skipped.append(path)


def batched(items, batch_size):
    """Stack an iterable of arrays into [<=batch_size, ...] arrays."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def read_images(path, image_size):
    """uint8 [N, image_size, image_size, 3]: every readable image of a folder (load_square), or the
    arr_0 of an npz batch. Raises FileNotFoundError for a folder without images, BatchFileError for a
    missing or bad npz and for fewer than NHOOD_SIZE + 1 images or images of another size."""
    if os.path.isdir(path):
        chunks = list(batched(readable_images(list_images(path), image_size, []), 1024))
    else:
        with open_npz_array(path, "arr_0") as batch:
            check_images(batch.shape, batch.dtype, path)
            chunks = list(batch.read_batches(1024))
    images = np.concatenate(chunks) if chunks else np.zeros((0, image_size, image_size, 3), np.uint8)
    if len(images) <= metrics.NHOOD_SIZE or images.shape[1:3] != (image_size, image_size):
        raise BatchFileError(f"{path}: {len(images)} images of {images.shape[1]}x{images.shape[2]} pixels; "
                             f"expected more than {metrics.NHOOD_SIZE} images of {image_size}x{image_size} "
                             "(the samples' size)")
    return images


def make_reference(folder, out_path, image_size, num_keep, model, batch_size=64, device="cpu"):
    """Write a reference batch: ``arr_0`` (the first ``num_keep`` readable images) with their pool_3
    activations, and mu/sigma/mu_s/sigma_s over all readable images; the evaluator then needs no
    Inception pass over it. Unreadable files are skipped with a warning.

    :return: (number of images used, list of skipped paths).
    """
    if num_keep <= metrics.NHOOD_SIZE:
        raise ValueError(f"num_keep={num_keep}: precision/recall need more than {metrics.NHOOD_SIZE} images")
    paths = list_images(folder)
    skipped = []
    kept = []

    def keep(stream):
        for batch in stream:
            room = num_keep - sum(len(k) for k in kept)
            if room > 0:
                kept.append(batch[:room])
            yield batch

    batches = keep(batched(readable_images(paths, image_size, skipped), batch_size))
    acts = batch_activations(model, batches, device, total=-(-len(paths) // batch_size))
    used = len(paths) - len(skipped)
    if used <= metrics.NHOOD_SIZE:
        raise ValueError(f"{folder!r}: only {used} readable images ({len(skipped)} skipped); a reference "
                         f"needs more than {metrics.NHOOD_SIZE}")
    kept = np.concatenate(kept)
    stats = BatchStats.from_activations(acts)
    dataclasses.replace(stats, pool=stats.pool[: len(kept)]).save(out_path, arr_0=kept)
    return used, skipped


def npz_to_png(path, out_dir, batch_size=256):
    """Write every image of an npz batch's arr_0 to out_dir/000000.png, ... Returns the count."""
    os.makedirs(out_dir, exist_ok=True)
    index = 0
    with open_npz_array(path) as images:
        check_images(images.shape, images.dtype, path)
        for batch in images.read_batches(batch_size):
            for image in batch:
                Image.fromarray(image).save(os.path.join(out_dir, f"{index:06d}.png"))
                index += 1
    return index


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ref = commands.add_parser("make_reference", help="reference npz from an image folder")
    ref.add_argument("image_dir", help="folder of images (searched recursively)")
    ref.add_argument("out", help="the reference npz to write")
    ref.add_argument("--image_size", type=int, required=True, help="side of the square images in pixels")
    ref.add_argument("--num_keep", type=int, default=10000, help="images stored in arr_0 (default: 10000)")
    add_inception_flags(ref)
    png = commands.add_parser("to_png", help="dump an npz batch to PNG files")
    png.add_argument("batch", help="npz with arr_0 uint8 [N, H, W, 3] images")
    png.add_argument("out_dir", help="folder for 000000.png, 000001.png, ...")
    args = parser.parse_args(argv)
    if args.command == "to_png":
        print(f"wrote {npz_to_png(args.batch, args.out_dir)} images to {args.out_dir}")
        return
    model = load_inception(args.inception_path or None, args.device)
    count, skipped = make_reference(args.image_dir, args.out, args.image_size, args.num_keep, model, args.batch_size,
                                    args.device)
    print(f"wrote {args.out}: statistics over {count} images, arr_0 holds {min(count, args.num_keep)}"
          + (f"; skipped {len(skipped)} unreadable files (named in the warnings above)" if skipped else ""))


if __name__ == "__main__":
    run(main)
