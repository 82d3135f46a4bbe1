"""Training data loader throughput: images per second from ImageNet-like JPEGs against already-resized
PNGs, per --num_workers.

Writes --num_images synthetic photographs (random colour fields, smooth at large scales with texture down to
the pixel, 500x375, JPEG quality 90: ImageNet's typical size, files of ~85 KiB) and the same images centre-cropped to --image_size as PNG
(what a resize-once pass would leave), then times load_data's stream on each (the first batch, which
starts the workers, is timed apart). Prints one line per folder and worker count.

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py --workers 0,1,2
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch as th
from PIL import Image

from guided_diffusion.image_datasets import center_crop_arr, load_data

PHOTO_SIZE = (500, 375)  # width, height


def smooth_field(rng, size, octaves=8, falloff=0.85, grain=4.0):
    """[height, width, 3] uint8: random colour noise upsampled bicubically from 4, 8, 16, ... cells wide,
    each octave's amplitude `falloff` times the previous one's, plus per-pixel grain (standard deviation in
    levels). The defaults give JPEGs of ~85 KiB at quality 90 (ImageNet's train files: ~105 KiB on average)."""
    width, height = size
    total = np.zeros((height, width, 3), np.float32)
    for octave in range(octaves):
        cells = 4 * 2 ** octave
        coarse = rng.normal(size=(max(2, cells * height // width), cells, 3)).astype(np.float32)
        for c in range(3):
            up = Image.fromarray(coarse[..., c], mode="F").resize(size, resample=Image.BICUBIC)
            total[..., c] += np.asarray(up) * falloff ** octave
    total = (total - total.mean()) / (total.std() + 1e-6)
    return np.clip(128 + 50 * total + rng.normal(0, grain, total.shape), 0, 255).astype(np.uint8)


def write_images(root, num_images, image_size, seed=0):
    """root/jpeg: the photographs; root/png: their centre crops at image_size (classes c0..c9 in names)."""
    rng = np.random.default_rng(seed)
    jpeg_dir, png_dir = os.path.join(root, "jpeg"), os.path.join(root, "png")
    os.makedirs(jpeg_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    for i in range(num_images):
        name = f"c{i % 10}_{i:05d}"
        photo = Image.fromarray(smooth_field(rng, PHOTO_SIZE))
        photo.save(os.path.join(jpeg_dir, name + ".jpg"), quality=90)
        decoded = Image.open(os.path.join(jpeg_dir, name + ".jpg"))
        Image.fromarray(center_crop_arr(decoded.convert("RGB"), image_size)).save(os.path.join(png_dir, name + ".png"))
    return jpeg_dir, png_dir


def images_per_second(data_dir, image_size, batch_size, batches, num_workers):
    """(steady images/s over `batches` batches, seconds to the first batch) of load_data's stream."""
    stream = load_data(data_dir=data_dir, batch_size=batch_size, image_size=image_size, num_workers=num_workers)
    start = time.perf_counter()
    next(stream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * batch_size / (time.perf_counter() - start)
    stream.close()
    return rate, first


def first_batches(data_dir, args):
    """The first batch of a seeded stream, and of the same stream in sorted order (deterministic)."""
    return [next(load_data(data_dir=data_dir, batch_size=args.batch_size, image_size=args.image_size, num_workers=0,
                           deterministic=deterministic))[0] for deterministic in (False, True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=300, help="images per folder (default: 300)")
    parser.add_argument("--image_size", type=int, default=64, help="training resolution (default: 64)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--batches", type=int, default=6, help="batches timed after the first (default: 6)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated --num_workers values (default: 0,1,2)")
    parser.add_argument("--dir", default="", help="where to write the images (default: a temporary folder)")
    args = parser.parse_args()
    if args.num_images < (args.batches + 1) * args.batch_size:
        parser.error(f"--num_images {args.num_images} is less than one epoch of (--batches + 1) x --batch_size "
                     f"= {(args.batches + 1) * args.batch_size} images: the timing would include a new epoch")
    root = args.dir or tempfile.mkdtemp(prefix="bench_data_")
    start = time.perf_counter()
    jpeg_dir, png_dir = write_images(root, args.num_images, args.image_size)
    print(f"wrote {args.num_images} JPEGs ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, quality 90, mean "
          f"{_mean_kib(jpeg_dir):.0f} KiB) and their {args.image_size}x{args.image_size} PNGs "
          f"({_mean_kib(png_dir):.1f} KiB) to {root} in {time.perf_counter() - start:.1f} s")
    print(f"cpus={os.cpu_count()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
          f"batch={args.batch_size} timed={args.batches} batches")
    same = all(th.equal(a, b) for a, b in zip(first_batches(jpeg_dir, args), first_batches(png_dir, args)))
    print(f"the PNGs give the JPEGs' training batches bit for bit (centre crops, same seed): {same}")
    for label, folder in [(f"JPEG {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} -> {args.image_size}", jpeg_dir),
                          (f"PNG {args.image_size}x{args.image_size}", png_dir)]:
        for workers in [int(w) for w in args.workers.split(",")]:
            rate, first = images_per_second(folder, args.image_size, args.batch_size, args.batches, workers)
            print(f"{label:<22} num_workers={workers}  {rate:8.1f} img/s  "
                  f"({rate / max(workers, 1):7.1f} per decoding process, first batch {first:.2f} s)")


def _mean_kib(folder):
    names = os.listdir(folder)
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names) / len(names) / 1024


if __name__ == "__main__":
    main()
