"""
Like image_sample.py, but use a noisy image classifier to guide the sampling process towards more
realistic images (classifier guidance, Dhariwal & Nichol 2021): at every step the gradient of
log p(y | x_t, t), times --classifier_scale, shifts the mean (DDPM) or the score (DDIM).

    mpiexec -n 8 python scripts/classifier_sample.py --preset adm128_cond,classifier128 \
        --model_path 128x128_diffusion.pt --classifier_path 128x128_classifier.pt \
        --classifier_scale 0.5 --timestep_respacing 250 --num_samples 50000 --batch_size 32
"""

import argparse

import torch.distributed as dist

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    parse_args,
)


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    device = dist_util.dev()
    class_labels = sampling.parse_class_labels(args.class_labels, args.num_classes)

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(
        **args_to_dict(args, model_and_diffusion_defaults().keys())
    )
    sampling.load_for_sampling(model, args.model_path, args.use_fp16, device)

    logger.log("loading classifier...")
    classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
    sampling.load_for_sampling(
        classifier, args.classifier_path, args.classifier_use_fp16, device, flag="--classifier_path"
    )
    cond_fn = sampling.classifier_cond_fn(classifier, args.classifier_scale)

    def model_fn(x, t, y=None):
        return model(x, t, y if args.class_cond else None)

    sample_shape = (3, args.image_size, args.image_size)

    def sample_batch(batch):
        model_kwargs = {"y": batch.labels(args.num_classes, class_labels).to(device)}
        x = sampling.denoise(
            diffusion, model_fn, batch, (len(batch), *sample_shape), device, args.use_ddim,
            args.clip_denoised, model_kwargs, cond_fn=cond_fn,
            progress=args.progress and dist.get_rank() == 0,
        )
        return x, model_kwargs["y"]

    sampling.sample_and_save(sample_batch, args, sample_shape, device, with_labels=True)


def create_argparser():
    defaults = dict(
        clip_denoised=True,
        num_samples=10000,
        batch_size=16,
        use_ddim=False,
        model_path="",
        classifier_path="",
        classifier_scale=1.0,
    )
    defaults.update(model_and_diffusion_defaults())
    defaults.update(classifier_defaults())
    defaults.update(sampling.sampling_defaults(), class_labels="")
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
