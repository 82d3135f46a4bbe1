"""scripts/sweep.py end to end on a tiny random greyscale model, and the plots of evaluations/plots.py."""

import csv
import json
import os
import sys

import numpy as np
import pytest
import torch as th
from PIL import Image

from evaluations import plots
from guided_diffusion.logger import CsvOutput
from guided_diffusion.script_util import create_classifier, create_model_and_diffusion

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import sweep  # noqa: E402 (scripts/ is not a package)

MODEL = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
             num_heads=1, class_cond=True, num_classes=3, class_dropout_prob=0.1, image_channels=1,
             learn_sigma=True, diffusion_steps=100)
CLASSIFIER = dict(image_size=8, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                  classifier_attention_resolutions="4", num_classes=3, image_channels=1)


def _flags(flags):
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_inputs")
    th.manual_seed(0)
    model, _ = create_model_and_diffusion(**MODEL)
    with th.no_grad():  # random weights everywhere (the output layer starts at zero: eps would be 0)
        for param in model.parameters():
            param.add_(th.randn_like(param) * 0.05)
    classifier = create_classifier(**CLASSIFIER)
    th.save(model.state_dict(), folder / "model.pt")
    th.save(classifier.state_dict(), folder / "classifier.pt")
    grey = np.random.RandomState(0).randint(0, 256, (16, 8, 8, 1)).astype(np.uint8)
    np.savez(folder / "ref.npz", arr_0=np.repeat(grey, 3, axis=-1))
    return folder


def test_sweep_writes_the_table_and_the_plots(checkpoints, tmp_path):
    out = tmp_path / "out"
    rows = sweep.main(_flags(MODEL) + _flags(CLASSIFIER) + [
        "--model_path", str(checkpoints / "model.pt"), "--classifier_path", str(checkpoints / "classifier.pt"),
        "--ref_batch", str(checkpoints / "ref.npz"), "--out_dir", str(out), "--features", "pixels",
        "--samplers", "ddim,dpm++2m", "--steps", "2,3", "--classifier_scales", "0,4", "--guidance_scales", "1,3",
        "--guidance_sampler", "ddim", "--guidance_steps", "2", "--num_samples", "6", "--batch_size", "4",
    ])
    settings = [(r["sampler"], r["steps"], r["guidance"], r["scale"], r["nfe"]) for r in rows]
    assert settings == [
        ("ddim", 2, "none", 0.0, 2.0), ("ddim", 3, "none", 0.0, 3.0),
        ("dpm++2m", 2, "none", 0.0, 2.0), ("dpm++2m", 3, "none", 0.0, 3.0),
        ("ddim", 2, "classifier", 0.0, 2.0), ("ddim", 2, "classifier", 4.0, 2.0),
        ("ddim", 2, "classifier-free", 1.0, 2.0),  # W = 1: plain conditional sampling, one branch
        ("ddim", 2, "classifier-free", 3.0, 4.0),  # [x; x] in one batch counts twice
    ]
    for row in rows:
        assert row["fid"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["inception_score"] is None and row["images_per_s"] > 0 and row["num_samples"] == 6
    # every run starts from the same noise and labels: zero classifier guidance and W = 1 are plain DDIM
    plain = rows[0]["fid"]
    assert rows[4]["fid"] == pytest.approx(plain, rel=1e-3) and rows[6]["fid"] == plain
    assert rows[5]["fid"] != pytest.approx(plain, rel=1e-3)  # real guidance changes the samples
    assert rows[7]["fid"] != pytest.approx(plain, rel=1e-3)
    assert json.loads((out / "sweep.json").read_text()) == rows
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == sweep.COLUMNS
    assert [float(r["fid"]) for r in table] == [r["fid"] for r in rows] and table[0]["inception_score"] == ""
    for name in ("samplers.png", "guidance.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    lines = plots.plot_samplers(rows, str(tmp_path / "again.png"))
    assert lines == {s: [(r["nfe"], r["fid"]) for r in rows[i : i + 2]] for s, i in (("ddim", 0), ("dpm++2m", 2))}


@pytest.mark.parametrize("extra, message", [
    (["--guidance_scales", "2", "--class_dropout_prob", "0"], "--class_dropout_prob P"),
    (["--classifier_scales", "1"], "needs --classifier_path"),
    (["--samplers", "euler"], "unknown ['euler']"),
    (["--timestep_respacing", "10"], "set per run"),
])
def test_sweep_rejects_impossible_runs_before_any_work(checkpoints, extra, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):  # one line from errors.run
        sweep.main(_flags(MODEL) + ["--ref_batch", "ref.npz", "--model_path", str(checkpoints / "model.pt"),
                                    "--out_dir", str(tmp_path / "out")] + extra)
    assert not (tmp_path / "out").exists()


def test_ddim_spacing_skips_the_last_timestep():
    from guided_diffusion.build import build_diffusion
    from guided_diffusion.config import DiffusionConfig

    kept = {spacing: build_diffusion(DiffusionConfig(timestep_respacing=sweep.respacing(20, spacing))).timestep_map
            for spacing in ("even", "ddim")}
    assert sweep.respacing(20, "ddim") == "ddim20" and len(kept["even"]) == len(kept["ddim"]) == 20
    assert max(kept["even"]) == 999 and max(kept["ddim"]) == 950


def test_training_curves_from_progress_csv(tmp_path):
    log = CsvOutput(str(tmp_path / "progress.csv"))
    for step in range(0, 50, 10):
        log.write_kvs({"step": step, "samples": step * 4, "loss": 1.0 / (step + 1), "mse": 0.5 / (step + 1)})
    log.write_kvs({"step": 50, "samples": 200, "loss": 0.02, "mse": 0.01, "vb": 0.005})  # a key appears late
    curves = plots.plot_training(str(tmp_path / "progress.csv"), str(tmp_path / "training.png"))
    assert curves["loss"] == ([0, 10, 20, 30, 40, 50], [1.0, 1 / 11, 1 / 21, 1 / 31, 1 / 41, 0.02])
    assert curves["vb"] == ([50], [0.005]) and set(curves) == {"loss", "mse", "vb"}
    with Image.open(tmp_path / "training.png") as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="logs none of"):
        plots.plot_training(str(tmp_path / "progress.csv"), str(tmp_path / "x.png"), keys=("train_loss",))
