"""scripts/image_edit.py end to end on a tiny greyscale class-conditional UNet (briefly trained) and real
Fashion-MNIST test images at 16x16: the outputs and their layout, RePaint's known pixels, DPS against its
measurement, the same npz from 1 and 2 ranks, and every bad input stopped with its message before
anything is written."""

import json
import re

import numpy as np
import pytest
import torch as th
from PIL import Image

from _train_helpers import assert_same_uint8_images, load_fashion_module, to_argv
from guided_diffusion.editing import run as edit_run
from guided_diffusion.config import EditConfig

MODEL = dict(image_size=16, image_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", class_cond=True, num_classes=10, class_dropout_prob=0.1,
             diffusion_steps=100, noise_schedule="cosine")
NUM_INPUTS = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, run_script):
    """{"model": MODEL trained for 40 steps on 200 Fashion-MNIST training images at 16x16 (enough for
    x0_hat to follow x_t, which DPS differentiates), "input": an npz of NUM_INPUTS test images (grey in 3
    channels, arr_1 labels), "grey": those images [N, 16, 16] uint8, "root": a scratch folder}."""
    root = tmp_path_factory.mktemp("edit")
    fashion = load_fashion_module()
    fashion.export(str(root / "train"), per_class=20, image_size=16, channels=1)
    run_script("image_train", to_argv({**MODEL, "data_dir": root / "train", "batch_size": 16, "lr": 2e-3,
                                       "max_steps": 40, "log_interval": 20, "save_interval": 1000}), root / "model")
    images, labels = fashion.load_split("t10k", 16)
    grey = images[:NUM_INPUTS]
    np.savez(root / "inputs.npz", np.repeat(grey[..., None], 3, axis=-1), labels[:NUM_INPUTS].astype(np.int64))
    return {"model": str(root / "model" / "model000040.pt"), "input": str(root / "inputs.npz"), "root": root,
            "grey": grey}


def edit_flags(setup, **values):
    """The flags of an edit: the model's come from its checkpoint's run, as a user's would."""
    return to_argv({"model_path": setup["model"], "input": setup["input"], "timestep_respacing": 10,
                    "seed": 1, **values})


def load(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_repaint_writes_the_outputs_and_keeps_the_known_pixels(setup, tmp_path, run_script):
    run_script("image_edit", edit_flags(setup, task="inpaint", method="repaint", mask="box", jump_length=2,
                                        resamplings=2, batch_size=2, ref_batch=setup["input"]), tmp_path)
    out = load(tmp_path / f"edited_{NUM_INPUTS}x16x16x3.npz")
    assert out["arr_0"].dtype == np.uint8 and out["arr_1"].tolist() == load(setup["input"])["arr_1"].tolist()
    known = np.ones((16, 16), bool)
    known[4:12, 4:12] = False
    edited = out["arr_0"][..., 0].astype(int)
    assert np.abs(edited[:, known] - setup["grey"][:, known].astype(int)).max() <= 1  # up to quantisation
    assert np.abs(edited[:, ~known] - setup["grey"][:, ~known].astype(int)).mean() > 5  # the hole is redrawn
    grid = Image.open(tmp_path / "edit_grid.png")
    assert grid.size == (3 * 18 + 2, NUM_INPUTS * 18 + 2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "inpaint" and metrics["method"] == "repaint" and metrics["images"] == NUM_INPUTS
    assert metrics["consistency"] < 0.01 and metrics["measurement_psnr"] > 45  # known pixels: quantisation only
    assert metrics["psnr"] > metrics["degraded_psnr"] - 20 and 0 < metrics["seconds_per_image"]
    assert {"ssim", "degraded_ssim", "seconds"} <= set(metrics) and metrics["fid"] >= 0


def test_reconstruct_runs_ddim_inversion_through_the_script(setup, tmp_path, run_script):
    psnrs = []
    for steps in (5, 40):
        run_script("image_edit", edit_flags(setup, task="reconstruct", timestep_respacing=steps, batch_size=NUM_INPUTS),
                   tmp_path / str(steps))
        metrics = json.loads((tmp_path / str(steps) / "metrics.json").read_text())
        assert metrics["task"] == "reconstruct" and "consistency" not in metrics
        psnrs.append(metrics["psnr"])
    assert psnrs[1] > psnrs[0] + 3


def test_dps_lowers_the_measurement_error(setup, tmp_path, run_script):
    metrics = {}
    for zeta in (1e-6, 8.0):
        run_script("image_edit", edit_flags(setup, task="super_res", factor=4, zeta=zeta, sampler="ddim",
                                            batch_size=NUM_INPUTS), tmp_path / str(zeta))
        metrics[zeta] = json.loads((tmp_path / str(zeta) / "metrics.json").read_text())
    assert metrics[8.0]["consistency"] < 0.5 * metrics[1e-6]["consistency"]
    assert metrics[8.0]["measurement_psnr"] > metrics[1e-6]["measurement_psnr"] + 6


def test_a_loss_file_guides_every_step_through_the_model(setup, tmp_path, run_script):
    (tmp_path / "brightness.py").write_text("def darker(x0, **model_kwargs):\n    return x0.mean(dim=(1, 2, 3))\n")
    means = {}
    for name, extra in (("plain", {}), ("darker", dict(loss=f"{tmp_path / 'brightness.py'}:darker", loss_scale=20))):
        run_script("image_edit", edit_flags(setup, task="sdedit", strength=0.6, batch_size=NUM_INPUTS, **extra),
                   tmp_path / name)
        means[name] = load(tmp_path / name / f"edited_{NUM_INPUTS}x16x16x3.npz")["arr_0"].mean()
    assert means["darker"] < means["plain"] - 10


@pytest.mark.slow
def test_two_ranks_give_the_npz_of_one_rank(setup, tmp_path, run_script):
    common = dict(task="sdedit", strength=0.6, target_class=3, guidance_scale=2.0, sampler="ddpm")
    run_script("image_edit", edit_flags(setup, batch_size=1, **common), tmp_path / "two", ranks=2)
    run_script("image_edit", edit_flags(setup, batch_size=4, **common), tmp_path / "one")
    two, one = (load(tmp_path / name / f"edited_{NUM_INPUTS}x16x16x3.npz") for name in ("two", "one"))
    assert_same_uint8_images(two["arr_0"], one["arr_0"])
    assert two["arr_1"].tolist() == [3] * NUM_INPUTS


def bad_inputs(setup):
    """{name: (flags to change, the message's words)} for each bad input."""
    root = setup["root"]
    np.savez(root / "small.npz", np.zeros((2, 8, 8, 3), np.uint8))
    np.savez(root / "colour.npz", np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "mask8.png")
    (root / "loss.py").write_text("def per_pixel(x0, **model_kwargs):\n    return x0.square()\n")
    return {
        "size": (dict(input=root / "small.npz"), "holds 8x8 images but the model makes 16x16"),
        "channels": (dict(input=root / "colour.npz"), "colour RGB images but the model has 1 channel"),
        "mask": (dict(task="inpaint", mask=root / "mask8.png"), "is 8x8 but the model's images are 16x16"),
        "factor": (dict(task="super_res", factor=3), "--factor 3 does not divide the image size 16x16"),
        "strength": (dict(task="sdedit", strength=1.5), "--strength 1.5 is outside [0, 1]"),
        "class_edit": (dict(task="sdedit", target_class=10), "--target_class 10 is not a class of a 10-class model"),
        "loss": (dict(task="sdedit", target_class=3, loss=f"{root / 'loss.py'}:per_pixel"),
                 "must return one value per sample"),
        "ref_batch": (dict(ref_batch=root / "missing.npz"), "missing.npz does not exist"),
        "repaint_sampler": (dict(method="repaint", sampler="ddim"), "--method repaint takes DDPM steps"),
    }


@pytest.mark.parametrize("name", ["size", "channels", "mask", "factor", "strength", "class_edit", "loss", "ref_batch",
                                  "repaint_sampler"])
def test_a_bad_input_stops_with_its_message_and_writes_nothing(setup, tmp_path, run_script, name):
    changes, message = bad_inputs(setup)[name]
    log_dir = tmp_path / "run"
    result = run_script("image_edit", edit_flags(setup, **changes), log_dir, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not log_dir.exists()


@pytest.mark.parametrize("flags, class_cond, message", [
    (dict(target_class=3), False, "the model is unconditional"),
    (dict(classifier_path="clf.pt"), True, "--classifier_path steers toward a class: give --target_class"),
    (dict(), True, "needs each input's label"),
])
def test_edit_labels_refuses_what_cannot_be_labelled(flags, class_cond, message):
    config = EditConfig(**flags)
    with pytest.raises(ValueError, match=re.escape(message)):
        edit_run.edit_labels(config, 4, class_cond, 10, None, None)


def test_edit_labels_are_the_target_the_null_class_or_the_inputs_labels():
    given = th.tensor([1, 2, 3])
    assert edit_run.edit_labels(EditConfig(target_class=7), 3, True, 10, 10, given).tolist() == [7, 7, 7]
    assert edit_run.edit_labels(EditConfig(), 3, True, 10, 10, given).tolist() == [10, 10, 10]
    assert edit_run.edit_labels(EditConfig(), 3, True, 10, None, given).tolist() == [1, 2, 3]
    assert edit_run.edit_labels(EditConfig(), 3, False, 10, None, given) is None
