"""
Like image_sample.py, but use a noisy image classifier to guide the sampling process towards more
realistic images (classifier guidance, Dhariwal & Nichol 2021): at every step the gradient of
log p(y | x_t, t), times --classifier_scale, shifts the mean (DDPM) or the score (every other --sampler,
--sampler consistency's x_0 estimate among them).

    mpiexec -n 8 python scripts/classifier_sample.py --preset adm128_cond,classifier128 \\
        --model_path 128x128_diffusion.pt --classifier_path 128x128_classifier.pt \\
        --classifier_scale 0.5 --timestep_respacing 250 --num_samples 50000 --batch_size 32

With a model trained with --class_dropout_prob > 0, --guidance_scale W adds classifier-free guidance.
--clip_model_path CLIP with --prompt TEXT (repeatable; or --prompts_file) adds CLIP guidance toward prompt i % P
for sample i (docs/clip.md).
"""

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.build import build_classifier, build_diffusion, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.clip.load import start_sampling_with_clip, with_prompt_flag
from guided_diffusion.config import (ClassifierConfig, ClassifierSampleConfig, ClipSampleConfig, DiffusionConfig,
                                     ModelConfig)
from guided_diffusion.errors import run
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.sample_seeds import parse_class_labels

CONFIGS = (ModelConfig, DiffusionConfig, ClassifierConfig, ClassifierSampleConfig, ClipSampleConfig)


def create_argparser():
    return with_prompt_flag(config_parser(__doc__, *CONFIGS))


def main(argv=None):
    configs, clip = start_sampling_with_clip(create_argparser(), CONFIGS, argv)
    model_config, diffusion_config, classifier_config, run, _ = configs
    device = dist_util.dev()
    class_labels = parse_class_labels(run.class_labels, model_config.num_classes)

    logger.log("creating model and diffusion...")
    model = build_unet(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    free_guidance = sampling.free_guidance(run.guidance_scale, model)
    sampling.load_for_sampling(model, run.model_path, device)

    logger.log("loading classifier...")
    classifier = build_classifier(classifier_config)
    sampling.load_for_sampling(classifier, run.classifier_path, device, flag="--classifier_path")
    guidance = (ClassifierGuidance(classifier, run.classifier_scale), *free_guidance)

    def model_fn(x, t, y=None, **kwargs):
        return model(x, t, y if model_config.class_cond else None, **kwargs)

    sample_shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    clip_guides = clip.guides(diffusion, device) if clip is not None else lambda batch: ()

    def sample_batch(batch):
        model_kwargs = {"y": batch.labels(model_config.num_classes, class_labels).to(device)}
        x = sampling.draw(diffusion, model_fn, batch, (len(batch), *sample_shape), device, run, model_kwargs,
                          (*guidance, *clip_guides(batch)))
        return x, model_kwargs["y"]

    if clip is not None and dist_util.get_rank() == 0:
        clip.write_prompts(logger.get_dir(), run.num_samples)
    images = sampling.sample_and_save(sample_batch, run, sample_shape, device, with_labels=True)
    if clip is not None and images is not None:
        clip.write_grid(logger.get_dir(), images)


if __name__ == "__main__":
    run(main)
