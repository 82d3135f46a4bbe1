"""
Generate a large batch of image samples from a model and save them as a large numpy array
(samples_{N}x{H}x{W}x3.npz in the log dir, with samples_grid.png beside it). This can be used to
produce samples for FID evaluation.

    mpiexec -n 8 python scripts/image_sample.py --preset adm64_cond --model_path 64x64_diffusion.pt \\
        --timestep_respacing 250 --num_samples 50000 --batch_size 64 --seed 0

A model trained with --class_dropout_prob > 0 samples with classifier-free guidance at
--guidance_scale W > 1; --sampler dpm++2m --timestep_respacing 20 is a fast deterministic sampler.
A distilled model (consistency_train.py) samples with --sampler consistency in N evaluations:
--timestep_respacing N (its default levels, e.g. 2) or at:T1,T2,... (those original timesteps).

--clip_model_path CLIP with --prompt TEXT (repeatable; or --prompts_file) steers sample i toward prompt i % P by
CLIP guidance (docs/clip.md), e.g. OpenAI's ViT-B-32.pt guiding the unconditional 256 px model:

    python scripts/image_sample.py --model_path 256x256_diffusion_uncond.pt --timestep_respacing 100 \\
        --clip_model_path ViT-B-32.pt --prompt "a lighthouse" --clip_scale 1000 --clip_cutouts 16
"""

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.clip.load import start_sampling_with_clip, with_prompt_flag
from guided_diffusion.config import ClassSampleConfig, ClipSampleConfig, DiffusionConfig, ModelConfig
from guided_diffusion.errors import run
from guided_diffusion.sample_seeds import parse_class_labels

CONFIGS = (ModelConfig, DiffusionConfig, ClassSampleConfig, ClipSampleConfig)


def create_argparser():
    return with_prompt_flag(config_parser(__doc__, *CONFIGS))


def main(argv=None):
    (model_config, diffusion_config, run, _), clip = start_sampling_with_clip(create_argparser(), CONFIGS, argv)
    device = dist_util.dev()
    class_labels = parse_class_labels(run.class_labels, model_config.num_classes)
    if class_labels and not model_config.class_cond:
        raise ValueError("--class_labels needs a class-conditional model (--class_cond True)")

    logger.log("creating model and diffusion...")
    model = build_unet(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    guidance = sampling.free_guidance(run.guidance_scale, model)
    sampling.load_for_sampling(model, run.model_path, device)
    sample_shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    clip_guides = clip.guides(diffusion, device) if clip is not None else lambda batch: ()

    def sample_batch(batch):
        model_kwargs = {}
        if model_config.class_cond:
            model_kwargs["y"] = batch.labels(model_config.num_classes, class_labels).to(device)
        x = sampling.draw(diffusion, model, batch, (len(batch), *sample_shape), device, run, model_kwargs,
                          (*guidance, *clip_guides(batch)))
        return x, model_kwargs.get("y")

    if clip is not None and dist_util.get_rank() == 0:
        clip.write_prompts(logger.get_dir(), run.num_samples)
    images = sampling.sample_and_save(sample_batch, run, sample_shape, device, with_labels=model_config.class_cond)
    if clip is not None and images is not None:
        clip.write_grid(logger.get_dir(), images)


if __name__ == "__main__":
    run(main)
