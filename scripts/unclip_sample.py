"""
Sample DALL-E 2's decoder (unclip_train.py's) from CLIP image embeddings, encoded by the CLIP it was trained with
(its --clip_model_path, from the run's flags; another path is accepted only for the same image encoder).

--image_variations FOLDER: --variations_per_image samples of each image in FOLDER (sorted, as training lists
them), sample i of image i // V; variations_grid.png has one row per image, the input in the first column.
--interpolate A B: --steps samples along the slerp of A's and B's unit embeddings, sample k at a = k / (steps - 1),
all from the same noise, so only the embedding moves; interpolation_grid.png is A, the samples, B.
--guidance_scale W > 1: classifier-free guidance with the zero embedding as the unconditional branch.
--prompt TEXT (repeatable; or --prompts_file): --num_samples samples of the decoder's unconditional branch (the zero
embedding, what embedding dropout trained) steered toward prompt i % P by CLIP guidance (docs/clip.md;
--clip_guidance, --clip_scale, ...), by the decoder's CLIP or another --clip_model_path; prompts.txt and
prompts_grid.png as text_sample.py writes them. Writes the log dir's samples_{N}x{H}x{W}x3.npz (arr_0 uint8) and
samples_grid.png, as image_sample.py.

    python scripts/unclip_sample.py --model_path run/ema_0.9999_100000.pt --image_variations inputs/ \\
        --variations_per_image 4 --guidance_scale 3 --sampler dpm++2m --timestep_respacing 25 --seed 0
    python scripts/unclip_sample.py --model_path run/ema_0.9999_100000.pt --interpolate a.png b.png --steps 8
    python scripts/unclip_sample.py --model_path run/ema_0.9999_100000.pt --prompt "a red coat" --num_samples 16
"""

import dataclasses
import os
import sys

import torch as th

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.build import build_diffusion, build_unclip_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.clip.load import clip_prompts_of_flags, with_prompt_flag
from guided_diffusion.config import ClipSampleConfig, DiffusionConfig, UnCLIPModelConfig, UnCLIPSampleConfig
from guided_diffusion.errors import UsageError, run
from guided_diffusion.image_datasets import list_image_files
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.text.prompts import split_prompts
from guided_diffusion.unclip import sampling as unclip_sampling
from guided_diffusion.unclip.embeddings import (check_decoder_clip, embed_files, load_clip_for_embeddings,
                                               read_clip_images)

CONFIGS = (UnCLIPModelConfig, DiffusionConfig, UnCLIPSampleConfig, ClipSampleConfig)


def create_argparser():
    parser = with_prompt_flag(config_parser(__doc__, *CONFIGS))
    parser.add_argument("--interpolate", nargs=2, default=None, metavar=("A", "B"),
                        help="two image files: --steps samples along the slerp of their embeddings (default: none)")
    return parser


def input_files(run, interpolate, prompted=False):
    """The input images: FOLDER's (--image_variations), [A, B] (--interpolate) or none (prompted: --prompt or
    --prompts_file); one of the three, checked."""
    if bool(run.image_variations) + bool(interpolate) + prompted != 1:
        raise UsageError("give one of --image_variations FOLDER, --interpolate A B or --prompt TEXT")
    if prompted:
        if run.guidance_scale != 1:
            raise UsageError(f"--guidance_scale {run.guidance_scale} guides toward an embedding, and --prompt samples "
                             "the zero embedding steered by CLIP guidance: leave --guidance_scale out (use "
                             "--clip_scale)")
        return []
    if interpolate:
        missing = [path for path in interpolate if not os.path.isfile(path)]
        if missing:
            raise UsageError(f"--interpolate: {missing[0]} is not a file: give two image files")
        if run.steps < 2:
            raise UsageError(f"--steps {run.steps}: an interpolation needs both ends, pass --steps 2 or more")
        return list(interpolate)
    if not os.path.isdir(run.image_variations) or not list_image_files(run.image_variations):
        raise UsageError(f"--image_variations {run.image_variations} is not a folder of images: give one")
    if run.variations_per_image < 1:
        raise UsageError(f"--variations_per_image {run.variations_per_image}: pass 1 or more")
    return list_image_files(run.image_variations)


def main(argv=None):
    prompt_flags, argv = split_prompts(sys.argv[1:] if argv is None else argv)
    parser = create_argparser()
    interpolate = parser.parse_known_args(argv)[0].interpolate
    found = {}

    def check(configs, log_dir):
        model_config, diffusion_config, run, clip_config = configs
        prompted = bool(prompt_flags or clip_config.prompts_file)
        input_files(run, interpolate, prompted)
        if prompted:  # the guide may be any CLIP: the decoder samples the zero embedding
            shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
            found["prompts"] = clip_prompts_of_flags(clip_config, prompt_flags, shape, diffusion_config,
                                                     clip_config.prompts_file)
            return []
        found["clip"] = load_clip_for_embeddings(model_config.clip_model_path)
        return check_decoder_clip(run.model_path, model_config.clip_model_path, found["clip"])

    model_config, diffusion_config, run, _ = sampling.start_sampling(parser, CONFIGS, argv, check)
    device = dist_util.dev()
    prompts = found.get("prompts")
    files = input_files(run, interpolate, prompts is not None)
    same_noise = False
    if prompts is not None:
        embeddings = th.zeros(run.num_samples, model_config.clip_emb_dim)
    else:
        embeddings = th.from_numpy(embed_files(found["clip"].to(device), files, run.batch_size, device))
        if interpolate:
            embeddings, same_noise = unclip_sampling.interpolation(embeddings[0], embeddings[1], run.steps), True
        else:
            embeddings = unclip_sampling.variations(embeddings, run.variations_per_image)
        run = dataclasses.replace(run, num_samples=len(embeddings))

    logger.log("creating model and diffusion...")
    model = build_unclip_unet(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    sampling.load_for_sampling(model, run.model_path, device)
    guidance = unclip_sampling.decoder_guidance(run.guidance_scale, model)
    sample_shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    clip_guides = prompts.guides(diffusion, device) if prompts is not None else lambda batch: ()

    def sample_batch(batch):
        model_kwargs = dict(clip_emb=embeddings[list(batch.indices)].to(device),
                            **unclip_sampling.caption_kwargs(model, len(batch), device))
        seeds = SeededBatch(batch.seed, [0] * len(batch)) if same_noise else batch
        return sampling.draw(diffusion, model, seeds, (len(batch), *sample_shape), device, run, model_kwargs,
                             (*guidance, *clip_guides(batch))), None

    if prompts is not None and dist_util.get_rank() == 0:
        prompts.write_prompts(logger.get_dir(), run.num_samples)
    images = sampling.sample_and_save(sample_batch, run, sample_shape, device, with_labels=False)
    if prompts is not None and images is not None:
        prompts.write_grid(logger.get_dir(), images)
    elif images is not None:
        inputs = read_clip_images(files, model_config.image_size)
        if interpolate:
            rows = [[inputs[0], *images, inputs[1]]]
            name = "interpolation_grid.png"
        else:
            per = run.variations_per_image
            rows = [[inputs[i], *images[i * per:(i + 1) * per]] for i in range(len(files))]
            name = "variations_grid.png"
        logger.log(f"grid: {unclip_sampling.save_rows(rows, os.path.join(logger.get_dir(), name))}")


if __name__ == "__main__":
    run(main)
