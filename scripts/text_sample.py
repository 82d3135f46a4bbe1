"""
Sample a text-conditional model (GLIDE's) by prompt: sample i draws prompt i % P of the P prompts, so the
same --seed and prompts give the same images whatever the batch size or the number of ranks. Writes to the
log dir samples_{N}x{H}x{W}x3.npz (arr_0 uint8, no labels) with samples_grid.png, prompts.txt (line i:
sample i's prompt) and prompts_grid.png (one row per prompt, the prompt under it).

    mpiexec -n 8 python scripts/text_sample.py --model_path run/ema_0.9999_100000.pt \\
        --prompt "a red dress" --prompt "a blue shirt" --guidance_scale 3 \\
        --sampler dpm++2m --timestep_respacing 25 --num_samples 64 --batch_size 16 --seed 0

--prompt TEXT is repeatable (text_sample.py's own flag: the typed config has no list flags); or pass
--prompts_file FILE. --guidance_scale W > 1 is classifier-free guidance with the empty caption as the
unconditional branch. --upsample_model_path adds GLIDE's second stage (a --super_res True text model).
--clip_model_path CLIP adds CLIP guidance toward the same prompts, with --guidance_scale or alone (docs/clip.md).
"""

import os
import sys

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.build import build_diffusion, build_text_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.clip.load import clip_prompts_of_flags
from guided_diffusion.config import ClipGuidanceConfig, DiffusionConfig, TextModelConfig, TextSampleConfig
from guided_diffusion.errors import UsageError, run
from guided_diffusion.text import prompts as text_prompts
from guided_diffusion.text.prompts import split_prompts

CONFIGS = (TextModelConfig, DiffusionConfig, TextSampleConfig, ClipGuidanceConfig)
PROMPT_HELP = 'a caption to sample; repeat the flag for more prompts (default: none, then --prompts_file)'


def create_argparser():
    parser = config_parser(__doc__, *CONFIGS)
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help=PROMPT_HELP)
    return parser


def check_models(model_config, run):
    """Refuse a base model that is not one (a super-resolution or inpainting text model)."""
    if model_config.super_res:
        raise UsageError(f"--model_path {run.model_path} holds a super-resolution text model: pass it as "
                         "--upsample_model_path, with a base model as --model_path")
    if model_config.inpaint:
        raise UsageError(f"--model_path {run.model_path} holds an inpainting text model: inpaint with it by "
                         "image_edit.py --task inpaint --method glide, or pass a base text model")


def check_upsampler_input(upsampler_config, base_size, path):
    """The upsampler was trained on low-resolution images of its small_size: the base model's samples."""
    if upsampler_config.small_size != base_size:
        raise UsageError(f"--upsample_model_path {path} upsamples {upsampler_config.small_size} px images (its "
                         f"small_size) but the base model samples {base_size} px ones: pass a base model of "
                         f"image_size {upsampler_config.small_size}, or an upsampler trained from {base_size} px")


def main(argv=None):
    prompt_flags, argv = split_prompts(sys.argv[1:] if argv is None else argv)
    found = {}  # the CLIP guidance the check makes

    def check(configs, log_dir):
        model_config, diffusion_config, run, clip_config = configs
        check_models(model_config, run)
        if run.upsample_model_path:
            upsampler_config, _ = text_prompts.upsampler_configs(run.upsample_model_path, run.upsample_respacing)
            check_upsampler_input(upsampler_config, model_config.image_size, run.upsample_model_path)
        texts = text_prompts.read_prompts(prompt_flags, run.prompts_file)
        shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
        guided = clip_config.clip_model_path or clip_config.clip_text_path  # the prompts alone are the captions
        found["clip"] = clip_prompts_of_flags(clip_config, texts, shape, diffusion_config) if guided else None
        return text_prompts.PromptTokens(texts, model_config.text_ctx).warnings

    model_config, diffusion_config, run, _ = sampling.start_sampling(create_argparser(), CONFIGS, argv, check)
    device = dist_util.dev()
    clip = found["clip"]
    prompts = text_prompts.PromptTokens(text_prompts.read_prompts(prompt_flags, run.prompts_file),
                                        model_config.text_ctx)

    logger.log("creating model and diffusion...")
    model = build_text_unet(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    sampling.load_for_sampling(model, run.model_path, device)
    guidance = text_prompts.caption_guidance(run.guidance_scale, model_config.text_ctx)
    sample_shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    base_shape = sample_shape
    clip_guides = clip.guides(diffusion, device) if clip is not None else lambda batch: ()

    def base_batch(batch):
        guides = (*guidance, *clip_guides(batch))
        return text_prompts.prompt_sampler(diffusion, model, prompts, base_shape, device, run, guides)(batch)

    upsampler = None
    if run.upsample_model_path:
        logger.log("creating the upsampler...")
        upsampler = text_prompts.Upsampler(run.upsample_model_path, run.upsample_respacing, run.upsample_temp, device)
        sample_shape = upsampler.shape

    def sample_batch(batch):
        x = base_batch(batch)
        if upsampler is not None:
            x = upsampler(batch, x, prompts.model_kwargs(batch.indices, device))
        return x, None

    if dist_util.get_rank() == 0:
        logger.log(f"prompts of the samples: {text_prompts.save_prompts(logger.get_dir(), prompts, run.num_samples)}")
    images = sampling.sample_and_save(sample_batch, run, sample_shape, device, with_labels=False)
    if images is not None:
        grid = text_prompts.save_prompt_grid(images, prompts, os.path.join(logger.get_dir(), "prompts_grid.png"))
        logger.log(f"one row per prompt: {grid}")


if __name__ == "__main__":
    run(main)
