"""The release's flag API: defaults, boolean parsing, presets, and the factories' keyword arguments."""

import argparse
import json
from pathlib import Path

import pytest
import torch as th

from guided_diffusion import script_util as su

SCRIPT_FLAGS = json.loads((Path(__file__).parent / "fixtures" / "reference" / "script_flags.json").read_text())
NEW_FLAGS = {"num_classes", "resblock_rescale", "attention_impl", "classifier_attention_impl", "classifier_channel_mult",
             "image_channels", "class_dropout_prob", "guidance_embed"}
SR_NEW_FLAGS = NEW_FLAGS | {"channel_mult"}


def release_defaults(script):
    return {f["flag"][2:]: f["default"] for f in SCRIPT_FLAGS["scripts"][script]}


@pytest.mark.parametrize(
    "defaults, script, new_flags",
    [
        (su.model_and_diffusion_defaults(), "image_sample", NEW_FLAGS),
        (su.classifier_and_diffusion_defaults(), "classifier_train", NEW_FLAGS),
        (su.sr_model_and_diffusion_defaults(), "super_res_sample", SR_NEW_FLAGS),
    ],
)
def test_defaults_match_release(defaults, script, new_flags):
    release = release_defaults(script)
    sampling_flags = {"clip_denoised", "num_samples", "batch_size", "use_ddim", "model_path", "data_dir", "val_data_dir",
                      "noised", "iterations", "lr", "weight_decay", "anneal_lr", "microbatch", "schedule_sampler",
                      "resume_checkpoint", "log_interval", "eval_interval", "save_interval", "base_samples"}
    assert set(defaults) - new_flags == set(release) - sampling_flags
    for key, value in defaults.items():
        if key not in new_flags:
            assert release[key] == value and type(release[key]) is type(value), key


def test_release_keyword_arguments_are_kept():
    """Code written against the release passes every flag as a keyword; unknown keywords are named."""
    release_model_keys = set(release_defaults("image_sample")) - {"clip_denoised", "num_samples", "batch_size", "use_ddim", "model_path"}
    release_flags = {k: v for k, v in su.model_and_diffusion_defaults().items() if k in release_model_keys}
    model, diffusion = su.create_model_and_diffusion(**dict(release_flags, num_channels=32))
    assert model.model_channels == 32 and diffusion.num_timesteps == 1000
    with pytest.raises(TypeError, match="unknown flag.*num_chanels"):
        su.create_model_and_diffusion(num_chanels=32)
    sr_flags = {k: v for k, v in su.sr_model_and_diffusion_defaults().items() if k not in SR_NEW_FLAGS}
    model, _ = su.sr_create_model_and_diffusion(**dict(sr_flags, large_size=64, small_size=16, num_channels=32))
    assert model.image_size == 64


def test_create_model_keeps_the_release_s_own_defaults():
    """The release's create_model defaults differ from the flags': one head, attention at 16 px, no AdaGN."""
    model = su.create_model(32, 32, 1, channel_mult="1,2")
    attention = [m for m in model.modules() if type(m).__name__ == "AttentionBlock"]
    assert len(attention) == 4 and attention[0].num_heads == 1  # at 16 px: 1 input, 1 middle, 2 output blocks
    assert model.input_blocks[1][0].emb_layers[1].out_features == 32  # no scale-shift: C, not 2C


@pytest.mark.parametrize("text, value", [("True", True), ("yes", True), ("1", True), ("f", False), ("NO", False), ("0", False)])
def test_str2bool(text, value):
    assert su.str2bool(text) is value


def test_str2bool_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError, match="boolean"):
        su.str2bool("maybe")


def make_parser(defaults):
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    return parser


def test_preset_expands_and_explicit_flags_win():
    parser = make_parser(su.model_and_diffusion_defaults())
    args = su.parse_args(parser, ["--preset", "adm64_cond", "--dropout", "0.0"])
    assert args.use_new_attention_order is True and args.num_channels == 192 and args.noise_schedule == "cosine"
    assert args.dropout == 0.0  # explicit flag overrides the preset's 0.1
    args = su.parse_args(parser, ["--dropout", "0.0", "--preset=adm64_cond"])
    assert args.dropout == 0.0  # order on the command line does not matter


def test_combined_presets_skip_flags_the_script_lacks():
    defaults = su.model_and_diffusion_defaults()
    defaults.update(su.classifier_defaults())
    args = su.parse_args(make_parser(defaults), ["--preset", "adm128_cond,classifier128"])
    assert args.image_size == 128 and args.classifier_depth == 2 and args.num_heads == 4
    # image_train has no classifier flags: the classifier preset's are left out, not an error.
    args = su.parse_args(make_parser(su.model_and_diffusion_defaults()), ["--preset", "classifier64"])
    assert args.image_size == 64


def test_unknown_preset_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        su.parse_args(make_parser(su.model_and_diffusion_defaults()), ["--preset", "adm1024"])
    assert "unknown preset 'adm1024'" in capsys.readouterr().err


def test_fractional_channel_mult_from_command_line():
    args = su.parse_args(make_parser(su.model_and_diffusion_defaults()), ["--channel_mult", "0.5,1,2", "--image_size", "32"])
    assert su.parse_channel_mult(args.channel_mult, args.image_size) == (0.5, 1, 2)
    with pytest.raises(ValueError, match="comma-separated numbers"):
        su.parse_channel_mult("1;2", 32)


def test_num_classes_and_classifier_outputs():
    model = su.create_model(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", class_cond=True, num_classes=7)
    assert model.label_emb.weight.shape == (7, 128)
    classifier = su.create_classifier(
        16, False, 64, 1, "8", True, True, "attention", num_classes=3, classifier_channel_mult="1,2"
    )
    assert classifier.out[2].c_proj.weight.shape[0] == 3


def test_diffusion_flags_select_the_release_types():
    from guided_diffusion.gaussian_diffusion import LossType, ModelMeanType, ModelVarType

    d = su.create_gaussian_diffusion(steps=100, learn_sigma=True, rescale_learned_sigmas=True, timestep_respacing="10")
    assert (d.model_var_type, d.loss_type, d.model_mean_type) == (
        ModelVarType.LEARNED_RANGE, LossType.RESCALED_MSE, ModelMeanType.EPSILON,
    )  # fmt: skip
    assert d.num_timesteps == 10
    d = su.create_gaussian_diffusion(steps=100, use_kl=True, predict_xstart=True)
    assert (d.model_var_type, d.loss_type, d.model_mean_type) == (
        ModelVarType.FIXED_LARGE, LossType.RESCALED_KL, ModelMeanType.START_X,
    )  # fmt: skip


def test_errors_name_the_flag_of_the_model_at_hand():
    with pytest.raises(ValueError, match="--classifier_channel_mult 1,2,2,4"):
        su.create_classifier(image_size=32)
    with pytest.raises(ValueError, match="--channel_mult"):
        su.sr_model(large_size=96, small_size=24)


def test_super_resolution_at_any_size_with_channel_mult():
    model = su.sr_model(large_size=32, small_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                        attention_resolutions="")
    x = th.randn(1, 3, 32, 32)
    assert model(x, th.tensor([5]), low_res=th.randn(1, 3, 8, 8)).shape == x.shape
    # "" keeps the release's table, keyed by the large size
    assert su.sr_model(large_size=64, small_size=16, num_channels=32).channel_mult == (1, 2, 3, 4)


def test_greyscale_and_label_dropout_flags():
    flags = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", class_cond=True, num_classes=3)
    model, _ = su.create_model_and_diffusion(**flags, image_channels=1, learn_sigma=True)
    assert model.input_blocks[0][0].weight.shape[1] == 1 and model.out[-1].weight.shape[0] == 2
    released, _ = su.create_model_and_diffusion(**flags)
    dropout, _ = su.create_model_and_diffusion(**flags, class_dropout_prob=0.1)
    assert released.label_emb.weight.shape[0] == 3 and released.null_class is None
    assert dropout.label_emb.weight.shape[0] == 4 and dropout.null_class == 3
    classifier = su.create_classifier(image_size=16, classifier_channel_mult="1,2", image_channels=1, num_classes=3,
                                      classifier_attention_resolutions="8")
    assert classifier(th.randn(2, 1, 16, 16), th.tensor([1, 2])).shape == (2, 3)


def test_config_parser_help_types_choices_and_presets(capsys):
    from guided_diffusion.cli import config_parser, parse_configs
    from guided_diffusion.config import DiffusionConfig, ModelConfig, SampleConfig

    configs = (ModelConfig, DiffusionConfig, SampleConfig)
    parser = config_parser("test", *configs)
    model, diffusion, run = parse_configs(parser, configs, ["--preset", "adm64_cond", "--dropout", "0.2",
                                                             "--sampler", "dpm++2m", "--clip_denoised", "no"])
    assert (model.num_channels, model.dropout, diffusion.noise_schedule) == (192, 0.2, "cosine")
    assert run.sampler == "dpm++2m" and run.clip_denoised is False and isinstance(model, ModelConfig)
    assert parse_configs(parser, configs, [])[0] == ModelConfig()  # the preset did not stick to the parser
    with pytest.raises(SystemExit):
        parse_configs(parser, configs, ["--noise_schedule", "quadratic"])
    assert "invalid choice: 'quadratic'" in capsys.readouterr().err


def test_resume_checks_skip_flags_that_change_no_weight():
    from guided_diffusion.config import DiffusionConfig, ModelConfig, checked_on_resume

    checked = checked_on_resume(ModelConfig(attention_impl="sdpa", num_channels=32), DiffusionConfig())
    assert checked["num_channels"] == 32 and checked["learn_sigma"] is False
    assert not {"attention_impl", "use_checkpoint"} & set(checked)
