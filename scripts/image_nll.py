"""
Approximate the bits/dimension of images under a model: the whole variational bound (prior term
plus one term per timestep) of --num_samples images of --data_dir, split over the ranks.

Logs the mean total bpd and its parts, and writes {vb,mse,xstart_mse}_terms.npz to the log dir:
`terms` [num_samples, T], one row per image, one column per timestep (the mean over rows is the
per-timestep curve).

    mpiexec -n 8 python scripts/image_nll.py --preset adm64_cond --model_path 64x64_diffusion.pt \\
        --data_dir imagenet64_val --num_samples 1000
"""

import os

import numpy as np
import torch as th
import torch.distributed as dist

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import DiffusionConfig, ModelConfig, NllConfig
from guided_diffusion.errors import run
from guided_diffusion.image_datasets import load_data
from guided_diffusion.sample_seeds import resolve_seed, shard_range

PER_TIMESTEP_TERMS = ("vb", "mse", "xstart_mse")
PER_IMAGE_TERMS = ("total_bpd", "prior_bpd")
CONFIGS = (ModelConfig, DiffusionConfig, NllConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, run = sampling.start_sampling(create_argparser(), CONFIGS)
    device = dist_util.dev()
    rank, world_size = dist_util.get_rank(), dist_util.get_world_size()

    logger.log("creating model and diffusion...")
    model = build_unet(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    sampling.load_for_sampling(model, run.model_path, device)
    seed = resolve_seed(run.seed)
    th.manual_seed(seed * world_size + rank)  # the noise of q_sample inside calc_bpd_loop

    logger.log("creating data loader...")
    data = load_data(data_dir=run.data_dir, batch_size=run.batch_size, image_size=model_config.image_size,
                     class_cond=model_config.class_cond, deterministic=True, random_flip=False,
                     image_channels=model_config.image_channels)

    logger.log(f"evaluating {run.num_samples} images with --seed {seed}...")
    local = evaluate_bpd(model, diffusion, data, len(shard_range(run.num_samples, rank, world_size)),
                         run.clip_denoised, device, progress=run.progress and rank == 0)
    gathered = {name: th.cat(dist_util.all_gather_rows(values.to(device))).cpu().numpy()
                for name, values in local.items()}
    if rank == 0:
        write_terms(gathered, logger.get_dir())
    if dist.is_initialized():
        dist.barrier()
    logger.log("evaluation complete")


def write_terms(terms, out_dir):
    """Saves the per-timestep terms as {name}_terms.npz and logs the mean bpd and its parts."""
    for name in PER_TIMESTEP_TERMS:
        np.savez(os.path.join(out_dir, f"{name}_terms.npz"), terms=terms[name])
    logger.log(
        f"bpd={terms['total_bpd'].mean():.4f} (prior {terms['prior_bpd'].mean():.4f} + "
        f"vb {terms['vb'].sum(axis=1).mean():.4f}) mse={terms['mse'].mean():.4f} "
        f"xstart_mse={terms['xstart_mse'].mean():.4f} over {len(terms['total_bpd'])} images"
    )


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


if __name__ == "__main__":
    run(main)
