"""Train a super-resolution diffusion model (the release's super_res_train.py, same flags): each batch
is area-downsampled to --small_size and given to the model as `low_res`.

    mpiexec -n 8 python scripts/super_res_train.py --data_dir DIR --preset upsampler64_256 --batch_size 8
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_super_res
from guided_diffusion.cli import config_parser
from guided_diffusion.config import DiffusionConfig, SuperResConfig, TrainConfig
from guided_diffusion.errors import run
from guided_diffusion.image_datasets import LowResConditioned
from guided_diffusion.train_setup import float32_init, start_training, train_diffusion, training_images

CONFIGS = (SuperResConfig, DiffusionConfig, TrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    sr_config, diffusion_config, train = start_training(create_argparser(), CONFIGS)

    logger.log("creating model...")
    model = build_super_res(float32_init(sr_config), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    images = training_images(train, sr_config.large_size, sr_config.class_cond, sr_config.num_classes,
                             sr_config.image_channels)

    logger.log("training...")
    train_diffusion(model, diffusion, LowResConditioned(images, sr_config.small_size), train,
                    (sr_config, diffusion_config), images.class_names)


if __name__ == "__main__":
    run(main)
