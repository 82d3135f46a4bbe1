"""Batch tools: build a reference npz from an image folder; dump an npz batch to PNG files; compare two
runs of a sweep pairwise; read the images of an npz batch or a folder (the real images of a sweep's
floor row).

    python evaluations/tools.py make_reference IMAGE_DIR OUT.npz --image_size 64 [--num_keep 10000]
    python evaluations/tools.py to_png BATCH.npz OUT_DIR
    python evaluations/tools.py paired_fid REF.npz OUT_DIR/features/A.npz OUT_DIR/features/B.npz [--rounds 1000]
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
from evaluations.bootstrap import LEVEL, FidBootstrap
from evaluations.evaluator import add_inception_flags, batch_activations, check_images
from evaluations.npz_io import BatchFileError, load_arrays, open_npz_array, read_headers
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


def _arrays(path, keys, fix, optional=()):
    """load_arrays of `keys` and of those `optional` keys that path holds, or a BatchFileError naming the
    missing keys and `fix`."""
    headers = read_headers(path)
    missing = [key for key in keys if key not in headers]
    if missing:
        raise BatchFileError(f"{path} has no {missing} (it has {list(headers)}): {fix}")
    return load_arrays(path, [*keys, *(key for key in optional if key in headers)])


def paired_fid(ref_path, path_a, path_b, rounds=1000, seed=0):
    """FID(a) - FID(b) of two runs drawn from the same seed, with its paired bootstrap interval
    (FidBootstrap.paired): the pool_3 features [N, D] of each (sweep.py --save_features files, or
    `--save_stats` files) against the reference's stored mu and sigma."""
    reference = _arrays(ref_path, ("mu", "sigma"), "the reference must store its statistics (make_reference or "
                        "`evaluator.py --save_stats` writes them)")
    runs = [_arrays(path, ("pool_3",), "write each run's features with `sweep.py --save_features True`", ("labels",))
            for path in (path_a, path_b)]
    labels = [run.get("labels") for run in runs]
    if all(x is not None for x in labels) and not np.array_equal(*labels):
        raise BatchFileError(f"{path_a} and {path_b} asked for other labels, so their images are not paired: "
                             "draw both runs with the same --seed, --num_samples and --class_balanced")
    return FidBootstrap(reference["mu"], reference["sigma"]).paired(runs[0]["pool_3"], runs[1]["pool_3"], rounds,
                                                                    seed)


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
    paired = commands.add_parser("paired_fid", help="FID(a) - FID(b) of two runs of one seed, with its paired spread")
    paired.add_argument("ref", help="reference npz with mu and sigma (make_reference or `evaluator.py --save_stats`)")
    paired.add_argument("a", help="features of run a: npz with pool_3 [N, D] (`sweep.py --save_features True`)")
    paired.add_argument("b", help="features of run b, drawn with the same --seed and --num_samples")
    paired.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    paired.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: 0)")
    args = parser.parse_args(argv)
    if args.command == "paired_fid":
        result = paired_fid(args.ref, args.a, args.b, args.rounds, args.seed)
        beyond = "beyond" if result["difference_low"] > 0 or result["difference_high"] < 0 else "inside"
        print(f"FID a {result['fid_a']:.3f}, b {result['fid_b']:.3f}; a - b = {result['difference']:.3f}, "
              f"{LEVEL:.0%} paired interval [{result['difference_low']:.3f}, {result['difference_high']:.3f}] "
              f"({beyond} the spread); a below b in {result['rounds_below_zero']:.1%} of {args.rounds} resamples")
        return result
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
