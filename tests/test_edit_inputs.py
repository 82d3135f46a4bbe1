"""The editing script's inputs and grid: editing.inputs.load_edit_inputs on folders and npz batches (values,
order, labels, channels, one-line errors) and sample_io.save_edit_grid's layout."""

import numpy as np
import pytest
import torch as th
from PIL import Image

from guided_diffusion.editing.inputs import load_edit_inputs
from guided_diffusion.sample_io import save_edit_grid


def _grey(seed, size=4):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _folder(tmp_path, names, size=4):
    """Greyscale PNGs named `names` (written in that order), pixel values from seeds 0, 1, ..."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        Image.fromarray(_grey(seed, size)).save(tmp_path / name)
    return str(tmp_path)


def test_folder_is_read_in_name_order_with_labels(tmp_path):
    path = _folder(tmp_path, ["3-dress_00007.png", "0-tshirt_00002.png", "12_x.png"])
    x, labels = load_edit_inputs(path, 4, 1)
    # sorted: "0-tshirt..." (seed 1), "12_x" (seed 2), "3-dress..." (seed 0)
    assert x.shape == (3, 1, 4, 4) and x.dtype == th.float32
    for row, seed in enumerate([1, 2, 0]):
        assert th.equal(x[row, 0], th.from_numpy(_grey(seed)).float() / 127.5 - 1)
    assert labels.tolist() == [0, 12, 3] and labels.dtype == th.int64


def test_folder_labels_need_an_integer_prefix_on_every_file(tmp_path):
    path = _folder(tmp_path, ["3_a.png", "shirt_b.png"])
    assert load_edit_inputs(path, 4, 1)[1] is None
    assert load_edit_inputs(_folder(tmp_path / "b", ["3x_a.png"]), 4, 1)[1] is None


def test_folder_images_are_converted_to_the_model_channels(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: PIL's "L" gives 299 * 255 // 1000 = 76
    tmp_path.mkdir(exist_ok=True)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    grey, _ = load_edit_inputs(str(tmp_path), 4, 1)
    assert grey.shape == (1, 1, 4, 4) and th.allclose(grey, th.tensor(76 / 127.5 - 1))
    colour, _ = load_edit_inputs(str(tmp_path), 4, 3)
    assert colour[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]


def _npz(tmp_path, images, labels=None, name="batch.npz"):
    path = tmp_path / name
    np.savez(path, images) if labels is None else np.savez(path, images, labels)
    return str(path)


def test_npz_batch_with_labels_and_greyscale_saved_as_rgb(tmp_path):
    grey = np.stack([_grey(0), _grey(1)])
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # as sample_io saves a 1-channel model's samples
    x, labels = load_edit_inputs(_npz(tmp_path, rgb, np.array([4, 7], np.int32)), 4, 1)
    assert th.equal(x[:, 0], th.from_numpy(grey).float() / 127.5 - 1)
    assert labels.tolist() == [4, 7] and labels.dtype == th.int64
    x3, none = load_edit_inputs(_npz(tmp_path, rgb, name="unlabelled.npz"), 4, 3)
    assert x3.shape == (2, 3, 4, 4) and none is None


@pytest.mark.parametrize("images, channels, message", [
    (np.zeros((2, 8, 8, 3), np.uint8), 3, "holds 8x8 images but the model makes 4x4"),
    (np.dstack([np.zeros((1, 4, 4), np.uint8), np.ones((1, 4, 8), np.uint8)]).reshape(1, 4, 4, 3), 1,
     "colour RGB images but the model has 1 channel"),
    (np.zeros((1, 4, 4, 1), np.uint8), 3, r"1-channel images \(arr_0 \[1, 4, 4, 1\], read as NHWC\) but the model has 3"),
    (np.zeros((1, 4, 4, 3), np.float32), 3, r"has arr_0 float32 \[1, 4, 4, 3\]; expected uint8"),
    (np.zeros((0, 4, 4, 3), np.uint8), 3, "with N > 0"),
])
def test_bad_npz_batches(tmp_path, images, channels, message):
    with pytest.raises(ValueError, match=message):
        load_edit_inputs(_npz(tmp_path, images), 4, channels)


def test_bad_npz_labels_and_files(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"arr_1 is float64 \[2\], expected integer labels \[2\]"):
        load_edit_inputs(_npz(tmp_path, images, np.zeros(2)), 4, 3)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz is not a readable npz file"):
        load_edit_inputs(str(tmp_path / "junk.npz"), 4, 3)
    np.savez(tmp_path / "named.npz", images=images)
    with pytest.raises(ValueError, match="has no arr_0"):
        load_edit_inputs(str(tmp_path / "named.npz"), 4, 3)


def test_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_edit_inputs(str(tmp_path / "missing"), 4, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_edit_inputs(str(tmp_path / "empty"), 4, 1)
    path = _folder(tmp_path / "mixed", ["a.png"])
    Image.fromarray(_grey(0, 6)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="mixes image sizes 4x4, 6x6"):
        load_edit_inputs(path, 4, 1)
    path = _folder(tmp_path / "broken", ["a.png", "b.png"])
    (tmp_path / "broken" / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1 of 3 image files cannot be read, first .*c\.png \(UnidentifiedImageError"):
        load_edit_inputs(path, 4, 1)
    with pytest.raises(ValueError, match="--input is required"):
        load_edit_inputs("", 4, 1)


def test_edit_grid_layout(tmp_path):
    """Two inputs of 1 x 3 x 4: rows of (original | degraded | output), 2 black pixels around each."""
    values = th.linspace(-1, 1, 2 * 3 * 12).view(2, 3, 1, 3, 4)  # [N, column, C, H, W]
    save_edit_grid(values[:, 0], values[:, 1], values[:, 2], tmp_path / "edit_grid.png")
    grid = np.asarray(Image.open(tmp_path / "edit_grid.png"))
    assert grid.shape == (2 * (3 + 2) + 2, 3 * (4 + 2) + 2) and grid.dtype == np.uint8  # greyscale
    for n, column in np.ndindex(2, 3):
        top, left = 2 + n * 5, 2 + column * 6
        expected = ((values[n, column, 0] + 1) * 127.5).to(th.uint8).numpy()
        assert np.array_equal(grid[top:top + 3, left:left + 4], expected)
    assert grid[:2].max() == 0 and grid[:, 6:8].max() == 0  # padding
    rgb = th.rand(1, 3, 3, 4) * 2 - 1
    save_edit_grid(rgb, rgb, rgb, tmp_path / "rgb.png")
    assert np.asarray(Image.open(tmp_path / "rgb.png")).shape == (3 + 4, 3 * 6 + 2, 3)
    with pytest.raises(ValueError, match=r"degraded \[1, 3, 1, 2\]"):
        save_edit_grid(rgb, rgb[..., :1, :2], rgb, tmp_path / "bad.png")
