"""Captioned colour Fashion-MNIST for text-to-image: captions say what a class label cannot.

Each image is a Fashion-MNIST garment painted in one palette colour on a background of another:
rgb = background * (1 - g) + garment * g per pixel, with g the grey image in [0, 1] (the ink) at the exported
size (fashion_mnist.to_size), rounded to uint8. The palette is six corners of the RGB cube (red, green, blue,
yellow, white, black): the renders are exact integers, and no palette colour lies on the blend of two others.

Each image is written as `<stem>.png` (RGB) and `<stem>.txt` (UTF-8, one caption per line, one per phrasing of
CAPTION_FORMATS: "a red sandal on a blue background", "sandal in red, blue background", "blue background with a
red sandal"). Stems are fashion_mnist.py's `{label}-{name}_{index:05d}`, so they sort by class and load_data's
class_cond still reads the garment. The colours are drawn per image from a numpy Generator seeded with
(seed, image index), uniformly over the combinations the image's class may have.

Held out: HELD_OUT, one (garment, garment colour, background colour) triple per class, each colour pair at most
once. The training split never holds them; every class, every colour in each role and every colour pair is still
seen in training, only not together. `--held_out only --split t10k` exports them to test composition.

Reading the colours back (read_colours): the background is the palette colour nearest the per-channel median of
the four 2x2 corner blocks; the garment is the other palette colour whose segment from the background explains
the pixels best in least squares (each pixel projected onto the segment). On clean renders of all 70k images,
and with Gaussian noise of 8 levels added, it is exact at 28 px, misses one t10k bag that fills the frame at 16 px
and about 0.1% of the images at 8 px. to_grey projects on that segment to recover the ink, so
fashion_mnist_judge.py can read the garment of a coloured sample.

    python datasets/fashion_mnist_captions.py --out_dir data/captions_train --per_class 1000
    python datasets/fashion_mnist_captions.py --out_dir data/captions_held_out --split t10k --held_out only
"""

import argparse
import functools
import os
import re
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import CLASS_NAMES, DATA_DIR, read_split, select, to_size  # noqa: E402
from guided_diffusion.errors import ArgumentParser, run  # noqa: E402

COLOUR_NAMES = ("red", "green", "blue", "yellow", "white", "black")
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255], [0, 0, 0]],
                   dtype=np.uint8)  # [colour, RGB], in COLOUR_NAMES order
GARMENT_NAMES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")  # as captions name the classes of fashion_mnist.CLASS_NAMES
CAPTION_FORMATS = (
    "a {garment_colour} {garment} on a {background_colour} background",
    "{garment} in {garment_colour}, {background_colour} background",
    "{background_colour} background with a {garment_colour} {garment}",
)
HELD_OUT = tuple((CLASS_NAMES.index(garment), COLOUR_NAMES.index(colour), COLOUR_NAMES.index(background))
                 for garment, colour, background in (
                     ("tshirt", "red", "green"), ("trouser", "green", "blue"), ("pullover", "blue", "yellow"),
                     ("dress", "yellow", "white"), ("coat", "white", "black"), ("sandal", "red", "blue"),
                     ("shirt", "black", "red"), ("sneaker", "blue", "white"), ("bag", "yellow", "black"),
                     ("boot", "white", "green")))  # (class, garment colour, background colour) never trained on
HELD_OUT_CHOICES = ("exclude", "only", "include")  # which combinations an export draws from
CORNER = 2  # side of the corner blocks whose median is the background


def all_combinations():
    """Every (class, garment colour, background colour) index triple with two different colours (300)."""
    return [(c, g, b) for c in range(len(CLASS_NAMES)) for g in range(len(PALETTE)) for b in range(len(PALETTE))
            if g != b]


def held_out_combinations():
    """The triples never exported to the training split (HELD_OUT), for prompts of unseen combinations."""
    return list(HELD_OUT)


def seen_combinations():
    """The triples the training split draws from: all_combinations() less HELD_OUT."""
    return [combo for combo in all_combinations() if combo not in HELD_OUT]


def combinations(held_out):
    """The triples of `held_out` ("exclude": seen, "only": held out, "include": all)."""
    if held_out not in HELD_OUT_CHOICES:
        raise ValueError(f"held_out must be one of {', '.join(HELD_OUT_CHOICES)}, got {held_out!r}")
    return {"exclude": seen_combinations, "only": held_out_combinations, "include": all_combinations}[held_out]()


@functools.lru_cache(maxsize=None)
def colour_pairs(label, held_out):
    """The (garment colour, background colour) pairs of class `label` in combinations(held_out)."""
    return tuple((g, b) for c, g, b in combinations(held_out) if c == label)


def draw_colours(label, index, seed=0, held_out="exclude"):
    """(garment colour, background colour) of image `index` of class `label`: uniform over colour_pairs(label,
    held_out), from a Generator seeded with (seed, index)."""
    pairs = colour_pairs(label, held_out)
    return pairs[np.random.default_rng((seed, index)).integers(len(pairs))]


def caption(label, garment_colour, background_colour, phrasing=0):
    """The caption of a triple in CAPTION_FORMATS[phrasing], e.g. "a red sandal on a blue background"."""
    return CAPTION_FORMATS[phrasing].format(garment=GARMENT_NAMES[label], garment_colour=COLOUR_NAMES[garment_colour],
                                            background_colour=COLOUR_NAMES[background_colour])


def captions(label, garment_colour, background_colour):
    """The caption of a triple in every phrasing, one per line of a `<stem>.txt` file."""
    return [caption(label, garment_colour, background_colour, k) for k in range(len(CAPTION_FORMATS))]


def caption_pattern(template):
    """A CAPTION_FORMATS template as a regex whose named groups match the garment and colour names."""
    choices = dict(garment=GARMENT_NAMES, garment_colour=COLOUR_NAMES, background_colour=COLOUR_NAMES)
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, ..., literal
    fields = (f"(?P<{name}>{'|'.join(map(re.escape, choices[name]))})" for name in parts[1::2])
    return re.compile("".join(re.escape(part) if i % 2 == 0 else next(fields) for i, part in enumerate(parts)))


CAPTION_PATTERNS = tuple(caption_pattern(template) for template in CAPTION_FORMATS)


def parse_caption(text):
    """A caption in any phrasing (case and spacing aside) -> (class, garment colour, background colour)."""
    words = " ".join(text.lower().split())
    for pattern in CAPTION_PATTERNS:
        match = pattern.fullmatch(words)
        if match:
            return (GARMENT_NAMES.index(match["garment"]), COLOUR_NAMES.index(match["garment_colour"]),
                    COLOUR_NAMES.index(match["background_colour"]))
    raise ValueError(f"cannot read the caption {text!r}: write it like {caption(5, 0, 2)!r}, with garments "
                     f"{', '.join(GARMENT_NAMES)} and colours {', '.join(COLOUR_NAMES)}")


def check_colours(garment, background):
    """Garment and background colour indices [N] as int64 arrays; errors unless in the palette and different."""
    garment, background = np.asarray(garment, dtype=np.int64), np.asarray(background, dtype=np.int64)
    if not ((0 <= garment) & (garment < len(PALETTE)) & (0 <= background) & (background < len(PALETTE))).all():
        raise ValueError(f"colour indices must be 0-{len(PALETTE) - 1} ({', '.join(COLOUR_NAMES)})")
    if (garment == background).any():
        raise ValueError("a garment colour equals its background colour: pick two different palette colours")
    return garment, background


def render(grey, garment, background):
    """Grey uint8 [N, H, W] (the ink) with colour indices [N] -> uint8 [N, H, W, 3]: background * (1 - g) +
    garment * g per pixel, rounded."""
    garment, background = check_colours(garment, background)
    ink = np.asarray(grey, dtype=np.int64)[..., None]
    start, end = (PALETTE[colour][:, None, None, :].astype(np.int64) for colour in (background, garment))
    return ((start * (255 - ink) + end * ink + 127) // 255).astype(np.uint8)


def image_stem(label, index):
    """fashion_mnist.py's file stem, `{label}-{name}_{index:05d}`: sorts by class, then file order."""
    return f"{label}-{CLASS_NAMES[label]}_{index:05d}"


def check_export_arguments(split, per_class, held_out):
    """Errors that name the fix for an export's split, per_class and held_out."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' (60k images) or 't10k' (10k), got {split!r}")
    if per_class < 0:
        raise ValueError(f"per_class must be 0 (all images) or a positive count, got {per_class}")
    combinations(held_out)  # refuses an unknown held_out
    if split == "train" and held_out != "exclude":
        raise ValueError(f"the training split never holds the held-out combinations (held_out={held_out!r}): "
                         "export them from split='t10k', or pass held_out='exclude'")


def export(out_dir, split="train", per_class=0, image_size=28, seed=0, held_out="exclude", source_dir=DATA_DIR):
    """Write `<stem>.png` (RGB) and `<stem>.txt` (captions) for the first per_class (0: all) images of each class
    of split, coloured with draw_colours(label, index, seed, held_out); returns the number of images written."""
    check_export_arguments(split, per_class, held_out)
    images, labels = read_split(split, source_dir)
    indices = select(labels, range(len(CLASS_NAMES)), per_class)
    greys = [to_size(images[i], image_size) for i in indices]  # a bad image_size stops here, before any file
    os.makedirs(out_dir, exist_ok=True)
    for i, grey in zip(indices, greys):
        label = int(labels[i])
        garment, background = draw_colours(label, i, seed, held_out)
        stem = os.path.join(out_dir, image_stem(label, i))
        Image.fromarray(render(grey[None], [garment], [background])[0]).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(captions(label, garment, background)) + "\n")
    return len(indices)


def render_combinations(combos, split="t10k", image_size=28, source_dir=DATA_DIR):
    """(class, garment colour, background colour) triples [N] -> uint8 [N, S, S, 3] real images of those captions,
    for reference batches: the k-th triple of a class paints the k-th image of that class in the split."""
    images, labels = read_split(split, source_dir)
    classes, garment, background = (np.array(column, dtype=np.int64) for column in zip(*combos))
    check_colours(garment, background)
    greys = []
    for k, label in enumerate(classes):
        of_class = np.flatnonzero(labels == label)
        rank = int((classes[:k] == label).sum())
        if rank >= len(of_class):
            raise ValueError(f"{split} has {len(of_class)} images of class {label}, not {rank + 1}: ask for fewer "
                             "triples of that class or render from split='train'")
        greys.append(to_size(images[of_class[rank]], image_size))
    return render(np.stack(greys), garment, background)


def check_images(images):
    """uint8 [N, H, W, 3] as float64; a clear error otherwise."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected RGB images uint8 [N, H, W, 3], got {images.dtype} {images.shape}: "
                         "pass samples as written by the sampling scripts (arr_0)")
    return images.astype(np.float64)


def read_background(images):
    """float [N, H, W, 3] -> [N] index of the palette colour nearest the median of the four corner blocks."""
    k = CORNER
    corners = np.concatenate([images[:, :k, :k], images[:, :k, -k:], images[:, -k:, :k], images[:, -k:, -k:]], axis=1)
    median = np.median(corners.reshape(len(images), -1, 3), axis=1)
    return np.argmin(((median[:, None, :] - PALETTE[None].astype(np.float64)) ** 2).sum(axis=2), axis=1)


def segment_errors(images, background):
    """float [N, H, W, 3] and background indices [N] -> [N, colours]: the summed squared distance of the pixels
    to the segment from the background to each palette colour (inf for the background itself)."""
    offsets = images.reshape(len(images), -1, 3) - PALETTE[background][:, None, :]  # [N, P, 3]
    directions = PALETTE[None].astype(np.float64) - PALETTE[background][:, None, :]  # [N, colours, 3]
    lengths = (directions ** 2).sum(axis=2)  # [N, colours]
    along = np.einsum("npc,nkc->npk", offsets, directions)
    t = np.clip(along / np.maximum(lengths, 1)[:, None, :], 0, 1)  # [N, P, colours]: position on each segment
    errors = (offsets ** 2).sum(axis=(1, 2))[:, None] - 2 * (t * along).sum(axis=1) + lengths * (t ** 2).sum(axis=1)
    errors[np.arange(len(images)), background] = np.inf
    return errors


def read_colours(images, chunk=1024):
    """uint8 [N, H, W, 3] -> (garment colour [N], background colour [N]) palette indices, by the rule of the
    module's docstring."""
    x = check_images(images)
    garment, background = [], []
    for part in np.split(x, range(chunk, len(x), chunk)):
        part_background = read_background(part)
        garment.append(np.argmin(segment_errors(part, part_background), axis=1))
        background.append(part_background)
    return np.concatenate(garment), np.concatenate(background)


def to_grey(images, garment, background):
    """uint8 [N, H, W, 3] with colour indices [N] -> uint8 [N, H, W] ink (g * 255): each pixel projected onto
    the segment from the background to the garment colour; exact on clean renders."""
    x = check_images(images)
    garment, background = check_colours(garment, background)
    start, end = PALETTE[background].astype(np.float64), PALETTE[garment].astype(np.float64)
    direction = (end - start)[:, None, None, :]
    along = ((x - start[:, None, None, :]) * direction).sum(axis=3) / (direction ** 2).sum(axis=3)
    return np.rint(np.clip(along, 0, 1) * 255).astype(np.uint8)


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder to write the PNG and caption files to")
    parser.add_argument("--split", default="train", choices=["train", "t10k"], help="60k train or 10k test images")
    parser.add_argument("--per_class", type=int, default=0, help="images per class (0: all)")
    parser.add_argument("--image_size", type=int, default=28,
                        help="side of the written images: the 28x28 images are padded, or downsampled below 28")
    parser.add_argument("--seed", type=int, default=0, help="seeds the colours drawn for each image")
    parser.add_argument("--held_out", default="exclude", choices=HELD_OUT_CHOICES,
                        help="exclude: only combinations seen in training; only: the held-out ones (t10k); "
                             "include: all")
    parser.add_argument("--source_dir", default=DATA_DIR, help="folder with the *-ubyte.gz files")
    args = parser.parse_args()
    n = export(args.out_dir, args.split, args.per_class, args.image_size, args.seed, args.held_out, args.source_dir)
    print(f"wrote {n} captioned images to {args.out_dir}")


if __name__ == "__main__":
    run(main)
