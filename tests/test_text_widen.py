"""Starting GLIDE's inpainting and super-resolution text models from a base model's weights, as GLIDE did: the
input layer widened for the new inputs with zero weights (checkpoint.widen_input_channels), so that at step 0
the variant computes the base model's function; run_flags accepting only --inpaint / --super_res turned on over a
base model's --init_checkpoint; the refusals (narrowing, another variant, any other flag)."""

import dataclasses
import json
import re

import pytest
import torch as th

from _train_helpers import run_script
from guided_diffusion import run_flags
from guided_diffusion.build import build_text_unet
from guided_diffusion.checkpoint import INPUT_LAYER, CheckpointMismatchError, widen_input_channels
from guided_diffusion.cli import parse_flags
from guided_diffusion.config import DiffusionConfig, TextModelConfig, split_flags
from guided_diffusion.errors import UsageError
from test_run_flags import glide_shapes, save_shapes
from test_text_train import TEXT_CTX, TINY_TEXT, write_captioned
from test_text_variants import SIZE, load_text_train, save_base

VARIANTS = {"inpaint": dict(inpaint=True), "super_res": dict(super_res=True, small_size=8),
            "both": dict(inpaint=True, super_res=True, small_size=4)}


def tiny_base():
    """A tiny base text model with random weights everywhere (the zero-initialised output layer too, so that
    its output depends on every input), in eval mode."""
    config = split_flags(TINY_TEXT, TextModelConfig, DiffusionConfig)[0]
    base = build_text_unet(config)
    gen = th.Generator().manual_seed(0)
    with th.no_grad():
        for param in base.parameters():
            param.add_(th.randn(param.shape, generator=gen) * 0.05)
    return config, base.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_widened_variant_computes_the_base_models_function(variant):
    config, base = tiny_base()
    model = build_text_unet(dataclasses.replace(config, **VARIANTS[variant])).eval()
    weights = base.state_dict()
    widened = widen_input_channels(weights, model)
    model.load_state_dict(widened)  # strict: every key, every shape
    extra = {"inpaint": 4, "super_res": 3, "both": 7}[variant]  # known image 3 and mask 1; low_res 3
    assert widened[INPUT_LAYER].shape[1] == 3 + extra
    assert th.equal(widened[INPUT_LAYER][:, :3], weights[INPUT_LAYER]) and not widened[INPUT_LAYER][:, 3:].any()
    assert all(th.equal(widened[key], weights[key]) for key in weights if key != INPUT_LAYER)

    gen = th.Generator().manual_seed(1)
    x, t = th.randn(2, 3, SIZE, SIZE, generator=gen), th.tensor([3, 17])
    tokens = th.randint(0, 50000, (2, TEXT_CTX), generator=gen)
    mask = th.arange(TEXT_CTX)[None] < th.tensor([[3], [TEXT_CTX]])
    with th.no_grad():
        expected = base(x, t, tokens=tokens, mask=mask)
        assert expected.std() > 1e-3  # not a trivial function (the base's output layer is not zero)
        for scale in (1.0, 50.0):  # any new inputs: the base model's output to the bit
            known = (th.rand(2, 1, SIZE, SIZE, generator=gen) > 0.5).float()
            extras = dict(inpaint_image=th.randn(2, 3, SIZE, SIZE, generator=gen) * scale * known,
                          inpaint_mask=known) if model.inpaint else {}
            if model.super_res:
                small = VARIANTS[variant]["small_size"]
                extras["low_res"] = th.randn(2, 3, small, small, generator=gen) * scale
            assert th.equal(model(x, t, tokens=tokens, mask=mask, **extras), expected)


def test_only_a_base_models_input_layer_is_widened_and_narrowing_is_refused():
    config, base = tiny_base()
    inpainting = build_text_unet(dataclasses.replace(config, inpaint=True))
    own = inpainting.state_dict()
    assert widen_input_channels(own, inpainting) is own  # fine-tuning a variant: as it is
    weights = base.state_dict()
    assert widen_input_channels(weights, base) is weights
    upsampler = build_text_unet(dataclasses.replace(config, inpaint=True, super_res=True, small_size=4))
    assert widen_input_channels(own, upsampler) is own  # not a base model's: load_checkpoint names the flags
    with pytest.raises(CheckpointMismatchError) as refused:
        widen_input_channels(own, base, source="inpaint.pt")
    message = str(refused.value)
    assert "\n" not in message and re.fullmatch(
        r"inpaint.pt takes 7 input channels, this text model 3: .* give the checkpoint's --inpaint / --super_res "
        r"to fine-tune it, or start from a base model's checkpoint", message), message


def resolve_train(argv):
    """text_train.py's configs and log lines for argv (run_flags)."""
    text_train = load_text_train()
    values, origins = parse_flags(text_train.create_argparser(), [*map(str, argv), "--data_dir", "d"])
    return run_flags.resolve_configs(values, origins, text_train.CONFIGS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_base_runs_init_checkpoint_takes_the_variant_flags_and_says_so(tmp_path, variant):
    base = save_base(tmp_path / "base", SIZE)
    argv = ["--init_checkpoint", base] + [a for k, v in VARIANTS[variant].items() for a in (f"--{k}", v)]
    (model, _, _), lines = resolve_train(argv)
    network = {k: v for k, v in TINY_TEXT.items() if k not in ("diffusion_steps", "noise_schedule")}
    assert {k: getattr(model, k) for k in network} == network  # the base run's own flags
    assert {k: getattr(model, k) for k in VARIANTS[variant]} == VARIANTS[variant]
    flags = " and ".join(f"--{k} True" for k in ("inpaint", "super_res") if k in VARIANTS[variant])
    assert (f"--init_checkpoint {base} holds a base model: its input layer is widened for the inputs of {flags}, "
            "with zero weights") in lines


def test_glides_base_starts_its_inpainting_model(tmp_path):
    base = save_shapes(glide_shapes("base"), tmp_path / "base.pt")
    (model, diffusion, _), _ = resolve_train(["--init_checkpoint", base, "--inpaint", "True"])
    glide_inpaint = run_flags.glide_flags(run_flags.GLIDE_MODELS["base-inpaint"])
    assert model == split_flags(glide_inpaint, TextModelConfig, DiffusionConfig)[0]
    with th.device("meta"):  # no memory for its 385M parameters
        inpainting = build_text_unet(model, diffusion.learn_sigma)
        weights = {key: th.empty(shape) for key, shape in glide_shapes("base").items()}
    widened = widen_input_channels(weights, inpainting)
    release, _ = run_flags.recognise({key: tuple(value.shape) for key, value in widened.items()}, "tuned.pt")
    assert release.file == "base_inpaint.pt"  # exactly the keys and shapes of GLIDE's inpainting model


@pytest.mark.parametrize("kind, argv, refusal", [
    ("inpaint", ["--inpaint", "False"], r"--inpaint False with --init_checkpoint .*model000000.pt \(inpaint True, "
                                        r"super_res False\): .*; leave --inpaint out to fine-tune the checkpoint's own "
                                        r"model, or start from a base model's checkpoint"),
    ("inpaint", ["--super_res", "True", "--small_size", "8"], r"--super_res True with --init_checkpoint "),
    ("base", ["--inpaint", "True", "--num_channels", "64"], r"--num_channels 64 contradicts the checkpoint \(32, "),
    ("base", ["--super_res", "True", "--image_size", "32"], r"--image_size 32 contradicts the checkpoint \(16, "),
    ("resume", ["--inpaint", "True"], r"--inpaint True contradicts the checkpoint \(False, "),
], ids=["narrowing", "other_variant", "other_flag", "image_size", "resume"])
def test_everything_else_is_refused_as_before(tmp_path, kind, argv, refusal):
    path = save_base(tmp_path / "run", SIZE, **({"inpaint": True} if kind == "inpaint" else {}))
    checkpoint = "--resume_checkpoint" if kind == "resume" else "--init_checkpoint"
    with pytest.raises(UsageError, match="^" + refusal):
        resolve_train([checkpoint, path, *argv])


@pytest.mark.slow
def test_text_train_starts_an_inpainting_model_from_a_base_run(tmp_path):
    data = write_captioned(tmp_path / "data")
    base = save_base(tmp_path / "base", SIZE)
    flags = dict(data_dir=data, batch_size=2, max_steps=1, save_interval=1, lr=0.0, init_checkpoint=base)
    run_script("text_train", dict(flags, inpaint=True), tmp_path / "tuned")
    log = (tmp_path / "tuned" / "log.txt").read_text()
    assert "holds a base model: its input layer is widened for the inputs of --inpaint True" in log
    assert "input layer widened from 3 to 7 input channels, the new ones' weights zero" in log
    assert json.loads((tmp_path / "tuned" / "train_config.json").read_text())["model_flags"]["inpaint"] is True
    tuned, weights = (th.load(path, weights_only=True) for path in (tmp_path / "tuned" / "model000001.pt", base))
    assert tuned.keys() == weights.keys()  # lr 0: the step keeps the widened weights
    assert th.equal(tuned[INPUT_LAYER][:, :3], weights[INPUT_LAYER]) and not tuned[INPUT_LAYER][:, 3:].any()
    assert all(th.equal(tuned[key], weights[key]) for key in weights if key != INPUT_LAYER)

    inpainting = save_base(tmp_path / "inpainting", SIZE, inpaint=True)
    refused = run_script("text_train", dict(flags, inpaint=False, init_checkpoint=inpainting), tmp_path / "log",
                         check=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert lines[0].startswith("text_train.py: error: --inpaint False with --init_checkpoint ")
    assert not (tmp_path / "log").exists()
