"""Editing by prompt (scripts/image_edit.py with a text model) on tiny text models of random weights: GLIDE's
inpainting with an inpainting text model (the known pixels and the mask as its inputs, in both branches of
classifier-free guidance, and in every x_0, so the output keeps them exactly), RePaint, DPS and SDEdit with a
base text model toward --prompt or --prompts_file, the empty caption without a prompt, the network read from
the checkpoint, and the refusals."""

import json

import numpy as np
import pytest
import torch as th

from _train_helpers import run_script
from guided_diffusion import editing
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.config import DiffusionConfig, EditConfig, ModelConfig, TextModelConfig, as_flags
from guided_diffusion.editing import run as edit_run
from guided_diffusion.editing.operators import box_mask
from guided_diffusion.text.prompts import caption_guidance
from guided_diffusion.text.tokenizer import tokens_and_mask
from test_text_sample import TINY_DIFFUSION, TINY_TEXT, save_run, tiny_text_model

NUM_INPUTS = 3
PROMPTS = ["a red shirt", "a blue dress"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOLE = (slice(4, 12), slice(4, 12))  # --mask box at 16 px: the central 8x8 is unknown


def save_plain_run(run_dir):
    """A tiny diffusion model without text or classes (random weights), its train_config.json beside it."""
    model_config = ModelConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                               attention_resolutions="8")
    diffusion_config = DiffusionConfig(diffusion_steps=20)
    run_dir.mkdir()
    th.save(build_unet(model_config, diffusion_config.learn_sigma).state_dict(), run_dir / "model000000.pt")
    (run_dir / "train_config.json").write_text(json.dumps({"train_flags": as_flags(model_config, diffusion_config)}))
    return run_dir / "model000000.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"base", "inpaint", "super_res": tiny text models' checkpoints, "plain": a diffusion model's without
    text, each with its train_config.json; "input": an npz of NUM_INPUTS RGB 16x16 images, "images": those
    images uint8 [N, 16, 16, 3]}."""
    root = tmp_path_factory.mktemp("text_edit")
    images = np.random.default_rng(0).integers(0, 256, (NUM_INPUTS, 16, 16, 3), dtype=np.uint8)
    np.savez(root / "inputs.npz", images)
    return {"base": save_run(root / "base"), "inpaint": save_run(root / "inpaint", inpaint=True),
            "super_res": save_run(root / "sr", super_res=True, image_size=32, small_size=16, attention_resolutions="16"),
            "plain": save_plain_run(root / "plain"), "input": root / "inputs.npz", "images": images}


def edit(runs, log_dir, model="base", prompts=(), check=True, **flags):
    """image_edit.py on runs[model] and the inputs, 4 steps, seed 1; returns (its edited uint8 images, the run)."""
    argv = ["--model_path", runs[model], "--input", runs["input"], "--timestep_respacing", 4, "--seed", 1,
            *[token for prompt in prompts for token in ("--prompt", prompt)],
            *[token for name, value in flags.items() for token in (f"--{name}", value)]]
    result = run_script("image_edit", argv, log_dir, check=check)
    if result.returncode:
        return None, result
    with np.load(log_dir / f"edited_{NUM_INPUTS}x16x16x3.npz") as data:
        return data["arr_0"], result


def known_levels(edited, images):
    """The largest difference in uint8 levels over the known pixels, and the mean over the hole."""
    known = np.ones((16, 16), bool)
    known[HOLE] = False
    difference = np.abs(edited.astype(int) - images.astype(int))
    return difference[:, known].max(), difference[:, ~known].mean()


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {}), ("dpm++2m", {}), ("heun", {}),
                                             ("ddim", dict(dynamic_threshold=1.0))])
def test_glide_inpainting_feeds_the_known_pixels_and_keeps_them_in_every_x0(sampler, options):
    model, model_config, _ = tiny_text_model(inpaint=True)
    diffusion = build_diffusion(DiffusionConfig(**dict(TINY_DIFFUSION, timestep_respacing="4")))
    gen = th.Generator().manual_seed(0)
    x = th.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    mask = box_mask(16)
    tokens, token_mask, _ = tokens_and_mask(PROMPTS, model_config.text_ctx)
    calls = []

    def recording(x_t, t, **model_kwargs):
        calls.append(model_kwargs)
        return model(x_t, t, **model_kwargs)

    with th.no_grad():
        out = editing.glide_inpaint(diffusion, recording, x.shape, mask * x, mask, sampler=sampler,
                                    model_kwargs={"tokens": tokens, "mask": token_mask},
                                    guidance=caption_guidance(3.0, model_config.text_ctx),
                                    noise_fn=lambda like: th.randn(like.shape, generator=gen), device="cpu",
                                    **options)
    known = mask.bool().expand_as(x)
    assert (out[known] - x[known]).abs().max() < 1e-5  # exactly the known pixels, up to float round-off
    assert (out[~known] - x[~known]).abs().mean() > 0.1
    for kwargs in calls:  # both branches of the guidance: [captions; empty captions], the same known image
        assert th.equal(kwargs["inpaint_image"], th.cat([mask * x] * 2))
        assert th.equal(kwargs["inpaint_mask"], mask.expand(4, 1, 16, 16))
        assert not kwargs["mask"][2:].any() and th.equal(kwargs["tokens"][:2], tokens)


GLIDE = dict(task="inpaint", method="glide", guidance_scale=3, sampler="dpm++2m", batch_size=2)


@pytest.fixture(scope="module")
def glide_run(runs, tmp_path_factory):
    """(log dir, edited images, output) of GLIDE's inpainting toward PROMPTS[0] under guidance."""
    log_dir = tmp_path_factory.mktemp("glide") / "red"
    edited, result = edit(runs, log_dir, "inpaint", PROMPTS[:1], **GLIDE)
    return log_dir, edited, result.stdout + result.stderr


def test_glide_inpainting_by_prompt_keeps_the_known_pixels_through_the_script(runs, glide_run):
    log_dir, edited, output = glide_run
    worst, hole = known_levels(edited, runs["images"])
    assert worst <= 1 and hole > 5  # the known pixels up to uint8 rounding; the hole redrawn
    metrics = json.loads((log_dir / "metrics.json").read_text())
    assert metrics["method"] == "glide" and metrics["consistency"] < 0.01
    assert (log_dir / "prompts.txt").read_text().splitlines() == PROMPTS[:1] * NUM_INPUTS
    assert "inpaint=True" in output  # the text model's flags from its train_config.json


def test_glide_inpainting_fills_the_hole_after_the_prompt(runs, glide_run, tmp_path):
    other, _ = edit(runs, tmp_path, "inpaint", PROMPTS[1:], **GLIDE)
    assert known_levels(other, glide_run[1])[1] > 1


@pytest.mark.parametrize("task, flags", [
    ("inpaint", dict(method="repaint", jump_length=2, resamplings=2, guidance_scale=3)),
    ("inpaint", dict(method="dps", zeta=1)),
    ("super_res", dict(method="dps", zeta=1, sampler="ddim")),
    ("sdedit", dict(strength=0.7, guidance_scale=3)),
])
def test_a_base_text_model_edits_toward_the_prompt(runs, tmp_path, task, flags):
    red, _ = edit(runs, tmp_path / "red", prompts=PROMPTS[:1], task=task, **flags)
    blue, _ = edit(runs, tmp_path / "blue", prompts=PROMPTS[1:], task=task, **flags)
    assert np.abs(red.astype(int) - blue).mean() > 1  # the caption reaches the model
    if flags.get("method") == "repaint":
        assert known_levels(red, runs["images"])[0] <= 1


def same_up_to_round_off(a, b):
    """uint8 images of the same per-input streams in batches of other captions: at most a level apart."""
    return a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 1


def test_input_i_gets_prompt_i_mod_p_of_the_prompts(runs, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")  # a blank line is skipped
    both, _ = edit(runs, tmp_path / "file", prompts_file=prompts_file, task="sdedit", strength=0.7)
    assert (tmp_path / "file" / "prompts.txt").read_text().splitlines() == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    red, _ = edit(runs, tmp_path / "red", prompts=PROMPTS[:1], task="sdedit", strength=0.7)
    blue, _ = edit(runs, tmp_path / "blue", prompts=PROMPTS[1:], task="sdedit", strength=0.7)
    assert same_up_to_round_off(both[[0, 2]], red[[0, 2]]) and same_up_to_round_off(both[1], blue[1])
    assert not same_up_to_round_off(both[1], red[1])


def test_a_text_model_without_a_prompt_edits_with_the_empty_caption(runs, tmp_path):
    none, _ = edit(runs, tmp_path / "none", task="sdedit", strength=0.7)
    empty, _ = edit(runs, tmp_path / "empty", prompts=[""], task="sdedit", strength=0.7)
    assert np.array_equal(none, empty) and not (tmp_path / "none" / "prompts.txt").exists()


@pytest.mark.parametrize("model, prompts, flags, words", [
    ("plain", PROMPTS[:1], dict(task="sdedit"), "--prompt and --prompts_file need a text-conditional model"),
    ("base", PROMPTS[:1], dict(method="glide"), "--method glide needs an inpainting text model"),
    ("plain", (), dict(method="glide"), "--method glide needs an inpainting text model"),
    ("inpaint", PROMPTS[:1], dict(method="dps"), "holds an inpainting text model, which needs its known image"),
    ("inpaint", PROMPTS[:1], dict(task="sdedit"), "give --task inpaint --method glide"),
    ("base", (), dict(task="sdedit", guidance_scale=3), "--guidance_scale 3.0 guides toward a prompt"),
    ("super_res", PROMPTS[:1], dict(task="sdedit"), "holds a super-resolution text model"),
    ("inpaint", PROMPTS[:1], dict(task="deblur", method="glide"), "--method glide inpaints; --task deblur takes"),
])
def test_nonsense_is_refused_in_one_line_before_anything_is_written(runs, tmp_path, model, prompts, flags, words):
    _, result = edit(runs, tmp_path / "log", model, prompts, check=False, **flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "log").exists()


def test_the_network_comes_from_the_checkpoint_or_else_from_the_command_line(runs, tmp_path):
    foreign = tmp_path / "foreign.pt"  # neither a train_config.json nor a released file's shapes
    th.save({"weight": th.zeros(2)}, foreign)
    assert edit_run.edit_network(["--model_path", str(runs["base"])]) is TextModelConfig
    assert edit_run.edit_network(["--model_path", str(runs["inpaint"]), "--xf_width", "8"]) is TextModelConfig
    for argv, prompts, network in [
        ([], (), ModelConfig),
        ([], PROMPTS[:1], TextModelConfig),
        (["--prompts_file", "p.txt"], (), TextModelConfig),
        (["--xf_width=32"], (), TextModelConfig),
        (["--inpaint", "True"], (), TextModelConfig),
        (["--num_channels", "32"], (), ModelConfig),
    ]:
        assert edit_run.edit_network(["--model_path", str(foreign), *argv], prompts) is network, argv
    assert edit_run.edit_network(["--model_path", str(tmp_path / "missing.pt")]) is ModelConfig  # start_run's error


def test_edit_prompts_are_the_prompts_or_the_empty_caption_per_input():
    config = TextModelConfig(**TINY_TEXT)
    tokens = edit_run.edit_prompts(PROMPTS, EditConfig(task="sdedit"), config)
    assert tokens.of(range(3)) == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    empty = edit_run.edit_prompts([], EditConfig(task="sdedit"), config)
    assert empty.prompts == [""] and not empty.model_kwargs([0, 1], "cpu")["mask"].any()
    assert edit_run.edit_prompts([], EditConfig(), ModelConfig()) is None
