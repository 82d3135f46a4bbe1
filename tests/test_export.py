"""Exports: a .safetensors checkpoint loads as the .pt one did, and a diffusers folder computes what the
project computes: every released architecture at small width gives the same outputs in diffusers'
UNet2DModel, and a 10-step DDIM loop with diffusers' DDIMScheduler gives the project's ddim samples."""

import dataclasses
import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch as th
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from guided_diffusion import samplers
from guided_diffusion.build import CHANNEL_MULTS, build_classifier, build_diffusion, build_super_res, build_unet
from guided_diffusion.checkpoint import CheckpointFileError, load_checkpoint, write_safetensors
from _train_helpers import to_argv
from guided_diffusion.config import (ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig, as_flags,
                                     split_flags)
from guided_diffusion.export_diffusers import ExportError, export, qkv_rows, refuse_foreign_state_dict, unet_weights
from guided_diffusion.presets import PRESETS
from guided_diffusion.unet import UNetModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]

SHRINK = 4  # image size / 4 (attention stays at the same levels), 32 base channels, 16 per head, a block less


def small(preset, **overrides):
    """The flags of a released preset at a small width and size, with its structural flags kept: attention
    order and levels, the head rule (a head size or a head count), updown, AdaGN, learned sigma, classes."""
    flags = dict(PRESETS[preset])
    size = flags["image_size"]
    flags.update(
        image_size=size // SHRINK, num_channels=32, num_res_blocks=flags["num_res_blocks"] - 1, num_classes=10,
        use_fp16=False,
        channel_mult=",".join(map(str, CHANNEL_MULTS[size])),
        attention_resolutions=",".join(str(int(r) // SHRINK) for r in flags["attention_resolutions"].split(",")),
    )  # fmt: skip
    if flags.get("num_head_channels", -1) != -1:
        flags["num_head_channels"] = 16
    flags.update(overrides)
    return split_flags(flags, ModelConfig, DiffusionConfig)


TINY_CLASSIFIER = ClassifierConfig(image_size=16, classifier_width=32, classifier_channel_mult="1,2",
                                   classifier_attention_resolutions="8")


def export_script(argv, capsys):
    """Run scripts/export.py with argv in this process -> (exit code, stderr)."""
    saved = sys.argv
    sys.argv = ["export.py", *map(str, argv)]
    try:
        runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="__main__")
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        sys.argv = saved
    return code, capsys.readouterr().err


def random_unet(model_config, diffusion_config, seed=0):
    """build_unet with every weight perturbed (the zero-initialised output layers too), in eval mode; the same
    weights whatever ran before (the initialisation's draws are seeded too)."""
    th.manual_seed(seed)
    model = build_unet(model_config, diffusion_config.learn_sigma).eval()
    gen = th.Generator().manual_seed(seed)
    with th.no_grad():
        for param in model.parameters():
            param.add_(0.05 * th.randn(param.shape, generator=gen))
    return model


def exported(model, diffusion_config, out_dir):
    export(model, diffusion_config, str(out_dir))
    return UNet2DModel.from_pretrained(str(out_dir), subfolder="unet", low_cpu_mem_usage=False).eval()


EXPRESSIBLE = {
    "adm64_cond": {},  # new attention order, 16 channels per head, cosine schedule
    "adm256_cond": {},  # legacy order
    "adm256_uncond": {},
    "lsun256": {},
    # The flags no release combines: plain resblocks and resampling layers, greyscale, a null class,
    # no learned sigma, and both head-count rules diffusers can express.
    "adm256_uncond, one head per block, plain": dict(
        num_head_channels=-1, num_heads=1, use_scale_shift_norm=False, resblock_updown=False, image_channels=1,
        class_cond=True, class_dropout_prob=0.1, learn_sigma=False, predict_xstart=True),
    "adm128_cond, 2 heads over equal widths": dict(num_heads=2, attention_resolutions="4", channel_mult="1,1,2,2"),
}


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_diffusers_unet_computes_the_same_outputs(tmp_path, name):
    model_config, diffusion_config = small(name.split(",")[0], **EXPRESSIBLE[name])
    model = random_unet(model_config, diffusion_config)
    unet = exported(model, diffusion_config, tmp_path)
    assert sorted(unet.state_dict()) == sorted(unet_weights(model))
    gen = th.Generator().manual_seed(1)
    x = th.randn(2, model_config.image_channels, model_config.image_size, model_config.image_size, generator=gen)
    t = th.tensor([3, 917])
    y = th.tensor([7, model_config.num_classes if model_config.class_dropout_prob else 2])  # the null class too
    kwargs = {"y": y} if model_config.class_cond else {}
    with th.no_grad():
        ours = model(x, t, **kwargs)
        theirs = unet(x, t, class_labels=kwargs.get("y")).sample
    assert ours.shape == theirs.shape == (2, model.out_channels, *x.shape[2:])
    assert ours.abs().max() > 0.1  # the outputs are not trivially equal
    assert (ours - theirs).abs().max() <= 1e-4


def test_qkv_rows_follow_both_layouts():
    # 2 heads of 2 channels: legacy rows are [h0: q q k k v v][h1: q q k k v v], new rows [q: h0 h0 h1 h1][k ...][v ...].
    assert qkv_rows("legacy", 2, 2).tolist() == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert qkv_rows("new", 2, 2).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def refused_models():
    """(builder, message pattern) of each model UNet2DModel cannot express."""
    def preset(name, **overrides):
        return lambda: build_unet(*small(name, **overrides)[:1])
    return {
        "adm128_cond": (preset("adm128_cond"), r"fixed head count over attention blocks of different widths \(64, 96, 128"),
        "adm512_cond": (preset("adm512_cond", num_channels=64), r"channel_mult starts with 0.5, not 1: .*timestep embedding"),
        "upsampler64_256": (lambda: build_super_res(SuperResConfig(large_size=64, num_channels=32, channel_mult="1,2")),
                            "super-resolution model takes a low-resolution image"),
        "classifier64": (lambda: build_classifier(TINY_CLASSIFIER), r"classifier \(EncoderUNetModel\) has no diffusers counterpart"),
        "resblock_rescale": (preset("adm256_uncond", resblock_rescale=True), "--resblock_rescale True divides"),
        "1-D": (lambda: UNetModel(16, 3, 32, 3, 1, (), channel_mult=(1,), dims=1), "only 2-D models"),
    }


@pytest.mark.parametrize("name", refused_models())
def test_what_unet2dmodel_cannot_express_is_refused_with_the_reason(tmp_path, name):
    build, pattern = refused_models()[name]
    with pytest.raises(ExportError, match=pattern):
        export(build(), DiffusionConfig(), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_state_dicts_of_a_classifier_or_an_upsampler_are_refused_before_building():
    classifier = build_classifier(TINY_CLASSIFIER).state_dict()
    with pytest.raises(ExportError, match="classifier"):
        refuse_foreign_state_dict(classifier, image_channels=3)
    upsampler = build_super_res(SuperResConfig(large_size=16, num_channels=32, channel_mult="1,2", image_channels=1))
    with pytest.raises(ExportError, match="super-resolution"):
        refuse_foreign_state_dict(upsampler.state_dict(), image_channels=1)
    refuse_foreign_state_dict(build_unet(ModelConfig(image_size=16, num_channels=32, channel_mult="1,2",
                                                     attention_resolutions="8", image_channels=1), True).state_dict(), 1)


def test_timesteps_rescaled_to_1000_are_refused_for_other_step_counts(tmp_path):
    model_config, _ = small("adm64_cond")
    with pytest.raises(ExportError, match="--rescale_timesteps True with --diffusion_steps 250"):
        export(build_unet(model_config), DiffusionConfig(rescale_timesteps=True, diffusion_steps=250), str(tmp_path))


@pytest.mark.parametrize(
    "preset, overrides, clip",
    [("adm64_cond", {}, True), ("lsun256", dict(learn_sigma=False, predict_xstart=True, image_size=32, attention_resolutions="4,2,1"), False)],
)
def test_diffusers_ddim_loop_equals_the_projects_ddim(tmp_path, preset, overrides, clip):
    model_config, diffusion_config = small(preset, **overrides)
    model = random_unet(model_config, diffusion_config, seed=2)
    unet = exported(model, diffusion_config, tmp_path)
    scheduler = DDPMScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")
    assert scheduler.config.variance_type == ("learned_range" if diffusion_config.learn_sigma else "fixed_large")
    assert scheduler.config.prediction_type == ("sample" if diffusion_config.predict_xstart else "epsilon")
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=clip)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == list(range(900, -1, -100))

    channels, size = model_config.image_channels, model_config.image_size
    noise = th.randn(2, channels, size, size, generator=th.Generator().manual_seed(3))
    y = th.tensor([1, 8]) if model_config.class_cond else None
    x = noise
    with th.no_grad():
        for t in ddim.timesteps:
            out = unet(x, t, class_labels=y).sample[:, :channels]  # without the learned variance
            x = ddim.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    ours = samplers.sample(
        build_diffusion(dataclasses.replace(diffusion_config, timestep_respacing="ddim10")),
        model, noise.shape, sampler="ddim", noise=noise, clip_denoised=clip,
        model_kwargs={"y": y} if y is not None else None,
    )  # fmt: skip
    assert x.abs().max() > 0.1
    # diffusers computes its schedule in float32, this project in float64, and an unclipped x_0 model's eps
    # divides by sqrt(1 - alpha_bar): the loops agree to 1e-5 of the samples' range with clipping, 2.5e-5
    # without (measured under four kernel sets); an off-by-one timestep is off by 1e-2
    assert (ours - x).abs().max() <= 1e-4 * x.abs().max()


def test_scheduler_betas_are_the_projects(tmp_path):
    for schedule in ("linear", "cosine"):
        config = DiffusionConfig(noise_schedule=schedule, diffusion_steps=400)
        export(build_unet(small("adm64_cond")[0]), config, str(tmp_path / schedule))
        scheduler = DDPMScheduler.from_pretrained(str(tmp_path / schedule), subfolder="scheduler")
        diffusion = build_diffusion(config)
        assert th.equal(scheduler.betas, th.tensor(diffusion.betas, dtype=th.float32))
        assert th.allclose(scheduler.alphas_cumprod.double(), th.from_numpy(diffusion.alphas_cumprod), rtol=1e-4, atol=0)


def test_safetensors_checkpoint_loads_like_the_pt(tmp_path, capsys):
    model_config, diffusion_config = small("adm64_cond")
    model = random_unet(model_config, diffusion_config)
    th.save(model.state_dict(), tmp_path / "ema.pt")
    assert export_script(["--model_path", tmp_path / "ema.pt", "--out", tmp_path / "ema.safetensors"], capsys) == (0, "")
    shutil.copy(tmp_path / "ema.safetensors", tmp_path / "renamed.pt")  # told apart by the content too
    for name in ("ema.safetensors", "renamed.pt"):
        loaded = load_checkpoint(build_unet(model_config, True), str(tmp_path / name))
        assert all(th.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[:-10], "is truncated or damaged"),
        (lambda data: b"not a tensor file at all", "is not a safetensors file"),
    ],
)
def test_unreadable_safetensors_file_names_the_problem(tmp_path, content, reason):
    path = tmp_path / "model.safetensors"
    write_safetensors(build_unet(small("adm64_cond")[0]).state_dict(), str(path))
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(CheckpointFileError, match=reason):
        load_checkpoint(build_unet(small("adm64_cond")[0]), str(path))


def test_export_script_writes_a_diffusers_folder_and_refuses_a_classifier(tmp_path, capsys):
    model_config, diffusion_config = small("lsun256")
    model = random_unet(model_config, diffusion_config)
    th.save(model.state_dict(), tmp_path / "model.pt")
    flags = to_argv(as_flags(model_config, diffusion_config))
    argv = ["--to", "diffusers", "--model_path", tmp_path / "model.pt", "--out", tmp_path / "dir", *flags]
    assert export_script(argv, capsys) == (0, "")
    assert json.loads((tmp_path / "dir" / "unet" / "config.json").read_text())["attention_head_dim"] == 16
    unet = UNet2DModel.from_pretrained(str(tmp_path / "dir"), subfolder="unet", low_cpu_mem_usage=False)
    assert all(th.equal(unet.state_dict()[k], v) for k, v in unet_weights(model).items())

    classifier = build_classifier(TINY_CLASSIFIER)
    th.save(classifier.state_dict(), tmp_path / "classifier.pt")
    code, stderr = export_script(["--to", "diffusers", "--model_path", tmp_path / "classifier.pt",
                                  "--out", tmp_path / "refused"], capsys)  # fmt: skip
    assert code == 2
    assert stderr.strip().splitlines() == [
        "export.py: error: the noisy-image classifier (EncoderUNetModel) has no diffusers counterpart: UNet2DModel "
        "is a denoiser with an image-shaped output (export the classifier with --to safetensors instead)"
    ]
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--to", "safetensors", "--out", "x.safetensors"], "give the checkpoint to convert with --model_path"),
        (["--to", "safetensors", "--model_path", "{pt}", "--out", "{dir}/x.pt"], "must end in .safetensors"),
        (["--to", "safetensors", "--model_path", "{pt}", "--out", "{dir}/kept.safetensors"], "exists; choose a new file"),
        (["--to", "diffusers", "--model_path", "{pt}", "--out", "{dir}"], "exists and is not an empty folder"),
    ],
)
def test_export_script_overwrites_nothing_and_says_what_to_give(tmp_path, capsys, argv, message):
    (tmp_path / "kept.safetensors").write_bytes(b"kept")
    th.save({"w": th.ones(1)}, tmp_path / "model.pt")
    argv = [a.format(pt=tmp_path / "model.pt", dir=tmp_path) for a in argv]
    code, stderr = export_script(argv, capsys)
    assert code == 2 and stderr.startswith("export.py: error: ") and message in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors", "model.pt"]
    assert (tmp_path / "kept.safetensors").read_bytes() == b"kept"


def test_export_script_takes_the_flags_from_the_run_of_the_checkpoint(tmp_path, capsys):
    from guided_diffusion.config import TrainConfig
    from guided_diffusion.train_setup import run_config

    model_config, diffusion_config = small("adm64_cond")
    model = random_unet(model_config, diffusion_config)
    th.save(model.state_dict(), tmp_path / "ema_0.9999_000010.pt")
    (tmp_path / "train_config.json").write_text(
        json.dumps(run_config((model_config, diffusion_config), TrainConfig(), [])))
    argv = ["--to", "diffusers", "--model_path", tmp_path / "ema_0.9999_000010.pt", "--out", tmp_path / "dir"]
    assert export_script(argv, capsys)[0] == 0  # no model flag on the command line
    config = json.loads((tmp_path / "dir" / "unet" / "config.json").read_text())
    assert config["sample_size"] == model_config.image_size and config["num_class_embeds"] == model_config.num_classes
