"""scripts/text_sample.py: sampling a text model by prompt from --model_path alone (its train_config.json),
seeds independent of the batch size, classifier-free guidance with the empty caption, truncation warnings,
refusals, the caption encoded once per batch, and GLIDE's upsampling stage."""

import importlib.util

import numpy as np
import pytest
import torch as th
from PIL import Image

from _train_helpers import REPO, assert_same_uint8_images, run_script, write_run
from guided_diffusion.build import build_diffusion, build_text_unet
from guided_diffusion.config import DiffusionConfig, SampleConfig, TextModelConfig
from guided_diffusion.guidance import ClassifierFreeGuidance
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.sampling import draw
from guided_diffusion.text import prompts as text_prompts
from guided_diffusion.text.tokenizer import tokens_and_mask

TINY_TEXT = dict(image_size=16, xf_width=32, xf_layers=1, xf_heads=2, num_channels=32, num_res_blocks=1,
                 channel_mult="1,2", attention_resolutions="8", num_head_channels=16, text_ctx=8, dropout=0.0)
TINY_DIFFUSION = dict(learn_sigma=True, diffusion_steps=20, noise_schedule="cosine")
LONG_PROMPT = "a very long caption that the tiny model cannot read to its end"  # > 8 tokens
PROMPTS = ["a red shirt", LONG_PROMPT]
SAMPLE = dict(timestep_respacing=5, num_samples=5, seed=1)


def tiny_text_model(**changes):
    """(TextUNet, its configs) with random weights everywhere (the zero-initialised output layers too), so
    that the caption changes the output; the same weights in any test order."""
    model_config = TextModelConfig(**dict(TINY_TEXT, **changes))
    diffusion_config = DiffusionConfig(**TINY_DIFFUSION)
    th.manual_seed(0)  # the same initialisation whatever ran before
    model = build_text_unet(model_config, diffusion_config.learn_sigma)
    gen = th.Generator().manual_seed(0)
    with th.no_grad():
        for param in model.parameters():
            param.add_(th.randn(param.shape, generator=gen) * 0.05)
    return model.eval(), model_config, diffusion_config


def save_run(run_dir, **changes):
    """A tiny text model's checkpoint with a train_config.json beside it (train_setup.run_config's layout)."""
    return write_run(run_dir, *tiny_text_model(**changes))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("text_run") / "run")


def prompt_argv(prompts):
    return [token for prompt in prompts for token in ("--prompt", prompt)]


def sample_npz(log_dir, shape=(5, 16, 16, 3)):
    with np.load(log_dir / f"samples_{'x'.join(map(str, shape))}.npz") as data:
        assert list(data) == ["arr_0"] and data["arr_0"].dtype == np.uint8
        return data["arr_0"]


@pytest.fixture(scope="module")
def batched_run(text_run, tmp_path_factory):
    """The two prompts sampled in batches of 3 (5 samples): (log dir, CompletedProcess)."""
    log_dir = tmp_path_factory.mktemp("batch3")
    argv = ["--model_path", text_run, *prompt_argv(PROMPTS), "--batch_size", 3, *sum(([f"--{k}", v] for k, v in
                                                                                    SAMPLE.items()), [])]
    return log_dir, run_script("text_sample", argv, log_dir)


def sample_flags(**changes):
    return [token for k, v in dict(SAMPLE, **changes).items() for token in (f"--{k}", str(v))]


def test_outputs_have_the_right_shapes_and_the_long_prompt_is_warned_once(batched_run):
    log_dir, result = batched_run
    assert sample_npz(log_dir).shape == (5, 16, 16, 3)
    lines = (log_dir / "prompts.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [PROMPTS[i % 2] for i in range(5)]
    grid = np.asarray(Image.open(log_dir / "prompts_grid.png"))
    line = max(text_prompts.ImageFont.load_default_imagefont().getbbox(p)[3] for p in PROMPTS) + 2
    assert grid.shape[0] == 2 * (16 + 2 + line) + 2 and grid.shape[2] == 3
    assert np.array_equal(grid[2:18, 2:18], sample_npz(log_dir)[0])  # row 0: prompt 0's samples 0, 2, 4
    assert np.array_equal(grid[2:18, 20:36], sample_npz(log_dir)[2])
    assert grid[18 + 2:18 + line, :].any()  # the caption under the row
    output = result.stdout + result.stderr
    assert output.count("is longer than text_ctx 8 tokens") == 1 and repr(LONG_PROMPT) in output
    assert "xf_width=32" in output  # the flags came from train_config.json


def test_same_seed_same_images_whatever_the_batch_size(batched_run, text_run, tmp_path):
    log_dir, _ = batched_run
    run_script("text_sample", ["--model_path", text_run, *prompt_argv(PROMPTS), *sample_flags(batch_size=1)], tmp_path)
    assert_same_uint8_images(sample_npz(tmp_path), sample_npz(log_dir))


def test_prompts_file_with_guidance_scale_1_equals_plain_sampling(batched_run, text_run, tmp_path):
    log_dir, _ = batched_run
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")  # a trailing blank line is skipped
    argv = ["--model_path", text_run, "--prompts_file", prompts_file, "--guidance_scale", 1, *sample_flags(batch_size=3)]
    run_script("text_sample", argv, tmp_path / "out")
    assert np.array_equal(sample_npz(tmp_path / "out"), sample_npz(log_dir))


def test_guidance_scale_changes_the_images(batched_run, text_run, tmp_path):
    log_dir, _ = batched_run
    argv = ["--model_path", text_run, *prompt_argv(PROMPTS), "--guidance_scale", 4, *sample_flags(batch_size=3)]
    run_script("text_sample", argv, tmp_path)
    assert np.abs(sample_npz(tmp_path).astype(int) - sample_npz(log_dir)).mean() > 1


def write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make_argv, words", [
    (lambda tmp: [], "pass --prompt"),
    (lambda tmp: ["--prompt", "a", "--prompts_file", write_bytes(tmp / "p.txt", b"b\n")], "not both"),
    (lambda tmp: ["--prompts_file", tmp / "missing.txt"], "missing.txt: no such file"),
    (lambda tmp: ["--prompts_file", write_bytes(tmp / "empty.txt", b"\n  \n")], "empty.txt holds no prompt"),
    (lambda tmp: ["--prompts_file", write_bytes(tmp / "latin1.txt", "caf\xe9\n".encode("latin-1"))],
     "latin1.txt: not UTF-8"),
    (lambda tmp: ["--prompt", "two\nlines"], "spans several lines"),
])
def test_refusals_are_one_line_naming_the_fix(text_run, tmp_path, make_argv, words):
    argv = ["--model_path", text_run, "--num_samples", 1, *make_argv(tmp_path)]  # quick should one not be refused
    result = run_script("text_sample", argv, tmp_path / "log", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"text_sample.py: error: {result.stderr.split('error: ', 1)[1].strip()}"], result.stderr
    assert words in result.stderr and not (tmp_path / "log").exists()


def test_a_super_resolution_model_is_refused_as_the_base(tmp_path):
    path = save_run(tmp_path / "sr", super_res=True, image_size=32, attention_resolutions="16")
    result = run_script("text_sample", ["--model_path", path, "--prompt", "a"], tmp_path / "log", check=False)
    assert result.returncode == 2 and "pass it as --upsample_model_path" in result.stderr


def test_the_upsampler_stage_writes_its_size(text_run, tmp_path):
    upsampler = save_run(tmp_path / "sr", super_res=True, image_size=32, small_size=16, attention_resolutions="16")
    argv = ["--model_path", text_run, *prompt_argv(PROMPTS), "--upsample_model_path", upsampler,
            "--upsample_respacing", 3, *sample_flags(batch_size=3)]
    run_script("text_sample", argv, tmp_path / "out")
    run_script("text_sample", [*argv[:-2], "--batch_size", 1], tmp_path / "one")
    images = sample_npz(tmp_path / "out", (5, 32, 32, 3))
    # The upsampler's noise continues each sample's stream, so batching changes no draw; but a base pixel one
    # round-off apart may quantise to another level, which the random upsampler amplifies around that pixel.
    levels = np.abs(sample_npz(tmp_path / "one", (5, 32, 32, 3)).astype(int) - images)
    assert images.std() > 10 and (levels > 0).mean() < 0.01, (levels > 0).mean()
    refused = run_script("text_sample", [*argv[:4], "--upsample_model_path", text_run], tmp_path / "log", check=False)
    assert refused.returncode == 2 and "is not a super-resolution text model" in refused.stderr


def load_script():
    spec = importlib.util.spec_from_file_location("text_sample", REPO / "scripts" / "text_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompt_flags_are_taken_out_of_the_command_line():
    assert load_script().split_prompts(["--prompt", "a", "--seed", "3", "--prompt=b c", "--prompts_file", "f"]) == (
        ["a", "b c"], ["--seed", "3", "--prompts_file", "f"])


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_the_caption_is_encoded_once_per_batch(scale):
    model, model_config, diffusion_config = tiny_text_model()
    diffusion = build_diffusion(DiffusionConfig(**dict(TINY_DIFFUSION, timestep_respacing="5")))
    prompts = text_prompts.PromptTokens(PROMPTS, model_config.text_ctx)
    guidance = () if scale == 1 else (ClassifierFreeGuidance(scale, unconditional=empty_caption()),)
    calls = []
    model.transformer.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    sample_batch = text_prompts.prompt_sampler(diffusion, model, prompts, (3, 16, 16), "cpu",
                                               SampleConfig(progress=False), guidance)
    first = sample_batch(SeededBatch(0, range(0, 3)))
    second = sample_batch(SeededBatch(0, range(3, 5)))
    rows = 2 if guidance else 1
    assert calls == [3 * rows, 2 * rows]  # one encoding per batch, of the doubled batch under guidance
    assert not model.cache_text_emb  # the cache was for those batches only: without it, the same samples and
    # one encoding per step
    calls.clear()
    batch = SeededBatch(0, range(0, 3))
    uncached = draw(diffusion, model, batch, (3, 3, 16, 16), "cpu", SampleConfig(progress=False),
                    prompts.model_kwargs(batch.indices, "cpu"), guidance)
    assert th.allclose(uncached, first, atol=1e-5) and len(calls) == 5 and second.shape == (2, 3, 16, 16)


def empty_caption():
    tokens, mask, _ = tokens_and_mask([""], TINY_TEXT["text_ctx"])
    return {"tokens": tokens[0], "mask": mask[0]}


def test_classifier_free_guidance_at_scale_1_is_conditional_sampling():
    """The doubled batch [captions; empty captions] with the cache gives the conditional branch unchanged."""
    model, model_config, _ = tiny_text_model()
    diffusion = build_diffusion(DiffusionConfig(**dict(TINY_DIFFUSION, timestep_respacing="5")))
    prompts = text_prompts.PromptTokens(PROMPTS, model_config.text_ctx)
    config = SampleConfig(progress=False)
    plain, guided = (text_prompts.prompt_sampler(diffusion, model, prompts, (3, 16, 16), "cpu", config, guidance)(
        SeededBatch(0, range(3))) for guidance in ((), (ClassifierFreeGuidance(1.0, unconditional=empty_caption()),)))
    # equal up to float round-off (the doubled batch, the guide's score shift), tests/test_seeds.py's rule
    assert (plain - guided).abs().max() < 1e-3
