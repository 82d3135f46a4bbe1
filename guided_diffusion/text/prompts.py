"""Sampling by prompt (scripts/text_sample.py; image_edit.py edits by prompt with the same pieces): the --prompt
flags and the prompts and their tokens per sample index, classifier-free guidance with the empty caption, a
text model's batch sampler (the caption encoded once per batch), GLIDE's upsampling stage, and prompts.txt and
prompts_grid.png beside the samples."""

import argparse
import dataclasses
import os

import numpy as np
import torch as th
from PIL import Image, ImageDraw, ImageFont

from .. import logger
from ..build import build_diffusion, build_text_unet
from ..config import DiffusionConfig, TextModelConfig
from ..errors import UsageError
from ..guidance import ClassifierFreeGuidance
from ..run_flags import checkpoint_flags, network_of
from ..sampling import draw, load_for_sampling
from ..samplers import sample
from .tokenizer import tokens_and_mask

GRID_PROMPTS = 32  # prompts_grid.png shows the first this many prompts...
GRID_PER_PROMPT = 8  # ...each with its first this many samples
GRID_CAPTION_CHARS = 100  # a longer prompt is cut (with "...") under its row


def split_prompts(argv):
    """(the --prompt values in order, the rest of argv for the typed configs): --prompt TEXT is repeatable, a
    script's own flag (the typed configs have no list flags)."""
    prompt_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    prompt_parser.add_argument("--prompt", action="append", default=[])
    known, rest = prompt_parser.parse_known_args(argv)
    return known.prompt, rest


def read_prompts(prompts, prompts_file):
    """The prompts of --prompt (a list, in order) or of --prompts_file (a UTF-8 file, one prompt a line, blank
    lines skipped); exactly one of the two. Raises UsageError naming the flag or the file and the fix."""
    if prompts and prompts_file:
        raise UsageError("pass --prompt or --prompts_file, not both")
    if not prompts and not prompts_file:
        raise UsageError('nothing to sample: pass --prompt "TEXT" (repeatable) or --prompts_file FILE')
    for prompt in prompts:
        if "\n" in prompt or "\r" in prompt:
            raise UsageError(f"--prompt {prompt!r} spans several lines: give each line as its own --prompt")
    if prompts:
        return list(prompts)
    if not os.path.isfile(prompts_file):
        raise UsageError(f"--prompts_file {prompts_file}: no such file; pass a UTF-8 text file, one prompt a line")
    try:
        with open(prompts_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise UsageError(f"--prompts_file {prompts_file}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UsageError(f"--prompts_file {prompts_file} holds no prompt: write one prompt a line")
    return lines


class PromptTokens:
    """P prompts as a text model reads them: tokens [P, text_ctx], mask [P, text_ctx]; sample i uses prompt
    i % P. warnings: one line per prompt longer than text_ctx tokens (it is cut to its first text_ctx)."""

    def __init__(self, prompts, text_ctx):
        self.prompts = list(prompts)
        self.tokens, self.mask, truncated = tokens_and_mask(self.prompts, text_ctx)
        self.warnings = [f"prompt {i} ({self.prompts[i]!r}) is longer than text_ctx {text_ctx} tokens: the model "
                         f"reads its first {text_ctx}" for i in truncated]

    def of(self, indices):
        """The prompts' text of sample indices: a list."""
        return [self.prompts[i % len(self.prompts)] for i in indices]

    def model_kwargs(self, indices, device):
        """{"tokens": [len(indices), text_ctx], "mask": [len(indices), text_ctx]} of sample indices."""
        rows = th.tensor([i % len(self.prompts) for i in indices], dtype=th.long)
        return {"tokens": self.tokens[rows].to(device), "mask": self.mask[rows].to(device)}


def caption_guidance(scale, text_ctx):
    """The guides of --guidance_scale W: classifier-free guidance with the empty caption (mask all False) as
    the unconditional branch; none at W = 1 (plain conditional sampling)."""
    if scale == 1:
        return ()
    tokens, mask, _ = tokens_and_mask([""], text_ctx)
    return (ClassifierFreeGuidance(scale, unconditional={"tokens": tokens[0], "mask": mask[0]}),)


def encoded_once(model, sample_fn):
    """sample_fn(), with the text model's encoding cached (cache_text_emb) for that call only: the transformer
    runs once, on the first forward (the doubled batch [captions; empty captions] under classifier-free
    guidance), and every later step reuses it."""
    previous, model.cache_text_emb = model.cache_text_emb, True
    model.del_cache()
    try:
        return sample_fn()
    finally:
        model.del_cache()
        model.cache_text_emb = previous


def prompt_sampler(diffusion, model, prompts, sample_shape, device, config, guidance=()):
    """sample_batch(batch: SeededBatch) -> x [len(batch), C, H, W] in [-1, 1]: sample i draws prompt i % P of
    `prompts` (PromptTokens) with the SampleConfig's sampler, the caption encoded once per batch.
    sample_shape: (C, H, W)."""
    def sample_batch(batch):
        model_kwargs = prompts.model_kwargs(batch.indices, device)
        return encoded_once(model, lambda: draw(diffusion, model, batch, (len(batch), *sample_shape), device, config,
                                                model_kwargs, guidance))

    return sample_batch


def upsampler_configs(path, respacing, log=False):
    """(TextModelConfig, DiffusionConfig respaced by `respacing`) of the super-resolution text model at
    `path` (--upsample_model_path), from the train_config.json beside it or, for GLIDE's released upsample.pt
    and upsample_inpaint.pt, from their shapes (run_flags; log: log what was recognised)."""
    found = checkpoint_flags(path, "upsample_model_path")
    if found is None or network_of(found.flags) is not TextModelConfig or not found.flags.get("super_res"):
        raise UsageError(f"--upsample_model_path {path} is not a super-resolution text model: pass a checkpoint of "
                         "a --super_res True text model's run (its train_config.json beside it) or GLIDE's "
                         "released upsample.pt")
    for line in found.notes if log else ():
        logger.log(line)
    configs = []
    for cls in (TextModelConfig, DiffusionConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        configs.append(cls(**{name: value for name, value in found.flags.items() if name in names}))
    return configs[0], dataclasses.replace(configs[1], timestep_respacing=respacing)


class Upsampler:
    """GLIDE's second stage: a super-resolution text model that upsamples each sample given its prompt's tokens,
    without guidance, DDIM with eta 0 on its own (respaced) diffusion, the starting noise scaled by `temp`."""

    def __init__(self, path, respacing, temp, device):
        model_config, diffusion_config = upsampler_configs(path, respacing, log=True)
        self.model = load_for_sampling(build_text_unet(model_config, diffusion_config.learn_sigma), path, device,
                                       "--upsample_model_path")
        self.diffusion = build_diffusion(diffusion_config)
        self.temp, self.device = temp, device
        self.shape = (model_config.image_channels, model_config.image_size, model_config.image_size)

    def __call__(self, batch, low_res, model_kwargs, progress=False):
        """x [len(batch), *self.shape] in [-1, 1] from low_res [len(batch), C, h, w] in [-1, 1] (quantised to 8
        bits first, as the saved base sample is) and the prompts' model_kwargs {"tokens", "mask"}; its noise
        continues each sample's stream of `batch`."""
        low_res = ((low_res + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
        shape = (len(batch), *self.shape)
        noise = batch.noise(shape, self.device) * self.temp
        return encoded_once(self.model, lambda: sample(
            self.diffusion, self.model, shape, sampler="ddim", eta=0.0, noise=noise, clip_denoised=True,
            model_kwargs=dict(model_kwargs, low_res=low_res), device=self.device, progress=progress,
            noise_fn=batch.noise_like))


def save_prompts(out_dir, prompts, num_samples):
    """out_dir/prompts.txt: line i holds sample i's prompt (as --prompts_file reads it back). Returns its path."""
    path = os.path.join(out_dir, "prompts.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(prompt + "\n" for prompt in prompts.of(range(num_samples)))
    return path


def save_prompt_grid(images, prompts, path, pad=2):
    """images: uint8 [N, H, W, 3], sample i of prompt i % P -> a PNG with one row per prompt (its first
    GRID_PER_PROMPT samples, the first GRID_PROMPTS prompts) and the prompt under its row in PIL's bitmap
    font; `pad` black pixels between the images."""
    n, h, w, _ = images.shape
    count = len(prompts.prompts)
    rows = min(count, n, GRID_PROMPTS)
    cols = min(GRID_PER_PROMPT, -(-n // count))
    font = ImageFont.load_default_imagefont()
    captions = [p if len(p) <= GRID_CAPTION_CHARS else p[:GRID_CAPTION_CHARS - 3] + "..." for p in prompts.prompts]
    boxes = [font.getbbox(caption) for caption in captions[:rows]]
    line = max(bottom for _, _, _, bottom in boxes) + pad
    width = max(cols * (w + pad) + pad, max(right for _, _, right, _ in boxes) + 2 * pad)
    grid = np.zeros((rows * (h + pad + line) + pad, width, 3), dtype=np.uint8)
    for p in range(rows):
        top = pad + p * (h + pad + line)
        for k, image in enumerate(images[p::count][:cols]):
            grid[top:top + h, pad + k * (w + pad):pad + k * (w + pad) + w] = image
    picture = Image.fromarray(grid)
    canvas = ImageDraw.Draw(picture)
    for p in range(rows):
        canvas.text((pad, pad + p * (h + pad + line) + h + pad), captions[p], fill=(255, 255, 255), font=font)
    picture.save(path)
    return path
