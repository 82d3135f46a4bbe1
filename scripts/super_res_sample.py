"""
Generate a large batch of samples from a super resolution model, given a batch of samples from a
regular model (--base_samples: the samples_{N}x{h}x{w}x3.npz that image_sample.py wrote).
Writes samples_{N}x{H}x{W}x3.npz (H = W = --large_size) and samples_grid.png to the log dir.

    mpiexec -n 8 python scripts/super_res_sample.py --preset upsampler64_256 \\
        --model_path 64_256_upsampler.pt --base_samples samples_50000x64x64x3.npz \\
        --timestep_respacing 250 --num_samples 50000 --batch_size 16
"""

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.base_samples import load_base_samples
from guided_diffusion.build import build_diffusion, build_super_res
from guided_diffusion.cli import config_parser
from guided_diffusion.config import DiffusionConfig, SuperResConfig, SuperResSampleConfig
from guided_diffusion.errors import run

CONFIGS = (SuperResConfig, DiffusionConfig, SuperResSampleConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, run = sampling.start_sampling(create_argparser(), CONFIGS)
    device = dist_util.dev()

    logger.log("loading data...")
    base = load_base_samples(run.base_samples, model_config.small_size, model_config.class_cond)
    if len(base) < run.num_samples:
        logger.log(f"{run.base_samples} holds {len(base)} images: sample i upsamples image i % {len(base)}")

    logger.log("creating model...")
    model = build_super_res(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    sampling.load_for_sampling(model, run.model_path, device)
    sample_shape = (model_config.image_channels, model_config.large_size, model_config.large_size)

    def sample_batch(batch):
        model_kwargs = {"low_res": base.low_res(batch.indices, device, channels=model_config.image_channels)}
        if model_config.class_cond:
            model_kwargs["y"] = base.labels_for(batch.indices, device)
        x = sampling.draw(diffusion, model, batch, (len(batch), *sample_shape), device, run, model_kwargs)
        return x, model_kwargs.get("y")

    sampling.sample_and_save(sample_batch, run, sample_shape, device, with_labels=model_config.class_cond)


if __name__ == "__main__":
    run(main)
