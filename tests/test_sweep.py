"""scripts/sweep.py end to end on a tiny random greyscale model, and the plots of evaluations/plots.py."""

import csv
import json
import re
import os
import sys

import numpy as np
import pytest
import torch as th
from PIL import Image

from evaluations import evaluator, plots, tools
from evaluations.evaluator import evaluate
from evaluations.features import PixelFeatures
from guided_diffusion import samplers
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
    real = np.random.RandomState(1).randint(0, 256, (12, 8, 8, 1)).astype(np.uint8)
    np.savez(folder / "real.npz", arr_0=np.repeat(real, 3, axis=-1))
    judge = sweep.judge_module().Judge(image_size=8)
    with th.no_grad():  # a judge that answers class 2 for every image
        judge.net[-1].weight.zero_()
        judge.net[-1].bias.copy_(th.eye(10)[2])
    th.save(dict(image_size=8, test_accuracy=0.5, state_dict=judge.state_dict()), folder / "judge.pt")
    return folder


def _inputs(checkpoints):
    return _flags(MODEL) + _flags(CLASSIFIER) + [
        "--model_path", str(checkpoints / "model.pt"), "--classifier_path", str(checkpoints / "classifier.pt"),
        "--ref_batch", str(checkpoints / "ref.npz"), "--features", "pixels", "--batch_size", "4"]


@pytest.mark.slow
def test_sweep_writes_the_table_and_the_plots(checkpoints, tmp_path):
    out = tmp_path / "out"
    rows = sweep.main(_inputs(checkpoints) + [
        "--out_dir", str(out), "--samplers", "ddim,dpm++2m", "--spacings", "even,ddim", "--steps", "2,3",
        "--classifier_scales", "0,4", "--guidance_scales", "1,3", "--guidance_samplers", "ddim",
        "--guidance_steps", "2", "--guidance_baseline", "ddpm:4", "--num_samples", "6", "--bootstrap", "20",
        "--real_images", str(checkpoints / "real.npz"), "--judge", str(checkpoints / "judge.pt"),
    ])
    settings = [(r["sweep"], r["sampler"], r["spacing"], r["steps"], r["guidance"], r["scale"], r["nfe"]) for r in rows]
    assert settings == [("floor", "real", None, None, "none", 0.0, None)] + [
        ("samplers", sampler, spacing, n, "none", 0.0, float(n))
        for sampler in ("ddim", "dpm++2m") for spacing in ("even", "ddim") for n in (2, 3)
    ] + [  # (sweep, sampler, spacing, steps, guidance, scale, nfe)
        ("guidance", "ddim", "even", 2, "classifier", 0.0, 2.0),
        ("guidance", "ddpm", "even", 4, "classifier", 0.0, 4.0),
        ("guidance", "ddim", "even", 2, "classifier", 4.0, 2.0),
        ("guidance", "ddpm", "even", 4, "classifier", 4.0, 4.0),
        # W = 1: plain conditional sampling, one branch; W = 3: [x; x] in one batch counts twice
        ("guidance", "ddim", "even", 2, "classifier-free", 1.0, 2.0),
        ("guidance", "ddpm", "even", 4, "classifier-free", 1.0, 4.0),
        ("guidance", "ddim", "even", 2, "classifier-free", 3.0, 4.0),
        ("guidance", "ddpm", "even", 4, "classifier-free", 3.0, 8.0),
    ]
    floor, runs = rows[0], rows[1:]
    assert floor["num_samples"] == 12 and floor["accuracy"] is None and floor["images_per_s"] is None
    assert floor["fid"] == pytest.approx(evaluate(str(checkpoints / "ref.npz"), str(checkpoints / "real.npz"),
                                                  PixelFeatures())["fid"], rel=1e-9)
    for row in rows:
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["inception_score"] is None
        assert row["fid_low"] < row["fid"] < row["fid_high"] and row["fid_std"] > 0
    for row in runs:
        assert row["fid"] > 0 and row["images_per_s"] > 0 and row["num_samples"] == 6 and row["options"] == ""
        # labels 0, 1, 2 in turn and a judge that always says 2: two of the six are right (the labels that
        # --class_balanced False draws for this seed, 1, 1, 2, 0, 2, 2, would score 1/2)
        assert row["accuracy"] == pytest.approx(1 / 3)
    # every run starts from the same noise and labels: zero classifier guidance and W = 1 are plain DDIM
    plain = runs[0]["fid"]
    assert runs[8]["fid"] == pytest.approx(plain, rel=1e-3) and runs[12]["fid"] == plain
    assert runs[10]["fid"] != pytest.approx(plain, rel=1e-3)  # real guidance changes the samples
    assert runs[14]["fid"] != pytest.approx(plain, rel=1e-3)
    assert runs[2]["fid"] != pytest.approx(plain, rel=1e-3)  # ddim2 keeps other steps than 2
    assert json.loads((out / "sweep.json").read_text()) == rows
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == sweep.COLUMNS
    assert [float(r["fid"]) for r in table] == [r["fid"] for r in rows] and table[1]["inception_score"] == ""
    for name in ("samplers.png", "guidance.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    lines = plots.plot_samplers(rows, str(tmp_path / "again.png"))
    assert list(lines) == ["ddim, even", "ddim, ddim", "dpm++2m, even", "dpm++2m, ddim"]
    assert lines["dpm++2m, ddim"] == [(r["nfe"], r["fid"], r["fid_low"], r["fid_high"]) for r in runs[6:8]]
    guided = plots.plot_guidance(rows, str(tmp_path / "guided.png"))
    assert guided["classifier-free", "ddpm, even, 4 steps"] == [
        (r["scale"], r["fid"], r["fid_low"], r["fid_high"], r["accuracy"], r["precision"], r["recall"])
        for r in (runs[13], runs[15])]


def test_the_floor_alone_needs_no_model(checkpoints, tmp_path, capsys):
    rows = sweep.main(["--ref_batch", str(checkpoints / "ref.npz"), "--features", "pixels", "--samplers", "",
                       "--image_size", "8", "--real_images", str(checkpoints / "real.npz"), "--out_dir", str(tmp_path)])
    assert [row["sweep"] for row in rows] == ["floor"] and "floor (12 real images): FID" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--guidance_scales", "2", "--class_dropout_prob", "0"], "--class_dropout_prob P"),
    (["--classifier_scales", "1"], "needs --classifier_path"),
    (["--samplers", "euler"], "unknown ['euler']"),
    (["--spacings", "uniform"], "--spacings: unknown ['uniform']"),
    (["--guidance_scales", "2", "--guidance_baseline", "ddpm"], "--guidance_baseline must be SAMPLER:N"),
    (["--timestep_respacing", "10"], "set per run"),
    (["--samplers", "ddpm,ddim", "--sampler_options", "churn=3"], "takes 'churn' (they take ddim: eta, dynamic_threshold, reclip_guided; ddpm: dynamic_threshold, reclip_guided)"),
    (["--samplers", "ddim", "--sampler_options", "eta=much"], "eta=much: expected a float"),
    (["--samplers", "ddim", "--sampler_options", "eta"], "KEY=VALUE pairs"),
    (["--judge", "judge.pt", "--image_size", "10"], "divisible by 4"),
])
def test_sweep_rejects_impossible_runs_before_any_work(checkpoints, extra, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):  # one line from errors.run
        sweep.main(_flags(MODEL) + ["--ref_batch", "ref.npz", "--model_path", str(checkpoints / "model.pt"),
                                    "--out_dir", str(tmp_path / "out")] + extra)
    assert not (tmp_path / "out").exists()


STEP_ERRORS = [  # issue 16: each of these once failed after the reference and the earlier runs, with a traceback
    (["--steps", "1"], "at least 2 steps"),
    (["--spacings", "ddim", "--steps", "10,60"], "'ddim60' fails for a 100-step diffusion (no integer stride"),
    (["--steps", "10,150"], "'150' fails for a 100-step diffusion (timestep_respacing '150' asks for 150 steps"),
]


def _impossible(out, checkpoints, extra):
    """Flags of a sweep whose reference does not exist, so any work before the checks fails first (the
    model's file is read for its flags alone: a missing one is the first error of all)."""
    return [*_flags(MODEL), "--ref_batch", out.parent / "missing.npz", "--model_path", checkpoints / "model.pt",
            "--out_dir", out, "--samplers", "ddim", *extra]


@pytest.mark.parametrize("extra, message", STEP_ERRORS)
def test_impossible_step_counts_are_usage_errors_before_any_work(extra, message, checkpoints, tmp_path, run_python):
    """As a user runs it: exit code 2, one error line naming the problem, no traceback, nothing written."""
    out = tmp_path / "out"
    result = run_python([sweep.__file__, *_impossible(out, checkpoints, extra)], check=False)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and message in errors[0] and not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--steps", "10", "--guidance_scales", "2", "--guidance_steps", "1"], "at least 2 steps"),
    (["--spacings", "logsnr", "--steps", "150"], "150 steps with spacing 'logsnr'"),  # never 150 of 100 steps
    (["--steps", "10", "--guidance_scales", "2", "--guidance_baseline", "ddpm:250"], "'250' fails for a 100-step"),
    (["--steps", "10", "--guidance_scales", "2", "--guidance_spacings", "ddim", "--guidance_steps", "60"], "'ddim60'"),
])
def test_guided_step_counts_are_checked_before_any_work(extra, message, checkpoints, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(message)):  # one line from errors.run
        sweep.main([str(flag) for flag in _impossible(out, checkpoints, ["--class_dropout_prob", "0.1", *extra])])
    assert not out.exists()


def test_saved_features_compare_two_runs_pairwise(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    rows = sweep.main(_inputs(checkpoints) + [
        "--out_dir", str(out), "--samplers", "ddim", "--steps", "2,3", "--sampler_options", "eta=0.5", "--num_samples",
        "6", "--bootstrap", "0", "--real_images", str(checkpoints / "real.npz"), "--save_features", "True"])
    names = sorted(path.name for path in (out / "features").iterdir())
    assert names == ["ddim_2_eta=0.5.npz", "ddim_3_eta=0.5.npz", "floor.npz"]
    with np.load(out / "features" / "ddim_2_eta=0.5.npz") as saved:
        assert saved["pool_3"].shape == (6, PixelFeatures.feature_dims[0]) and saved["pool_3"].dtype == np.float32
        assert saved["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    ref = evaluator.reference_stats(str(checkpoints / "ref.npz"), PixelFeatures()).save(tmp_path / "ref_stats.npz")
    a, b = (str(out / "features" / name) for name in names[:2])
    result = tools.main(["paired_fid", ref, a, b, "--rounds", "40"])
    assert [result["fid_a"], result["fid_b"]] == pytest.approx([rows[1]["fid"], rows[2]["fid"]], rel=1e-6)
    assert result["difference_low"] <= result["difference"] <= result["difference_high"]
    assert f"a - b = {result['difference']:.3f}, 95% paired interval" in capsys.readouterr().out
    with pytest.raises(ValueError, match="same --num_samples and --seed"):  # 12 real images against 6 samples
        tools.paired_fid(ref, str(out / "features" / "floor.npz"), a)
    relabelled = tmp_path / "relabelled.npz"
    np.savez(relabelled, pool_3=np.load(b)["pool_3"], labels=np.arange(6))
    with pytest.raises(ValueError, match="asked for other labels"):
        tools.paired_fid(ref, a, str(relabelled))
    with pytest.raises(ValueError, match=r"has no \['mu', 'sigma'\].*--save_stats"):
        tools.paired_fid(str(checkpoints / "ref.npz"), a, b)
    with pytest.raises(ValueError, match=r"has no \['pool_3'\].*--save_features True"):
        tools.paired_fid(ref, a, str(checkpoints / "real.npz"))


def test_sampler_options_go_to_the_samplers_that_take_them(checkpoints, tmp_path):
    def sweep_with(options):
        return sweep.main(_inputs(checkpoints) + ["--out_dir", str(tmp_path), "--samplers", "ddim,dpm++2m",
                                                  "--steps", "3", "--num_samples", "6", "--bootstrap", "0",
                                                  "--sampler_options", options])

    plain, deterministic, stochastic = sweep_with(""), sweep_with("eta=0"), sweep_with("eta=1")
    assert [r["options"] for r in stochastic] == ["eta=1.0", ""]  # dpm++2m takes no eta
    assert [r["fid"] for r in deterministic] == [r["fid"] for r in plain]
    assert stochastic[0]["fid"] != pytest.approx(plain[0]["fid"], rel=1e-3) and stochastic[1]["fid"] == plain[1]["fid"]
    assert stochastic[0]["fid_std"] is None


def test_new_samplers_and_their_options_flow_in_without_edits(monkeypatch):
    def churned(denoise, x, timesteps, *, noise_fn=th.randn_like, churn=0.0, lower_order_final=True):
        raise AssertionError("planning only")

    def sample_steps(diffusion, model, shape, *, sampler="ddpm", noise=None, dynamic_threshold=None, **options):
        raise AssertionError("planning only")

    monkeypatch.setitem(samplers.SAMPLERS, "churned", samplers.SamplerSpec(churned, "score", True))
    monkeypatch.setattr(samplers, "sample_steps", sample_steps)  # an option of every sampler
    config = sweep.SweepConfig(samplers="churned,ddpm", steps="5",
                               sampler_options="churn=10,lower_order_final=False,dynamic_threshold=0.995")
    runs = sweep.plan_runs(config, sweep.ModelConfig(), sweep.DiffusionConfig())
    assert [(run.sampler, run.options) for run in runs] == [
        ("churned", (("churn", 10.0), ("lower_order_final", False), ("dynamic_threshold", 0.995))),
        ("ddpm", (("dynamic_threshold", 0.995),))]
    assert sweep.sampler_keywords("churned") == {"churn": 0.0, "lower_order_final": True, "dynamic_threshold": None}


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
