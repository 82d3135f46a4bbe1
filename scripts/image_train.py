"""Train a diffusion model on a folder of images (the release's image_train.py, same flags).

    mpiexec -n 8 python scripts/image_train.py --data_dir DIR --preset adm64_cond --batch_size 32
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import DiffusionConfig, ModelConfig, TrainConfig
from guided_diffusion.errors import run
from guided_diffusion.train_setup import float32_init, start_training, train_diffusion, training_images

CONFIGS = (ModelConfig, DiffusionConfig, TrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, train = start_training(create_argparser(), CONFIGS)

    logger.log("creating model and diffusion...")
    model = build_unet(float32_init(model_config), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = training_images(train, model_config.image_size, model_config.class_cond, model_config.num_classes,
                           model_config.image_channels)

    logger.log("training...")
    train_diffusion(model, diffusion, data, train, (model_config, diffusion_config), data.class_names)


if __name__ == "__main__":
    run(main)
