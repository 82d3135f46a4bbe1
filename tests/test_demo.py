"""The demo (scripts/quickstart.sh) end to end at a reduced size, and the pieces it is built from: the
Fashion-MNIST export and the clean judge classifier that scores the samples."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _train_helpers import REPO, TIMEOUT


def load_module(name):
    sys.path.insert(0, str(REPO / "datasets"))
    spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fashion = load_module("fashion_mnist")
judge_module = load_module("fashion_mnist_judge")


def test_to_size_pads_28_pixel_images_on_black_and_area_downsamples_smaller_sizes():
    image = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 251
    image = image.astype(np.uint8)
    padded = fashion.to_size(image, 32)
    assert padded.shape == (32, 32) and (padded[2:30, 2:30] == image).all()
    assert padded.sum() == image.sum()
    flat = np.full((28, 28), 200, dtype=np.uint8)
    assert (fashion.to_size(flat, 14) == 200).all()
    halves = np.zeros((28, 28), dtype=np.uint8)
    halves[:, 14:] = 255
    assert fashion.to_size(halves, 14)[:, :7].max() == 0 and fashion.to_size(halves, 14)[:, 7:].min() == 255
    with pytest.raises(ValueError, match="use 8 or more"):
        fashion.to_size(image, 4)


def test_export_writes_greyscale_pngs_named_by_class(tmp_path):
    n = fashion.export(str(tmp_path), split="t10k", classes=[0, 9], per_class=3, image_size=16, channels=1)
    names = sorted(os.listdir(tmp_path))
    assert n == 6 and len(names) == 6
    assert [name.split("_")[0] for name in names] == ["0-tshirt"] * 3 + ["9-boot"] * 3
    with Image.open(tmp_path / names[0]) as image:
        assert image.mode == "L" and image.size == (16, 16)
    with pytest.raises(ValueError, match="channels must be 1"):
        fashion.export(str(tmp_path), channels=2)


def test_class_grid_puts_each_class_on_its_own_row():
    labels = np.array([3, 0, 3, 9])
    images = np.repeat((np.arange(4, dtype=np.uint8) * 60 + 10)[:, None, None, None], 4 * 4 * 3).reshape(4, 4, 4, 3)
    grid = judge_module.class_grid(images, labels, per_row=2, pad=1)
    assert grid.shape == (10 * 5 + 1, 2 * 5 + 1)
    tile = lambda row, col: grid[1 + row * 5:5 + row * 5, 1 + col * 5:5 + col * 5]  # noqa: E731
    assert (tile(0, 0) == 70).all() and (tile(0, 1) == 0).all()
    assert (tile(3, 0) == 10).all() and (tile(3, 1) == 130).all()
    assert (tile(9, 0) == 190).all() and (tile(5, 0) == 0).all()


def test_read_samples_rejects_files_without_labels(tmp_path):
    np.savez(tmp_path / "unlabelled.npz", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="class-conditional"):
        judge_module.read_samples(tmp_path / "unlabelled.npz")
    np.savez(tmp_path / "floats.npz", np.zeros((2, 8, 8, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="uint8"):
        judge_module.read_samples(tmp_path / "floats.npz")


def test_judge_refuses_images_of_another_size():
    judge = judge_module.Judge(16)
    with pytest.raises(ValueError, match="image_size=28"):
        judge_module.predict(judge, np.zeros((2, 28, 28), dtype=np.uint8))


# The pipeline at the smallest size that still shows guidance: 16 px, 200 model and 100 classifier steps, 50
# samples per grid with 10 DDPM steps (about 60 s on an idle 2-core CPU; requested-class accuracy measured
# 0.34 unguided, 0.42 classifier-guided, 0.74 classifier-free-guided, 0.64 with 150 model steps).
REDUCED = dict(IMAGE_SIZE="16", PER_CLASS="300", STEPS="200", CLASSIFIER_STEPS="100", SAMPLES="50",
               SAMPLER_FLAGS="--sampler ddpm --timestep_respacing 10")


def run_quickstart(tmp_path, **env):
    env = dict(os.environ, OMP_NUM_THREADS="2", RUN=str(tmp_path / "run"), DATA=str(tmp_path / "data"),
               JUDGE_CACHE=str(tmp_path / "judge.pt"), PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
               PYTHONPATH=str(REPO), **env)  # the scripts import this checkout's package
    return subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=2 * TIMEOUT)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The reduced demo's run folder and stdout (run once for the tests below)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    result = run_quickstart(tmp_path, **REDUCED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return tmp_path, result.stdout


def judged(run):
    """{run subfolder name: requested-class accuracy} from the demo's accuracy.json, and the judge's test accuracy."""
    with open(run / "accuracy.json") as f:
        results = json.load(f)
    accuracy = {os.path.basename(os.path.dirname(path)): r["accuracy"] for path, r in results["samples"].items()}
    return accuracy, results["judge_test_accuracy"]


@pytest.mark.slow
def test_quickstart_writes_release_npz_files_and_class_grids_and_refuses_to_overwrite(demo_run):
    tmp_path, stdout = demo_run
    run = tmp_path / "run"
    assert str(run) in stdout and "requested-class accuracy" in stdout
    for name in ("unguided", "classifier_guided", "classifier_free_guided"):
        with np.load(run / name / "samples_50x16x16x3.npz") as f:
            images, labels = f["arr_0"], f["arr_1"]
        assert images.dtype == np.uint8 and images.shape == (50, 16, 16, 3)
        assert (images[..., 0] == images[..., 2]).all(), "a greyscale sample is saved as three equal channels"
        assert (labels == np.arange(50) % 10).all()
        with Image.open(run / name / "class_grid.png") as grid:
            assert grid.size == (10 * 18 + 2, 10 * 18 + 2)
    again = run_quickstart(tmp_path, **REDUCED)
    assert again.returncode != 0 and "OVERWRITE=1" in again.stderr


@pytest.mark.slow
def test_quickstart_classifier_free_guided_samples_show_the_requested_class(demo_run):
    accuracy, judge_accuracy = judged(demo_run[0] / "run")
    assert judge_accuracy > 0.85
    assert accuracy["classifier_free_guided"] >= 0.3, accuracy  # chance: 0.1


@pytest.mark.slow
def test_quickstart_classifier_guided_samples_show_the_requested_class(demo_run):
    accuracy, _ = judged(demo_run[0] / "run")
    assert accuracy["classifier_guided"] >= 0.3, accuracy


@pytest.mark.slow
def test_classifier_free_guidance_beats_the_null_class_alone(demo_run, run_script):
    """W = 4 (the demo's grid) against W = 0 (the model's unconditional branch) on the reduced demo's model,
    the same noise and requested labels, judged by the clean judge."""
    tmp_path, _ = demo_run
    run = tmp_path / "run"
    with open(run / "model" / "train_config.json") as f:
        model_flags = json.load(f)["model_flags"]
    model_path = sorted((run / "model").glob("ema_*.pt"))[-1]
    flags = dict(model_flags, model_path=model_path, guidance_scale=0.0, sampler="ddpm", timestep_respacing=10,
                 num_samples=50, batch_size=50, seed=0, class_labels="0,1,2,3,4,5,6,7,8,9")
    run_script("image_sample", flags, tmp_path / "w0")
    judge, _ = judge_module.load_or_train(str(tmp_path / "judge.pt"), 16)
    unconditional, _ = judge_module.score_samples(judge, tmp_path / "w0" / "samples_50x16x16x3.npz")
    guided, _ = judged(run)
    assert guided["classifier_free_guided"] >= unconditional + 0.2, (guided, unconditional)
