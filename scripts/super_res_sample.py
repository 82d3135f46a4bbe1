"""
Generate a large batch of samples from a super resolution model, given a batch of samples from a
regular model (--base_samples: the samples_{N}x{h}x{w}x3.npz that image_sample.py wrote).
Writes samples_{N}x{H}x{W}x3.npz (H = W = --large_size) and samples_grid.png to the log dir.

    mpiexec -n 8 python scripts/super_res_sample.py --preset upsampler64_256 \
        --model_path 64_256_upsampler.pt --base_samples samples_50000x64x64x3.npz \
        --timestep_respacing 250 --num_samples 50000 --batch_size 16
"""

import argparse

import torch.distributed as dist

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    parse_args,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    device = dist_util.dev()

    logger.log("loading data...")
    base = sampling.load_base_samples(args.base_samples, args.small_size, args.class_cond)
    if len(base) < args.num_samples:
        logger.log(f"{args.base_samples} holds {len(base)} images: sample i upsamples image i % {len(base)}")

    logger.log("creating model...")
    model, diffusion = sr_create_model_and_diffusion(
        **args_to_dict(args, sr_model_and_diffusion_defaults().keys())
    )
    sampling.load_for_sampling(model, args.model_path, args.use_fp16, device)
    sample_shape = (3, args.large_size, args.large_size)

    def sample_batch(batch):
        model_kwargs = {"low_res": base.low_res(batch.indices, device)}
        if args.class_cond:
            model_kwargs["y"] = base.labels_for(batch.indices, device)
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
        base_samples="",
        model_path="",
    )
    defaults.update(sr_model_and_diffusion_defaults())
    defaults.update(sampling.sampling_defaults())
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
