"""A checkpoint knows its flags (guided_diffusion/run_flags.py): the flags of a project run come from the
train_config.json beside its checkpoints, a released checkpoint is recognised by its keys and shapes, the
command line wins but may not contradict the file, and the scripts sample, evaluate and resume with
nothing but the checkpoint's path."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from _train_helpers import REPO, TINY_RUN
from guided_diffusion import run_flags
from guided_diffusion.build import build_text_unet
from guided_diffusion.cli import COMMAND_LINE, DEFAULT, config_parser, configs_of, parse_flags
from guided_diffusion.config import (ClassifierConfig, ClassifierSampleConfig, ClassSampleConfig, DiffusionConfig,
                                     ModelConfig, TextModelConfig, TrainConfig, defaults_of, split_flags)
from guided_diffusion.errors import UsageError
from guided_diffusion.presets import PRESETS
from guided_diffusion.text import prompts as text_prompts
from guided_diffusion.train_setup import run_config

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
SAMPLE = (ModelConfig, DiffusionConfig, ClassSampleConfig)
GUIDED = (ModelConfig, DiffusionConfig, ClassifierConfig, ClassifierSampleConfig)


def reference(name):
    return json.loads((REFERENCE / f"state_dict_{name}.json").read_text())


def reference_shapes(name):
    return {entry["key"]: tuple(entry["shape"]) for entry in reference(name)["state_dict"]}


def save_shapes(shapes, path):
    """A state dict with these {key: shape} whose tensors share one zero (a few KB for any model)."""
    zero = th.zeros(1)
    th.save({key: zero.expand(shape) for key, shape in shapes.items()}, path)
    return path


def project_run(folder, **flags):
    """folder/model000010.pt beside the train_config.json of an image_train run with these model and
    diffusion flags (and a sampling-looking --timestep_respacing 25 and --batch_size 2 in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    model, diffusion = configs_of(dict(defaults_of(ModelConfig, DiffusionConfig), **flags),
                                  (ModelConfig, DiffusionConfig))
    config = run_config((model, DiffusionConfig(**dict(vars(diffusion), timestep_respacing="25"))),
                        TrainConfig(batch_size=2), ["a", "b"])
    (folder / "train_config.json").write_text(json.dumps(config))
    (folder / "model000010.pt").write_bytes(b"weights")  # read only by the loaders, not by run_flags
    return folder / "model000010.pt"


def resolve(config_classes, argv):
    values, origins = parse_flags(config_parser("test", *config_classes), argv)
    configs, lines = run_flags.resolve_configs(values, origins, config_classes)
    return configs, lines, origins


# ----------------------------------------------------------------------------- released checkpoints


def test_every_released_file_is_recognised_by_the_fingerprint_of_its_shapes():
    index = json.loads((REFERENCE / "index.json").read_text())
    paper = [r for r in run_flags.RELEASES if r.network is not TextModelConfig]  # GLIDE's: below
    assert {r.preset for r in paper} == set(PRESETS) == set(index)
    for name, entry in index.items():
        files = {f.strip() for f in entry["released_checkpoint"].split(",")}
        fingerprint = run_flags.state_dict_fingerprint(reference_shapes(name))
        assert {r.file for r in paper if r.preset == name} == files
        assert {r.fingerprint for r in paper if r.preset == name} == {fingerprint}
        assert run_flags.recognise(reference_shapes(name), "renamed.pt")[0].fingerprint == fingerprint
    shapes = reference_shapes("adm64_cond")
    shapes["out.2.bias"] = (3,)  # one shape off: not the release
    assert run_flags.recognise(shapes, "64x64_diffusion.pt") == (None, [])


def test_a_released_checkpoint_gets_its_preset_and_the_log_says_so(tmp_path):
    path = save_shapes(reference_shapes("adm64_cond"), tmp_path / "my_copy.pt")
    found = run_flags.checkpoint_flags(str(path), "model_path")
    assert found.origin == "the release's 64x64_diffusion.pt (preset adm64_cond)"
    assert found.flags["num_channels"] == 192 and found.flags["use_new_attention_order"] is True
    assert found.flags["num_head_channels"] == 64 and found.flags["noise_schedule"] == "cosine"
    assert "recognised by its keys and shapes as the release's 64x64_diffusion.pt (preset adm64_cond)" in found.notes[0]
    assert "use_new_attention_order True" in found.notes[1] and "are the preset's" in found.notes[1]


def test_shared_shapes_are_told_apart_by_the_released_file_name(tmp_path):
    shapes = reference_shapes("lsun256")
    nodropout = run_flags.checkpoint_flags(str(save_shapes(shapes, tmp_path / "lsun_horse_nodropout.pt")), "model_path")
    assert "preset lsun256" in nodropout.origin and nodropout.flags["dropout"] == 0.0
    horse = run_flags.checkpoint_flags(str(save_shapes(shapes, tmp_path / "lsun_horse.pt")), "model_path")
    assert horse.flags["dropout"] == 0.1
    renamed = run_flags.checkpoint_flags(str(save_shapes(shapes, tmp_path / "renamed.pt")), "model_path")
    assert renamed.origin == "the release's 256x256_diffusion_uncond.pt (preset adm256_uncond)"
    assert "lsun_bedroom.pt, lsun_cat.pt, lsun_horse.pt, lsun_horse_nodropout.pt have the same shapes (they " \
           "differ in dropout)" in renamed.notes[-1]


def test_a_released_classifier_and_model_fill_both_configs(tmp_path):
    model = save_shapes(reference_shapes("adm128_cond"), tmp_path / "m.pt")
    classifier = save_shapes(reference_shapes("classifier128"), tmp_path / "c.pt")
    (model_config, diffusion, classifier_config, run), lines, origins = resolve(
        GUIDED, ["--model_path", str(model), "--classifier_path", str(classifier), "--classifier_scale", "0.5"])
    assert (model_config.image_size, model_config.num_channels, model_config.num_heads) == (128, 256, 4)
    assert (classifier_config.classifier_width, classifier_config.classifier_depth) == (128, 2)
    assert diffusion.learn_sigma and diffusion.timestep_respacing == "" and run.classifier_scale == 0.5
    assert origins["classifier_depth"] == "the release's 128x128_classifier.pt (preset classifier128)"


def test_a_checkpoint_of_unknown_shapes_leaves_the_flags_to_the_command_line(tmp_path):
    path = save_shapes({"time_embed.0.weight": (128, 32)}, tmp_path / "model.pt")
    (model, _, _), lines, origins = resolve(SAMPLE, ["--model_path", str(path), "--num_channels", "32"])
    assert model.num_channels == 32 and origins["num_channels"] == COMMAND_LINE and origins["image_size"] == DEFAULT
    assert "the shapes of no released checkpoint (the paper's or GLIDE's): its flags come from the command " \
           "line" in lines[0]


# ----------------------------------------------------------------------------- GLIDE's released text models

# tests/fixtures/reference/glide/state_dict_glide_NAME.json (written by glide-text2im's own code): the file.
GLIDE_FILES = {"base": "base.pt", "base_inpaint": "base_inpaint.pt", "upsample": "upsample.pt",
               "upsample_inpaint": "upsample_inpaint.pt"}


def glide_reference(name):
    return json.loads((REFERENCE / "glide" / f"state_dict_glide_{name}.json").read_text())


def glide_shapes(name):
    return {key: tuple(shape) for key, shape in glide_reference(name)["keys"]}


def script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", GLIDE_FILES)
def test_every_released_glide_model_is_recognised_and_its_flags_build_exactly_its_keys_and_shapes(name):
    reference = glide_reference(name)
    release, others = run_flags.recognise(glide_shapes(name), "renamed.pt")
    assert release.file == GLIDE_FILES[name] and others == []
    flags = run_flags.release_flags(release)
    # GLIDE's options for the file, as glide-text2im wrote them, in this project's flags: squaredcos_cap_v2 is
    # cosine, sigma is learned; the precision, the text cache and the respacing are left to the command line
    options = dict(reference["options"])
    options["noise_schedule"] = options["noise_schedule"].replace("squaredcos_cap_v2", "cosine")
    assert set(options) - set(flags) == {"use_fp16", "cache_text_emb", "timestep_respacing"}
    assert {k: flags[k] for k in options if k in flags} == {k: v for k, v in options.items() if k in flags}
    assert flags["learn_sigma"] is True and not flags["class_cond"]
    model_config, diffusion_config = split_flags(flags, TextModelConfig, DiffusionConfig)
    with th.device("meta"):  # no memory for its 385M-398M parameters
        model = build_text_unet(model_config, diffusion_config.learn_sigma)
    assert [[key, list(value.shape)] for key, value in model.state_dict().items()] == reference["keys"]
    shapes = glide_shapes(name)
    shapes["input_blocks.0.0.weight"] = (192, 4, 3, 3)  # one shape off: none of the four
    assert run_flags.recognise(shapes, GLIDE_FILES[name]) == (None, [])


def test_the_four_glide_fingerprints_are_distinct_and_no_other_releases():
    glide = [r for r in run_flags.RELEASES if r.network is TextModelConfig]
    assert sorted(r.file for r in glide) == sorted(GLIDE_FILES.values())
    assert len({r.fingerprint for r in run_flags.RELEASES}) == len(run_flags.RELEASES) - 4  # the LSUN models' share
    assert set(run_flags.GLIDE_MODELS) == {r.preset for r in glide}


def test_glides_base_samples_with_nothing_but_its_path_and_its_upsampler_too(tmp_path):
    text_sample = script("text_sample")
    base = save_shapes(glide_shapes("base"), tmp_path / "my_base.pt")
    upsample = save_shapes(glide_shapes("upsample"), tmp_path / "upsample.pt")
    argv = ["--model_path", str(base), "--upsample_model_path", str(upsample), "--use_fp16", "True"]
    values, origins = parse_flags(text_sample.create_argparser(), argv)
    (model, diffusion, run, _), lines = run_flags.resolve_configs(values, origins, text_sample.CONFIGS)
    flags = dict(run_flags.glide_flags(run_flags.GLIDE_MODELS["base"]), use_fp16=True)
    assert (model, diffusion) == split_flags(flags, TextModelConfig, DiffusionConfig)
    assert (diffusion.noise_schedule, diffusion.learn_sigma, diffusion.timestep_respacing) == ("cosine", True, "")
    origin = "GLIDE's released base.pt (glide-text2im's 'base' model)"
    assert origins["xf_width"] == origins["noise_schedule"] == origin and origins["use_fp16"] == COMMAND_LINE
    assert f"--model_path {base}: no train_config.json beside it; recognised by its keys and shapes as {origin}" \
           in lines
    assert "  its heads (num_head_channels 64, xf_heads 8), schedule (noise_schedule cosine) and dropout (0.1), " \
           "which shapes cannot show, are GLIDE's options for it; the precision (use_fp16) is not the file's" in lines
    text_sample.check_models(model, run)  # a base model, as the base
    up_model, up_diffusion = text_prompts.upsampler_configs(run.upsample_model_path, run.upsample_respacing)
    assert (up_model.super_res, up_model.inpaint, up_model.image_size, up_model.num_res_blocks) == (True, False, 256, 2)
    assert (up_diffusion.noise_schedule, up_diffusion.learn_sigma, up_diffusion.timestep_respacing) == (
        "linear", True, "fast27")
    with pytest.raises(UsageError, match=r"^--upsample_model_path .*my_base.pt is not a super-resolution text model: "
                                         r"pass .* or GLIDE's released upsample.pt$"):
        text_prompts.upsampler_configs(str(base), "fast27")
    with pytest.raises(UsageError, match=r"--noise_schedule linear contradicts the checkpoint \(cosine, from GLIDE's "
                                         r"released base.pt \(glide-text2im's 'base' model\)\)"):
        run_flags.resolve_configs(*parse_flags(text_sample.create_argparser(), [*argv, "--noise_schedule", "linear"]),
                                  text_sample.CONFIGS)


@pytest.mark.parametrize("name, refusal", [("upsample", "pass it as --upsample_model_path"),
                                           ("base_inpaint", "holds an inpainting text model")])
def test_glides_other_models_are_refused_as_the_base_naming_the_fix(tmp_path, name, refusal):
    text_sample = script("text_sample")
    path = save_shapes(glide_shapes(name), tmp_path / GLIDE_FILES[name])
    values, origins = parse_flags(text_sample.create_argparser(), ["--model_path", str(path)])
    (model, _, run, _), _ = run_flags.resolve_configs(values, origins, text_sample.CONFIGS)
    with pytest.raises(UsageError, match=refusal):
        text_sample.check_models(model, run)


def test_fine_tuning_glides_base_takes_its_network_flags_and_the_command_lines_schedule(tmp_path):
    text_train = script("text_train")
    base = save_shapes(glide_shapes("base"), tmp_path / "base.pt")
    values, origins = parse_flags(text_train.create_argparser(), ["--init_checkpoint", str(base), "--data_dir", "d"])
    (model, diffusion, _), _ = run_flags.resolve_configs(values, origins, text_train.CONFIGS)
    assert model == split_flags(run_flags.glide_flags(run_flags.GLIDE_MODELS["base"]), TextModelConfig,
                                DiffusionConfig)[0]
    assert diffusion.learn_sigma and origins["num_res_blocks"] == origins["learn_sigma"] != DEFAULT
    assert origins["noise_schedule"] == DEFAULT  # fine-tuning may change the schedule (GLIDE's base: cosine)
    with pytest.raises(UsageError, match=r"^--model_path .*base.pt holds a text-conditional model \(GLIDE's"):
        resolve(SAMPLE, ["--model_path", str(base)])  # image_sample.py's flags: not a text model's


# ----------------------------------------------------------------------------- project runs


def test_a_project_run_gives_its_flags_and_never_its_inference_flags(tmp_path):
    path = project_run(tmp_path / "run", **TINY_RUN)
    (model, diffusion, run), lines, origins = resolve(SAMPLE, ["--model_path", str(path), "--num_samples", "3"])
    expected_model, expected_diffusion = configs_of(dict(defaults_of(ModelConfig, DiffusionConfig), **TINY_RUN),
                                                    (ModelConfig, DiffusionConfig))
    assert model == expected_model and diffusion == expected_diffusion  # timestep_respacing "" and not "25"
    assert run == ClassSampleConfig(model_path=str(path), num_samples=3)  # batch_size 16, not the run's 2
    config_path = str(tmp_path / "run" / "train_config.json")
    assert origins["num_channels"] == origins["learn_sigma"] == config_path
    assert origins["timestep_respacing"] == origins["batch_size"] == DEFAULT
    assert lines[0] == f"flags from the command line: model_path={path} num_samples=3"
    assert lines[1].startswith(f"flags from {config_path}: num_channels=32 num_res_blocks=1 ")
    assert lines[-1].startswith('flags from the defaults: timestep_respacing="" ')


@pytest.mark.parametrize("argv", [
    ["--num_channels", "32"],  # the same value
    ["--attention_resolutions", "8,"],  # the same resolutions, spelled otherwise
    ["--use_fp16", "True", "--dropout", "0.3", "--attention_impl", "sdpa"],  # change no weight nor its function
])
def test_a_flag_that_agrees_with_the_checkpoint_or_changes_no_weight_is_taken(tmp_path, argv):
    path = project_run(tmp_path / "run", **TINY_RUN)
    (model, _, _), _, origins = resolve(SAMPLE, ["--model_path", str(path), *argv])
    assert origins[argv[0][2:]] == COMMAND_LINE and model.num_channels == 32
    assert str(getattr(model, argv[-2][2:])) == argv[-1]


def test_the_size_default_channel_mult_agrees_with_its_spelled_out_value(tmp_path):
    path = project_run(tmp_path / "run", image_size=64, channel_mult="")
    (model, _, _), _, _ = resolve(SAMPLE, ["--model_path", str(path), "--channel_mult", "1,2,3,4"])
    assert model.channel_mult == "1,2,3,4"
    with pytest.raises(UsageError, match=r'--channel_mult 1,2,4 contradicts the checkpoint \(""'):
        resolve(SAMPLE, ["--model_path", str(path), "--channel_mult", "1,2,4"])


@pytest.mark.parametrize("argv, message", [
    (["--num_channels", "64"], r"^--num_channels 64 contradicts the checkpoint \(32, from .*run/train_config.json\); "
                               "leave the flag out to use the checkpoint's value$"),
    (["--learn_sigma", "False"], r"^--learn_sigma False contradicts the checkpoint \(True, "),
    (["--noise_schedule", "linear"], r"^--noise_schedule linear contradicts the checkpoint \(cosine, "),
    (["--preset", "adm64_cond"], r"^--preset adm64_cond \(its num_channels 192\) contradicts the checkpoint \(32, "),
])
def test_a_flag_that_contradicts_the_checkpoint_is_an_error_naming_both_values(tmp_path, argv, message):
    path = project_run(tmp_path / "run", **TINY_RUN)
    with pytest.raises(UsageError, match=message):
        resolve(SAMPLE, ["--model_path", str(path), *argv])


def test_model_and_classifier_must_agree_on_the_flags_they_share(tmp_path):
    model = project_run(tmp_path / "model", **TINY_RUN)
    classifier = tmp_path / "classifier" / "model000010.pt"
    classifier.parent.mkdir()
    classifier.write_bytes(b"weights")
    flags = dict(defaults_of(ClassifierConfig, DiffusionConfig), image_size=16, num_classes=2, image_channels=1)
    (classifier.parent / "train_config.json").write_text(json.dumps({"train_flags": flags}))
    (model_config, _, classifier_config, _), _, _ = resolve(
        GUIDED, ["--model_path", str(model), "--classifier_path", str(classifier)])
    assert model_config.num_classes == classifier_config.num_classes == 2
    (classifier.parent / "train_config.json").write_text(json.dumps({"train_flags": dict(flags, image_size=32)}))
    with pytest.raises(UsageError, match=r"the checkpoints disagree on --image_size: 16 \(from .*model/train_config"
                                         r".json\), 32 \(from .*classifier/train_config.json\)"):
        resolve(GUIDED, ["--model_path", str(model), "--classifier_path", str(classifier)])


def test_an_unconditional_model_takes_the_classifiers_classes(tmp_path):
    model = project_run(tmp_path / "model", **dict(TINY_RUN, image_size=64, image_channels=3, class_cond=False,
                                                        class_dropout_prob=0.0))
    classifier = save_shapes(reference_shapes("classifier64"), tmp_path / "classifier.pt")
    (model_config, _, classifier_config, _), _, origins = resolve(
        GUIDED, ["--model_path", str(model), "--classifier_path", str(classifier)])
    assert model_config.num_classes == classifier_config.num_classes == 1000
    assert "classifier64" in origins["num_classes"]


def test_a_checkpoint_of_another_kind_of_network_is_refused(tmp_path):
    classifier = save_shapes(reference_shapes("classifier64"), tmp_path / "64x64_classifier.pt")
    with pytest.raises(UsageError, match=r"--model_path .*64x64_classifier.pt holds a noisy-image classifier "
                                         r"\(classifier_train.py; .*\), not a diffusion model"):
        resolve(SAMPLE, ["--model_path", str(classifier)])
    with pytest.raises(FileNotFoundError, match="--model_path '.*nope.pt' does not exist"):
        resolve(SAMPLE, ["--model_path", str(tmp_path / "nope.pt")])


# ----------------------------------------------------------------------------- the scripts, end to end


def grey_samples(log_dir, count):
    with np.load(log_dir / f"samples_{count}x16x16x3.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert (images[..., 0] == images[..., 2]).all() and labels.shape == (count,)
    return images


def test_sampling_and_nll_need_only_the_checkpoint(tiny_runs, tmp_path, run_script):
    run_script("image_sample", ["--model_path", tiny_runs["ema"], "--num_samples", "2", "--timestep_respacing", "2"],
               tmp_path / "sample")
    grey_samples(tmp_path / "sample", 2)
    log = (tmp_path / "sample" / "log.txt").read_text()
    assert f"flags from {tiny_runs['ema'].parent / 'train_config.json'}: num_channels=32 " in log
    run_script("classifier_sample", ["--model_path", tiny_runs["ema"], "--classifier_path", tiny_runs["classifier"],
                                     "--num_samples", "2", "--timestep_respacing", "2"], tmp_path / "guided")
    grey_samples(tmp_path / "guided", 2)
    run_script("image_nll", ["--model_path", tiny_runs["model"], "--data_dir", tiny_runs["data"], "--num_samples", "1"],
               tmp_path / "nll")
    with np.load(tmp_path / "nll" / "vb_terms.npz") as data:
        assert data["terms"].shape == (1, 20)  # the run's --diffusion_steps 20


def test_resuming_needs_only_the_checkpoint(tiny_runs, tmp_path, run_script):
    run_script("image_train", ["--resume_checkpoint", tiny_runs["model"], "--data_dir", tiny_runs["data"],
                               "--batch_size", "2", "--max_steps", "3", "--save_interval", "3"], tmp_path)
    resumed = th.load(tmp_path / "model000003.pt", weights_only=True)
    assert resumed["input_blocks.0.0.weight"].shape == (32, 1, 3, 3)  # TINY_RUN's width and grey input
    saved = json.loads((tmp_path / "train_config.json").read_text())["train_flags"]
    assert all(saved[name] == value for name, value in TINY_RUN.items())


def test_upsampling_needs_only_the_checkpoint(tiny_runs, tmp_path, run_script):
    """A greyscale 8 -> 16 upsampler trained 1 step; super_res_sample takes its sizes and widths from the run."""
    run_script("super_res_train", dict(data_dir=tiny_runs["data"], large_size=16, small_size=8, image_channels=1,
                                       num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="",
                                       diffusion_steps=10, noise_schedule="cosine", batch_size=2, max_steps=1,
                                       save_interval=1),
               tmp_path / "train")
    np.savez(tmp_path / "base.npz", np.full((2, 8, 8, 3), 200, dtype=np.uint8))
    run_script("super_res_sample", ["--model_path", tmp_path / "train" / "model000001.pt", "--base_samples",
                                    tmp_path / "base.npz", "--num_samples", "2"], tmp_path / "sample")
    with np.load(tmp_path / "sample" / "samples_2x16x16x3.npz") as data:
        assert data["arr_0"].shape == (2, 16, 16, 3) and data.files == ["arr_0"]
