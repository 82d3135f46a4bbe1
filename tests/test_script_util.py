"""The release's flag API: defaults, boolean parsing, presets, and the factories' keyword arguments."""

import argparse
import inspect
import json
from pathlib import Path

import pytest

from guided_diffusion import script_util as su

SCRIPT_FLAGS = json.loads((Path(__file__).parent / "fixtures" / "reference" / "script_flags.json").read_text())
NEW_FLAGS = {"num_classes", "resblock_rescale", "attention_impl", "classifier_attention_impl", "classifier_channel_mult"}


def release_defaults(script):
    return {f["flag"][2:]: f["default"] for f in SCRIPT_FLAGS["scripts"][script]}


@pytest.mark.parametrize(
    "defaults, script",
    [
        (su.model_and_diffusion_defaults(), "image_sample"),
        (su.classifier_and_diffusion_defaults(), "classifier_train"),
        (su.sr_model_and_diffusion_defaults(), "super_res_sample"),
    ],
)
def test_defaults_match_release(defaults, script):
    release = release_defaults(script)
    for key, value in defaults.items():
        if key not in NEW_FLAGS:
            assert release[key] == value, key
    assert NEW_FLAGS.isdisjoint(release)


def test_release_keyword_arguments_are_kept():
    """Code written against the release passes these keywords; every new keyword has a default."""
    release_model_keys = set(release_defaults("image_sample")) - {"clip_denoised", "num_samples", "batch_size", "use_ddim", "model_path"}
    for factory, keys in [
        (su.create_model_and_diffusion, release_model_keys),
        (su.sr_create_model_and_diffusion, set(su.sr_model_and_diffusion_defaults()) - NEW_FLAGS),
    ]:
        params = inspect.signature(factory).parameters
        assert keys <= set(params)
        assert all(params[k].default is not inspect.Parameter.empty for k in set(params) - keys)
    su.create_model_and_diffusion(**{**su.model_and_diffusion_defaults(), "num_channels": 32})


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
