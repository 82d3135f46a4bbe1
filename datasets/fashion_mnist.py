"""Export Fashion-MNIST (Debian package dataset-fashion-mnist, MIT) to an image folder for load_data.

Each image becomes `{label}-{name}_{index:05d}.png`, by default a 32x32 RGB picture (the 28x28 grey image
padded with 2 black pixels per side), so the class prefix before "_" sorts in label order (0-tshirt ... 9-boot).
`--image_size` below 28 downsamples instead of padding; `--channels 1` writes greyscale PNGs.

    python datasets/fashion_mnist.py --out_dir data/fashion_train --per_class 1000
    python datasets/fashion_mnist.py --out_dir data/fashion_test --split t10k --classes 0,1,7
    python datasets/fashion_mnist.py --out_dir data/fashion28 --image_size 28 --channels 1

If the package's files are missing and apt-get is available, the package is installed first.
"""

import argparse
import gzip
import os
import shutil
import subprocess

import numpy as np
from PIL import Image

from guided_diffusion.errors import ArgumentParser, run

DATA_DIR = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def ensure_installed(data_dir=DATA_DIR):
    """Install the Debian package with apt-get when its files are missing; error if that is impossible."""
    if os.path.exists(os.path.join(data_dir, "train-images-idx3-ubyte.gz")):
        return
    if data_dir != DATA_DIR or shutil.which("apt-get") is None:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {data_dir}; install them with "
            f"`apt-get update && apt-get install -y {PACKAGE}` or pass --source_dir to a folder holding "
            f"train-images-idx3-ubyte.gz and friends"
        )
    install = ["apt-get", "install", "-y", PACKAGE]
    if subprocess.run(install).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(install, check=True)


def read_idx(path):
    """A gzipped IDX file (the MNIST format) as a uint8 numpy array of its stored shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def select(labels, classes, per_class):
    """Indices of the first `per_class` examples (0: all) of each class in `classes`, in file order."""
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.extend(idx[:per_class] if per_class > 0 else idx)
    return sorted(int(i) for i in chosen)


def to_size(image, size):
    """[28, 28] uint8 grey -> [size, size] uint8: centred on black when size >= 28, else area-downsampled."""
    if size < 8:
        raise ValueError(f"image size {size} is too small to show a garment: use 8 or more (28 is native)")
    if size < 28:
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BOX))
    before = (size - 28) // 2
    return np.pad(image, ((before, size - 28 - before), (before, size - 28 - before)))


def read_split(split="train", source_dir=DATA_DIR):
    """A split's 28x28 images ([N, 28, 28] uint8 grey) and labels ([N] uint8), installing the package if needed."""
    ensure_installed(source_dir)
    images = read_idx(os.path.join(source_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(source_dir, f"{split}-labels-idx1-ubyte.gz"))
    return images, labels


def load_split(split="train", image_size=28, source_dir=DATA_DIR):
    """A split's images as exported at image_size ([N, image_size, image_size] uint8 grey) and labels ([N])."""
    images, labels = read_split(split, source_dir)
    if image_size != 28:
        images = np.stack([to_size(image, image_size) for image in images])
    return images, labels


def export(out_dir, split="train", classes=tuple(range(10)), per_class=0, image_size=32, source_dir=DATA_DIR,
           channels=3):
    """Write the selected images to out_dir as PNGs with `channels` (1 grey, 3 RGB); returns the number written."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale PNGs) or 3 (RGB PNGs), got {channels}")
    images, labels = read_split(split, source_dir)
    os.makedirs(out_dir, exist_ok=True)
    indices = select(labels, classes, per_class)
    for i in indices:
        name = f"{labels[i]}-{CLASS_NAMES[labels[i]]}_{i:05d}.png"
        grey = to_size(images[i], image_size)
        pixels = grey if channels == 1 else np.repeat(grey[:, :, None], 3, axis=2)
        Image.fromarray(pixels).save(os.path.join(out_dir, name))
    return len(indices)


def parse_classes(text):
    """"0,3,7" or "tshirt,dress,sneaker" -> label indices."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit() and int(item) < len(CLASS_NAMES):
            out.append(int(item))
        elif item in CLASS_NAMES:
            out.append(CLASS_NAMES.index(item))
        else:
            raise argparse.ArgumentTypeError(f"unknown class {item!r}: use 0-9 or one of {', '.join(CLASS_NAMES)}")
    return out


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder to write the PNG files to")
    parser.add_argument("--split", default="train", choices=["train", "t10k"], help="60k train or 10k test images")
    parser.add_argument("--classes", type=parse_classes, default=list(range(10)), help="e.g. 0,1,7 or tshirt,bag")
    parser.add_argument("--per_class", type=int, default=0, help="images per class (0: all)")
    parser.add_argument("--image_size", type=int, default=32,
                        help="side of the written images: the 28x28 images are padded, or downsampled below 28")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3], help="1: greyscale PNGs, 3: RGB PNGs")
    parser.add_argument("--source_dir", default=DATA_DIR, help="folder with the *-ubyte.gz files")
    args = parser.parse_args()
    n = export(args.out_dir, args.split, args.classes, args.per_class, args.image_size, args.source_dir,
               args.channels)
    print(f"wrote {n} images to {args.out_dir}")


if __name__ == "__main__":
    run(main)
