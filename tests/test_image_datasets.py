"""image_datasets.load_data and the Fashion-MNIST export: labels, crops, shards, bad files, resume."""

import numpy as np
import pytest
import torch as th
from PIL import Image

from _train_helpers import load_fashion_module
from guided_diffusion import dist_util, image_datasets, logger
from guided_diffusion.cli import config_parser, parse_configs
from guided_diffusion.config import TrainConfig
from guided_diffusion.image_datasets import center_crop_arr, load_data, random_crop_arr
from guided_diffusion.train_setup import training_images


def _write(folder, name, color, size=(8, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(folder / name)


def _folder(tmp_path, n_per_class=3):
    """Classes 'b' (white) and 'a' (black) in nested folders, plus a non-image file."""
    for i in range(n_per_class):
        _write(tmp_path / "sub", f"b_{i}.png", (255, 255, 255))
        _write(tmp_path, f"a_{i}.jpg", (0, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_center_crop_keeps_the_middle_of_a_two_tone_image():
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, 32:] = 255  # left half black, right half white
    out = center_crop_arr(Image.fromarray(arr), 32)
    assert out.shape == (32, 32, 3)  # no halving (32 < 2*32), scale 1, crop columns 16..47
    assert (out[:, :16] == 0).all() and (out[:, 16:] == 255).all()


def test_center_crop_halves_with_box_filter_first():
    arr = np.kron(np.array([[0, 255], [255, 0]], np.uint8), np.ones((64, 64), np.uint8))
    out = center_crop_arr(Image.fromarray(np.stack([arr] * 3, -1)), 32)  # 128 -> 64 -> 32 by BOX halving
    expected = np.kron(np.array([[0, 255], [255, 0]]), np.ones((16, 16)))
    assert np.array_equal(out[..., 0], expected)


def _windows_of_resized(img, image_size, sides):
    """{(side, top, left): window} of every image_size x image_size window of img resized (BICUBIC) so
    that its smaller side is `side`, for each side in sides."""
    width, height = img.size
    windows = {}
    for side in sides:
        resized = np.array(img.resize((round(width * side / height), side), resample=Image.BICUBIC))
        for top in range(resized.shape[0] - image_size + 1):
            for left in range(resized.shape[1] - image_size + 1):
                windows[side, top, left] = resized[top:top + image_size, left:left + image_size]
    return windows


def test_random_crop_is_a_window_of_the_resized_image_and_seeded():
    # a 64 x 50 noise image (no halving for 32: 50 < 64): the smaller side is resized to a size in
    # [32, ceil(32 / 0.8) = 40], then a 32 x 32 window is cut; noise makes every window distinct
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 64, 3), dtype=np.uint8))
    windows = _windows_of_resized(img, 32, range(32, 41))
    found = []
    for seed in range(40):
        crop = random_crop_arr(img, 32, rng=np.random.default_rng(seed))
        assert crop.shape == (32, 32, 3)
        assert np.array_equal(crop, random_crop_arr(img, 32, rng=np.random.default_rng(seed)))
        matches = [key for key, window in windows.items() if np.array_equal(crop, window)]
        assert len(matches) == 1, f"seed {seed}: the crop is not one window of the resized image"
        found.append(matches[0])
    sides = {side for side, _, _ in found}
    assert len(sides) >= 6 and min(sides) <= 33 and max(sides) >= 39  # the size is drawn over the range
    assert len({top for _, top, _ in found}) >= 4 and len({left for _, _, left in found}) >= 8  # the position too
    assert len(set(found)) >= 30  # different seeds, different crops


def test_load_data_labels_shapes_range(tmp_path):
    data = load_data(data_dir=str(_folder(tmp_path)), batch_size=6, image_size=8, class_cond=True,
                     deterministic=True, random_flip=False, num_workers=0)
    assert data.class_names == ["a", "b"]
    images, cond = next(data)
    assert images.shape == (6, 3, 8, 8) and images.dtype == th.float32
    # black images are class 0 ("a", -1.0), white ones class 1 ("b", +1.0)
    assert th.equal(images[:, 0, 0, 0], cond["y"].float() * 2 - 1)
    assert sorted(cond["y"].tolist()) == [0, 0, 0, 1, 1, 1]
    unconditional = load_data(data_dir=str(tmp_path), batch_size=2, image_size=8, num_workers=0)
    assert next(unconditional)[1] == {}


def test_yields_forever_and_resumes_at_the_same_batch(tmp_path):
    kwargs = dict(data_dir=str(_folder(tmp_path)), batch_size=4, image_size=8, class_cond=True,
                  random_crop=True, num_workers=1, seed=3)
    data = load_data(**kwargs)
    first = [next(data) for _ in range(3)]  # epochs of one batch (6 images, batch 4): 3 epochs
    state = data.state_dict()
    rest = [next(data)[1]["y"] for _ in range(3)]
    assert state == {"epoch": 2, "batch": 1}  # the end of epoch 2
    resumed = load_data(**kwargs)
    resumed.load_state_dict(state)
    assert all(th.equal(a, next(resumed)[1]["y"]) for a in rest)
    orders = [b[1]["y"].tolist() for b in first]
    assert len({tuple(o) for o in orders}) > 1  # reshuffled each epoch


def test_shards_by_rank(tmp_path, monkeypatch):
    _folder(tmp_path)
    monkeypatch.setattr(dist_util, "get_world_size", lambda: 2)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(dist_util, "get_rank", lambda rank=rank: rank)
        data = load_data(data_dir=str(tmp_path), batch_size=3, image_size=8, deterministic=True, num_workers=0)
        seen.append(list(data.dataset.paths))
    assert set(seen[0]).isdisjoint(seen[1]) and len(seen[0]) + len(seen[1]) == 6


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_is_skipped_and_reported_once_in_log_txt(tmp_path, num_workers):
    _folder(tmp_path / "data")
    (tmp_path / "data" / "a_bad.png").write_bytes(b"not a png at all")
    logger.configure(dir=str(tmp_path / "log"), format_strs=["log"])
    data = load_data(data_dir=str(tmp_path / "data"), batch_size=7, image_size=8, class_cond=True,
                     deterministic=True, num_workers=num_workers)
    batches = [next(data)[0] for _ in range(3)]  # three epochs of one batch, each meeting the bad file
    assert all(b.shape[0] == 7 and th.isfinite(b).all() for b in batches)
    assert [p.rsplit("/", 1)[-1] for p in data.skipped_files] == ["a_bad.png"]
    warnings = [line for line in (tmp_path / "log" / "log.txt").read_text().splitlines() if "a_bad.png" in line]
    assert len(warnings) == 1 and "skipping unreadable image" in warnings[0], warnings


def test_image_channels_one_gives_greyscale_batches(tmp_path):
    _write(tmp_path, "a_0.png", (255, 0, 0))  # pure red: luma 0.299 * 255 -> 76
    _write(tmp_path, "b_0.png", (0, 0, 255))  # pure blue: 0.114 * 255 -> 29
    kwargs = dict(data_dir=str(tmp_path), batch_size=2, image_size=8, class_cond=True, deterministic=True,
                  num_workers=0)
    grey, cond = next(load_data(**kwargs, image_channels=1))
    assert grey.shape == (2, 1, 8, 8)
    assert th.equal(grey[:, 0, 0, 0], th.tensor([76, 29]) / 127.5 - 1) and cond["y"].tolist() == [0, 1]
    assert next(load_data(**kwargs))[0].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="image_channels=2: use 3 .* or 1"):
        load_data(**kwargs, image_channels=2)


def test_empty_or_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(data_dir=str(tmp_path / "nope"), batch_size=1, image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_data(data_dir=str(tmp_path / "empty"), batch_size=1, image_size=8)
    with pytest.raises(ValueError, match="--data_dir"):
        load_data(data_dir="", batch_size=1, image_size=8)
    with pytest.raises(ValueError, match="fewer than --batch_size"):
        load_data(data_dir=str(_folder(tmp_path / "few", 1)), batch_size=5, image_size=8)


def test_num_workers_flag_reaches_the_loader_and_changes_no_batch(tmp_path):
    """--num_workers (default 1, as released) sets the decoding processes; images and their augmentations
    are drawn per item, so any worker count yields the same batches."""
    parser, flags = config_parser("", TrainConfig), ["--data_dir", str(_folder(tmp_path)), "--batch_size", "2"]
    (default,) = parse_configs(parser, (TrainConfig,), flags)
    (two,) = parse_configs(parser, (TrainConfig,), flags + ["--num_workers", "2"])
    (none,) = parse_configs(parser, (TrainConfig,), flags + ["--num_workers", "0"])
    streams = [training_images(config, 8, True, 2, random_crop=True) for config in (default, two, none)]
    assert [stream.num_workers for stream in streams] == [1, 2, 0]
    batches = [[next(stream) for _ in range(4)] for stream in streams]  # two epochs of 3 batches and one more
    for other in batches[1:]:
        assert all(th.equal(a[0], b[0]) and th.equal(a[1]["y"], b[1]["y"]) for a, b in zip(batches[0], other))
    for stream in streams:
        stream.close()


def test_low_res_conditioning_is_the_area_mean(tmp_path):
    # noise images, 8 -> 2: every low-res pixel is the mean of its 4 x 4 block (nearest, bilinear or
    # bicubic downsampling give other numbers)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"noise_{i}.png")
    data = load_data(data_dir=str(tmp_path), batch_size=2, image_size=8, deterministic=True, num_workers=0)
    wrapped = image_datasets.LowResConditioned(data, 2)
    batch, cond = next(wrapped)
    assert cond["low_res"].shape == (2, 3, 2, 2)
    block_means = batch.view(2, 3, 2, 4, 2, 4).mean(dim=(3, 5))
    assert th.allclose(cond["low_res"], block_means, atol=1e-6)
    assert batch.std() > 0.3  # the blocks are not flat
    assert wrapped.state_dict() == data.state_dict()


def test_fashion_export_names_sizes_and_padding(fashion_dir):
    module = load_fashion_module()
    files = sorted(p.name for p in fashion_dir.iterdir())
    assert len(files) == 600
    prefixes = sorted({f.split("_")[0] for f in files})
    assert prefixes == [f"{i}-{name}" for i, name in enumerate(module.CLASS_NAMES)]
    arr = np.array(Image.open(fashion_dir / files[0]))
    assert arr.shape == (32, 32, 3) and (arr[:2] == 0).all() and (arr[:, -2:] == 0).all()
    assert (arr[..., 0] == arr[..., 2]).all() and arr.max() > 100


def test_fashion_export_selects_classes_and_counts(tmp_path):
    module = load_fashion_module()
    assert module.parse_classes("0,bag") == [0, 8]
    n = module.export(str(tmp_path), split="t10k", classes=[1, 8], per_class=7)
    names = [p.name for p in tmp_path.iterdir()]
    assert n == 14 and sum(x.startswith("1-trouser_") for x in names) == 7
    labels = module.read_idx(f"{module.DATA_DIR}/t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
