"""The sampling scripts' run: load the model, draw every sample index with all ranks busy, gather the
images in index order on rank 0 and save them (seeds: sample_seeds.py; files: sample_io.py)."""

import dataclasses
import math

import torch as th
import torch.distributed as dist

from . import dist_util, logger
from .checkpoint import load_checkpoint
from .config import DiffusionConfig, SamplerConfig
from .guidance import ClassifierFreeGuidance, GuidanceScaleInput
from .respace import consistency_respacing
from .run_flags import start_run
from .sample_io import save_samples, to_uint8_nhwc
from .sample_seeds import SeededBatch, resolve_seed, shard_range
from .samplers import SAMPLERS, resolve_sampler, sample


def start_sampling(parser, config_classes, argv=None, before_writing=None):
    """run_flags.start_run: the configs of the command line (argv: sys.argv[1:] when None), the flags of
    the checkpoints it names filled from their runs, the sampler options and --timestep_respacing checked,
    then the script's own before_writing(configs, log_dir) -> [warning] checks; the processes and the log
    dir set up. The DiffusionConfig returned has the timestep_respacing the sampler reads (sampler_respacing)."""
    def check(configs, log_dir):
        for_sampler(configs)  # a sampler option or a respacing the sampler does not take stops the run here
        return before_writing(configs, log_dir) if before_writing else []

    return for_sampler(start_run(parser, config_classes, argv, before_writing=check))


def sampler_respacing(sampler, respacing):
    """The timestep_respacing to build `sampler`'s diffusion with, for --timestep_respacing `respacing`: as
    given, but --sampler consistency reads N and at:T1,T2,... as its evaluations (consistency_respacing)."""
    return consistency_respacing(respacing) if sampler == "consistency" else respacing


def for_sampler(configs):
    """configs (a tuple) with the DiffusionConfig's timestep_respacing as the SamplerConfig's sampler reads it
    (sampler_respacing), the sampler options checked (sampler_keywords); as they are without a SamplerConfig."""
    sampler_config = next((config for config in configs if isinstance(config, SamplerConfig)), None)
    if sampler_config is None:
        return configs
    sampler = sampler_keywords(sampler_config)["sampler"]
    return tuple(dataclasses.replace(config, timestep_respacing=sampler_respacing(sampler, config.timestep_respacing))
                 if isinstance(config, DiffusionConfig) else config for config in configs)


def load_for_sampling(model, path, device, flag="--model_path"):
    """Loads the checkpoint at `path` (given by `flag`) into `model` (clear errors on mismatch; a
    use_fp16 model is already float16 from its construction), moves it to `device` and sets eval
    mode. Returns the model."""
    if not path:
        raise ValueError(f"no checkpoint to sample from: pass {flag} PATH (a modelNNNNNN.pt or ema_*.pt file)")
    load_checkpoint(model, path)
    return model.to(device).eval()


def free_guidance(guidance_scale, model):
    """The classifier-free guides for --guidance_scale: none at 1 (plain conditional sampling); for a model
    that takes W as an input (built with --guidance_embed), W given to it (GuidanceScaleInput)."""
    if getattr(model, "guidance_embed", None) is not None:
        return (GuidanceScaleInput(guidance_scale),)
    if guidance_scale == 1:
        return ()
    if getattr(model, "null_class", None) is None:
        raise ValueError(
            f"--guidance_scale {guidance_scale} needs a model trained with label dropout: train it with "
            "--class_dropout_prob > 0 (a checkpoint without its train_config.json needs that flag when sampling "
            "too), or use --guidance_scale 1"
        )
    return (ClassifierFreeGuidance(guidance_scale, model.null_class),)


def sampler_keywords(config):
    """samplers.sample's keywords from a SamplerConfig: the sampler, the options given on the command line
    (eta, churn, ...: flags left at their defaults keep the sampler's own), dynamic thresholding and
    re-clipping. Raises ValueError naming a flag the sampler does not take."""
    sampler = resolve_sampler(config.sampler, config.use_ddim)
    takes = SAMPLERS[sampler].options()
    defaults = SamplerConfig()
    every_option = sorted(set().union(*(spec.options() for spec in SAMPLERS.values())))
    given = {name: getattr(config, name) for name in every_option if getattr(config, name) != getattr(defaults, name)}
    for name in given:
        if name not in takes:
            allowed = ", ".join(f"--{option}" for option in takes) or "none of the sampler options"
            raise ValueError(f"--{name} does not apply to --sampler {sampler} (it takes {allowed})")
    keywords = dict(sampler=sampler, **given)
    if config.dynamic_threshold:
        keywords["dynamic_threshold"] = config.dynamic_threshold
    if config.reclip_guided != "auto":
        keywords["reclip_guided"] = config.reclip_guided == "True"
    return keywords


def draw(diffusion, model, batch, shape, device, config, model_kwargs, guidance=()):
    """x_0 [len(batch), C, H, W] in [-1, 1] from the SampleConfig's sampler, every random draw from
    the batch's per-sample streams (initial noise included). shape: [len(batch), C, H, W]."""
    return sample(
        diffusion, model, tuple(shape), guidance=guidance, noise=batch.noise(shape, device),
        clip_denoised=config.clip_denoised, model_kwargs=model_kwargs, device=device,
        progress=config.progress and dist_util.get_rank() == 0, noise_fn=batch.noise_like, **sampler_keywords(config),
    )


def sample_all(sample_batch, num_samples, batch_size, seed, sample_shape, device, with_labels, progress=False):
    """Draws samples 0 .. num_samples - 1 with all ranks busy and gathers them on rank 0.

    sample_batch(batch: SeededBatch) -> (x [len(batch), C, H, W] in [-1, 1], labels [len(batch)] int64,
    or None when not with_labels) is called for this rank's share, batch_size indices at a time; every
    rank makes the same number of collective calls (a rank whose share is used up sends nothing).
    sample_shape: (C, H, W) of one sample. Returns (images uint8 [num_samples, H, W, 3], labels int64
    [num_samples] or None) in index order on rank 0, (None, None) on the other ranks.

    Memory: each round's gathered rows go straight into rank 0's host (CPU) arrays at their sample
    indices, so the sampling device holds one round (world_size * batch_size images) at a time and the
    host holds the result once (num_samples * H * W * 3 bytes); the other ranks keep nothing.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"--num_samples ({num_samples}) and --batch_size ({batch_size}) must be at least 1")
    rank, world_size = dist_util.get_rank(), dist_util.get_world_size()
    shards = [shard_range(num_samples, r, world_size) for r in range(world_size)]
    rounds = math.ceil(len(shards[0]) / batch_size)  # rank 0 has the largest share
    keep = rank == 0
    all_images = th.empty((num_samples, *sample_shape[1:], 3), dtype=th.uint8) if keep else None
    all_labels = th.empty((num_samples,), dtype=th.int64) if keep and with_labels else None
    bar = _progress_bar(len(shards[rank])) if progress and keep else None
    for r in range(rounds):
        indices = shards[rank][r * batch_size:(r + 1) * batch_size]
        images = th.zeros((0, *sample_shape[1:], 3), dtype=th.uint8, device=device)
        labels = th.zeros((0,), dtype=th.int64, device=device)
        if len(indices):
            x, labels = sample_batch(SeededBatch(seed, indices))
            images = to_uint8_nhwc(x)
        _to_host(dist_util.all_gather_rows(images), shards, r, batch_size, all_images)
        if with_labels:
            _to_host(dist_util.all_gather_rows(labels.to(device=device, dtype=th.int64)), shards, r, batch_size,
                     all_labels)
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    if not keep:
        return None, None
    return all_images.numpy(), all_labels.numpy() if with_labels else None


def _to_host(blocks, shards, r, batch_size, out):
    """Copies round r's gathered blocks (blocks[k]: rank k's rows, on the sampling device) into the host
    tensor `out` at their sample indices; out is None on the ranks that keep nothing."""
    if out is None:
        return
    for block, shard in zip(blocks, shards):
        indices = shard[r * batch_size:(r + 1) * batch_size]
        out[indices.start:indices.start + len(indices)].copy_(block)


def _progress_bar(total):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="samples (rank 0)", unit="img")


def sample_and_save(sample_batch, config, sample_shape, device, with_labels):
    """The sampling scripts' ending: draw config.num_samples images (a SampleConfig) with sample_all,
    write them on rank 0 with save_samples in the log dir, and wait for every rank. Returns the images
    (uint8 [N, H, W, 3]) on rank 0, None on the other ranks."""
    seed = resolve_seed(config.seed)
    logger.log(f"sampling {config.num_samples} images with --seed {seed}...")
    images, labels = sample_all(sample_batch, config.num_samples, config.batch_size, seed, sample_shape, device,
                                with_labels=with_labels, progress=config.progress)
    if images is not None:
        logger.log(f"saving to {save_samples(logger.get_dir(), images, labels)}")
    if dist.is_initialized():
        dist.barrier()
    logger.log("sampling complete")
    return images
