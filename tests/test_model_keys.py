"""Every released checkpoint's exact state-dict keys and shapes, built from its published flags."""

import argparse
import json
from pathlib import Path

import pytest
import torch as th

from guided_diffusion import script_util as su
from guided_diffusion.presets import PRESETS
from guided_diffusion.unet import EncoderUNetModel, SuperResModel, UNetModel

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
CONFIGS = sorted(p.stem[len("state_dict_") :] for p in REFERENCE.glob("state_dict_*.json") if "variants" not in p.stem)


def load_reference(name):
    return json.loads((REFERENCE / f"state_dict_{name}.json").read_text())


FACTORIES = {
    "UNetModel": (su.model_and_diffusion_defaults, su.create_model_and_diffusion),
    "SuperResModel": (su.sr_model_and_diffusion_defaults, su.sr_create_model_and_diffusion),
    "EncoderUNetModel": (su.classifier_and_diffusion_defaults, su.create_classifier_and_diffusion),
}


def parse_argv(model_class, argv):
    """{flag: value} of argv parsed as the matching script does (its flags and --preset)."""
    defaults = FACTORIES[model_class][0]()
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    return vars(su.parse_args(parser, argv))


def build_from_argv(model_class, argv):
    """Parse argv as the matching script does and build the model on the meta device."""
    defaults, factory = FACTORIES[model_class]
    flags = parse_argv(model_class, argv)
    with th.device("meta"):
        model, _ = factory(**{k: flags[k] for k in defaults()})
    return model


def key_shapes(model):
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def expected_key_shapes(ref):
    return [(e["key"], e["shape"]) for e in ref["state_dict"]]


def test_every_released_config_is_covered():
    assert set(CONFIGS) == set(PRESETS) and len(CONFIGS) == 12


@pytest.mark.parametrize("name", CONFIGS)
def test_released_flags_build_exact_state_dict(name):
    ref = load_reference(name)
    model = build_from_argv(ref["model_class"], ref["readme_flags"].split())
    assert type(model).__name__ == ref["model_class"]
    assert key_shapes(model) == expected_key_shapes(ref)  # same keys, same shapes, same order
    assert sum(v.numel() for v in model.state_dict().values()) == ref["total_params"]


@pytest.mark.parametrize("name", CONFIGS)
def test_preset_builds_exact_state_dict(name):
    ref = load_reference(name)
    model = build_from_argv(ref["model_class"], ["--preset", name])
    assert key_shapes(model) == expected_key_shapes(ref)
    # flag by flag, also those that change no shape (noise_schedule, use_new_attention_order, dropout,
    # num_heads, num_head_channels, learn_sigma, use_fp16, ...): the release's parsed values, typed
    flags = parse_argv(ref["model_class"], ["--preset", name])
    typed = lambda values: {k: (type(v).__name__, v) for k, v in values.items()}  # noqa: E731
    assert typed({k: flags[k] for k in ref["all_flags"]}) == typed(ref["all_flags"])
    # and every other flag (those beyond the release) as the README's command line leaves it
    assert flags == dict(parse_argv(ref["model_class"], ref["readme_flags"].split()), preset=name)


VARIANTS = json.loads((REFERENCE / "state_dict_variants.json").read_text())["variants"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_state_dicts(name):
    variant = VARIANTS[name]
    factory = {
        "guided_diffusion.script_util.create_model": su.create_model,
        "guided_diffusion.script_util.sr_create_model": su.sr_model,
        "guided_diffusion.unet.EncoderUNetModel": EncoderUNetModel,
    }[variant["constructor_call"]]
    with th.device("meta"):
        model = factory(**variant["kwargs"])
    assert key_shapes(model) == expected_key_shapes(variant)


def test_released_state_dict_loads_strictly():
    """A state dict with the released keys (here: a tiny variant's, filled) loads with strict=True."""
    variant = VARIANTS["tiny_unet_resblock_updown"]
    model = su.create_model(**variant["kwargs"])
    state = {e["key"]: th.randn(e["shape"]) for e in variant["state_dict"]}
    model.load_state_dict(state, strict=True)
    assert th.equal(model.state_dict()["out.2.weight"], state["out.2.weight"])


@pytest.mark.parametrize("name, model_class", [("adm256_cond", UNetModel), ("upsampler64_256", SuperResModel)])
def test_class_dropout_adds_only_the_null_row(name, model_class):
    """Without --class_dropout_prob a released configuration keeps its exact keys; with it, only
    label_emb grows by one row (the null class)."""
    ref = load_reference(name)
    # the fixture lists the shape-relevant keywords but resblock_updown; SuperResModel doubles in_channels itself
    kwargs = dict(ref["constructor"], in_channels=3, resblock_updown=True)
    with th.device("meta"):
        released = model_class(**kwargs, class_dropout_prob=0.0)
        guided = model_class(**kwargs, class_dropout_prob=0.1)
    assert key_shapes(released) == expected_key_shapes(ref)
    classes, width = dict(expected_key_shapes(ref))["label_emb.weight"]
    expected = [(k, [classes + 1, width] if k == "label_emb.weight" else shape) for k, shape in expected_key_shapes(ref)]
    assert key_shapes(guided) == expected
    assert released.null_class is None and guided.null_class == classes == 1000
