"""
Approximate the bits/dimension of images under a model: the whole variational bound (prior term
plus one term per timestep) of --num_samples images of --data_dir, split over the ranks.

Logs the mean total bpd and its parts, and writes {vb,mse,xstart_mse}_terms.npz to the log dir:
`terms` [num_samples, T], one row per image, one column per timestep (the mean over rows is the
per-timestep curve).

    mpiexec -n 8 python scripts/image_nll.py --preset adm64_cond --model_path 64x64_diffusion.pt \
        --data_dir imagenet64_val --num_samples 1000
"""

import argparse
import math
import os

import numpy as np
import torch as th
import torch.distributed as dist

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    parse_args,
)

PER_TIMESTEP_TERMS = ("vb", "mse", "xstart_mse")
PER_IMAGE_TERMS = ("total_bpd", "prior_bpd")


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    device = dist_util.dev()
    rank, world_size = sampling.rank_and_world_size()

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(
        **args_to_dict(args, model_and_diffusion_defaults().keys())
    )
    sampling.load_for_sampling(model, args.model_path, args.use_fp16, device)
    seed = sampling.resolve_seed(args.seed)
    th.manual_seed(seed * world_size + rank)  # the noise of q_sample inside calc_bpd_loop

    logger.log("creating data loader...")
    data = load_data(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=args.image_size,
        class_cond=args.class_cond,
        deterministic=True,
        random_flip=False,
    )

    logger.log(f"evaluating {args.num_samples} images with --seed {seed}...")
    local_count = len(sampling.shard_range(args.num_samples, rank, world_size))
    local = evaluate_bpd(model, diffusion, data, local_count, args.clip_denoised, device,
                         progress=args.progress and rank == 0)
    max_rows = math.ceil(args.num_samples / world_size)
    terms = {
        name: th.cat(sampling.all_gather_rows(values.to(device), max_rows)).cpu().numpy()
        for name, values in local.items()
    }
    if rank == 0:
        for name in PER_TIMESTEP_TERMS:
            np.savez(os.path.join(logger.get_dir(), f"{name}_terms.npz"), terms=terms[name])
        logger.log(
            f"bpd={terms['total_bpd'].mean():.4f} (prior {terms['prior_bpd'].mean():.4f} + "
            f"vb {terms['vb'].sum(axis=1).mean():.4f}) mse={terms['mse'].mean():.4f} "
            f"xstart_mse={terms['xstart_mse'].mean():.4f} over {len(terms['total_bpd'])} images"
        )
    dist.barrier()
    logger.log("evaluation complete")


def evaluate_bpd(model, diffusion, data, count, clip_denoised, device, progress=False):
    """
    Runs diffusion.calc_bpd_loop over the next `count` images of `data` (truncating the last
    batch). Returns {"total_bpd", "prior_bpd": [count]; "vb", "mse", "xstart_mse": [count, T]}.
    """
    rows = {name: [] for name in PER_IMAGE_TERMS + PER_TIMESTEP_TERMS}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count, desc="images (rank 0)", unit="img")
    done = 0
    while done < count:
        batch, model_kwargs = next(data)
        take = min(len(batch), count - done)
        batch = batch[:take].to(device)
        model_kwargs = {k: v[:take].to(device) for k, v in model_kwargs.items()}
        metrics = diffusion.calc_bpd_loop(model, batch, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        for name, values in rows.items():
            values.append(metrics[name].float().cpu())
        done += take
        if bar is not None:
            bar.update(take)
            bar.set_postfix(bpd=f"{th.cat(rows['total_bpd']).mean():.4f}")
    if bar is not None:
        bar.close()
    empty = {name: th.zeros(0) if name in PER_IMAGE_TERMS else th.zeros(0, diffusion.num_timesteps) for name in rows}
    return {name: th.cat(values) if values else empty[name] for name, values in rows.items()}


def create_argparser():
    defaults = dict(
        data_dir="",
        clip_denoised=True,
        num_samples=1000,
        batch_size=1,
        model_path="",
    )
    defaults.update(model_and_diffusion_defaults())
    defaults.update(sampling.sampling_defaults())
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
