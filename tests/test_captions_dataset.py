"""The captioned colour Fashion-MNIST of datasets/fashion_mnist_captions.py: files and captions as documented,
held-out combinations kept out of training, the colour-reading rule and the caption parser."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _train_helpers import REPO, TIMEOUT
from test_demo import load_module

fashion = load_module("fashion_mnist")
captions = load_module("fashion_mnist_captions")
PER_CLASS = 3
SIZE = 16


@pytest.fixture(scope="module")
def t10k():
    """The t10k split's 28x28 images [10000, 28, 28] and labels [10000]."""
    return fashion.read_split("t10k")


@pytest.fixture(scope="module")
def seen_dir(tmp_path_factory):
    """PER_CLASS t10k images per class at SIZE px, coloured like the training split (held-out combinations out)."""
    out = tmp_path_factory.mktemp("seen")
    assert captions.export(out, split="t10k", per_class=PER_CLASS, image_size=SIZE, seed=3) == 10 * PER_CLASS
    return out


def read_export(folder):
    """{stem: (RGB uint8 [H, W, 3], caption lines)} of an export."""
    return {png.stem: (np.asarray(Image.open(png)), png.with_suffix(".txt").read_text(encoding="utf-8").splitlines())
            for png in sorted(folder.glob("*.png"))}


def test_export_writes_an_rgb_png_and_a_caption_file_per_image_under_class_prefixed_stems(seen_dir, t10k):
    _, labels = t10k
    stems = [f"{c}-{fashion.CLASS_NAMES[c]}_{i:05d}" for c in range(10)
             for i in np.flatnonzero(labels == c)[:PER_CLASS]]
    assert sorted(p.name for p in seen_dir.iterdir()) == [stem + ext for stem in stems for ext in (".png", ".txt")]
    for image, lines in read_export(seen_dir).values():
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        assert len(lines) == len(captions.CAPTION_FORMATS) and all(lines)


def test_captions_name_the_garment_and_the_colours_painted(seen_dir, t10k):
    images, labels = t10k
    for stem, (image, lines) in read_export(seen_dir).items():
        index = int(stem.split("_")[1])
        label, garment, background = captions.parse_caption(lines[0])
        assert label == labels[index] and stem.startswith(f"{label}-")
        assert [captions.parse_caption(line) for line in lines] == [(label, garment, background)] * len(lines)
        assert (garment, background) == captions.draw_colours(label, index, seed=3)
        painted = captions.render(fashion.to_size(images[index], SIZE)[None], [garment], [background])[0]
        assert (image == painted).all()
    sandal, red, blue = 5, 0, 2
    assert captions.caption(sandal, red, blue) == "a red sandal on a blue background"
    assert (captions.render(np.array([[[0, 255]]], np.uint8), [red], [blue]) == [[[[0, 0, 255], [255, 0, 0]]]]).all()


def test_colours_are_drawn_per_image_from_the_seed(tmp_path, seen_dir):
    assert captions.export(tmp_path, split="t10k", per_class=PER_CLASS, image_size=SIZE, seed=3) == 10 * PER_CLASS
    again = read_export(tmp_path)
    assert {stem: lines for stem, (_, lines) in again.items()} == {
        stem: lines for stem, (_, lines) in read_export(seen_dir).items()}
    drawn = {seed: [captions.draw_colours(5, index, seed) for index in range(20)] for seed in (3, 4)}
    assert drawn[3] != drawn[4]


def test_held_out_combinations_are_never_drawn_for_training_but_each_of_their_parts_is(tmp_path, seen_dir):
    held_out = set(captions.held_out_combinations())
    assert len(held_out) == 10 and {c for c, _, _ in held_out} == set(range(10))
    assert len({(g, b) for _, g, b in held_out}) == 10  # each colour pair held out for one class only
    seen = set(captions.seen_combinations())
    assert seen.isdisjoint(held_out) and len(seen) == 290
    for c, g, b in held_out:
        assert any(s[:2] == (c, g) for s in seen) and any(s[::2] == (c, b) for s in seen)
        assert any(s[1:] == (g, b) for s in seen)
    drawn = {(c, *captions.draw_colours(c, index)) for c in range(10) for index in range(300)}
    assert drawn == seen
    exported = {captions.parse_caption(lines[0]) for _, lines in read_export(seen_dir).values()}
    assert exported <= seen
    assert captions.export(tmp_path, split="t10k", per_class=2, image_size=SIZE, held_out="only") == 20
    assert {captions.parse_caption(lines[0]) for _, lines in read_export(tmp_path).values()} == held_out


def test_render_combinations_paints_the_next_image_of_each_class(t10k):
    images, labels = t10k
    sandal, tshirt, red, green, blue = 5, 0, 0, 1, 2
    combos = [(sandal, red, blue), (tshirt, green, red), (sandal, blue, green)]
    painted = captions.render_combinations(combos, image_size=SIZE)
    assert painted.shape == (3, SIZE, SIZE, 3)
    sandals, tshirts = np.flatnonzero(labels == sandal), np.flatnonzero(labels == tshirt)
    for image, index, (_, garment, background) in zip(painted, [sandals[0], tshirts[0], sandals[1]], combos):
        assert (image == captions.render(fashion.to_size(images[index], SIZE)[None], [garment], [background])).all()


@pytest.mark.parametrize("size", [16, 28])
def test_read_colours_and_to_grey_recover_colours_and_ink_of_clean_and_noisy_renders(t10k, size):
    images, labels = t10k
    pairs = np.array([(g, b) for g in range(6) for b in range(6) if g != b])
    indices = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)])  # 30 images, one per pair
    grey = np.stack([fashion.to_size(images[i], size) for i in indices])
    clean = captions.render(grey, pairs[:, 0], pairs[:, 1])
    noise = np.random.default_rng(0).normal(0, 8, clean.shape)
    noisy = np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8)
    for rendered in (clean, noisy):
        garment, background = captions.read_colours(rendered)
        assert (garment == pairs[:, 0]).all() and (background == pairs[:, 1]).all()
    assert (captions.to_grey(clean, pairs[:, 0], pairs[:, 1]) == grey).all()
    error = np.abs(captions.to_grey(noisy, pairs[:, 0], pairs[:, 1]).astype(np.int64) - grey)
    assert error.mean() < 5 and np.median(error) <= 4  # noise of 8 levels, projected on one axis


def test_parse_caption_inverts_every_phrasing_of_every_combination():
    for combo in captions.all_combinations():
        for line in captions.captions(*combo):
            assert captions.parse_caption(line) == combo
    assert captions.parse_caption("  A Red  SHIRT on a black background ") == (6, 0, 5)
    assert captions.parse_caption("white background with a blue t-shirt") == (0, 2, 4)


@pytest.mark.parametrize("call, message", [
    (lambda out: captions.export(out, split="test"), "split must be 'train' .* or 't10k'"),
    (lambda out: captions.export(out, split="train", per_class=1, held_out="only"), "export them from split='t10k'"),
    (lambda out: captions.export(out, split="t10k", per_class=1, held_out="some"), "held_out must be one of exclude"),
    (lambda out: captions.export(out, split="t10k", per_class=-1), "per_class must be 0 .* or a positive"),
    (lambda out: captions.export(out, split="t10k", per_class=1, image_size=4), "use 8 or more"),
    (lambda out: captions.render_combinations([(5, 2, 2)]), "pick two different palette colours"),
    (lambda out: captions.render_combinations([(5, 0, 6)]), r"colour indices must be 0-5 \(red, "),
    (lambda out: captions.render_combinations([(5, 0, 1)] * 1001), "ask for fewer triples .* split='train'"),
    (lambda out: captions.read_colours(np.zeros((2, 8, 8), np.uint8)), r"expected RGB images uint8 \[N, H, W, 3\]"),
    (lambda out: captions.parse_caption("a red sandal"), "write it like 'a red sandal on a blue background'"),
])
def test_bad_arguments_are_refused_with_the_fix(tmp_path, call, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        call(out)
    assert not out.exists()


def test_command_line_refuses_held_out_training_images_in_one_line(tmp_path):
    script = REPO / "datasets" / "fashion_mnist_captions.py"
    flags = ["--out_dir", str(tmp_path / "out"), "--held_out", "only"]
    result = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert re.fullmatch(r"fashion_mnist_captions\.py: error: the training split never holds .*\n", result.stderr)
