"""Train a diffusion model on a folder of images (the release's image_train.py, same flags).

    mpiexec -n 8 python scripts/image_train.py --data_dir DIR --preset adm64_cond --batch_size 32
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.cli import config_parser, parse_configs
from guided_diffusion.config import DiffusionConfig, ModelConfig, TrainConfig
from guided_diffusion.image_datasets import load_data
from guided_diffusion.train_setup import check_num_classes, run_config, train_diffusion
from guided_diffusion.train_util import seed_all

CONFIGS = (ModelConfig, DiffusionConfig, TrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, train = parse_configs(create_argparser(), CONFIGS)
    dist_util.setup_dist()
    logger.configure()
    seed_all(train.seed)

    logger.log("creating model and diffusion...")
    model = build_unet(model_config, diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = load_data(data_dir=train.data_dir, batch_size=train.batch_size, image_size=model_config.image_size,
                     class_cond=model_config.class_cond, seed=train.seed, image_channels=model_config.image_channels)
    if model_config.class_cond:
        check_num_classes(model_config.num_classes, data.class_names)

    logger.log("training...")
    train_diffusion(model, diffusion, data, train, use_fp16=model_config.use_fp16,
                    run_config=run_config((model_config, diffusion_config), train, data.class_names))


if __name__ == "__main__":
    main()
