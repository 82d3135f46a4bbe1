"""
Generate a large batch of image samples from a model and save them as a large numpy array
(samples_{N}x{H}x{W}x3.npz in the log dir, with samples_grid.png beside it). This can be used to
produce samples for FID evaluation.

    mpiexec -n 8 python scripts/image_sample.py --preset adm64_cond --model_path 64x64_diffusion.pt \
        --timestep_respacing 250 --num_samples 50000 --batch_size 64 --seed 0
"""

import argparse

import torch.distributed as dist

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
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
    if class_labels and not args.class_cond:
        raise ValueError("--class_labels needs a class-conditional model (--class_cond True)")

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(
        **args_to_dict(args, model_and_diffusion_defaults().keys())
    )
    sampling.load_for_sampling(model, args.model_path, args.use_fp16, device)
    sample_shape = (3, args.image_size, args.image_size)

    def sample_batch(batch):
        model_kwargs = {}
        if args.class_cond:
            model_kwargs["y"] = batch.labels(args.num_classes, class_labels).to(device)
        x = sampling.denoise(
            diffusion, model, batch, (len(batch), *sample_shape), device, args.use_ddim,
            args.clip_denoised, model_kwargs, progress=args.progress and dist.get_rank() == 0,
        )
        return x, model_kwargs.get("y")

    sampling.sample_and_save(sample_batch, args, sample_shape, device, with_labels=args.class_cond)


def create_argparser():
    defaults = dict(
        clip_denoised=True,
        num_samples=10000,
        batch_size=16,
        use_ddim=False,
        model_path="",
    )
    defaults.update(model_and_diffusion_defaults())
    defaults.update(sampling.sampling_defaults(), class_labels="")
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
