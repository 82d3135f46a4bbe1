"""Train a noisy-image classifier (for classifier guidance) on a folder of class-prefixed images
(the release's classifier_train.py, same flags; also runs on the CPU).

    mpiexec -n 8 python scripts/classifier_train.py --data_dir train/ --val_data_dir val/ \\
        --preset classifier128 --batch_size 256 --lr 3e-4 --weight_decay 0.05 --anneal_lr True
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_classifier, build_diffusion
from guided_diffusion.cli import config_parser
from guided_diffusion.config import ClassifierConfig, ClassifierTrainConfig, DiffusionConfig
from guided_diffusion.errors import run
from guided_diffusion.train_setup import float32_init, run_config, start_training, training_images
from guided_diffusion.train_util import ClassifierTrainLoop

CONFIGS = (ClassifierConfig, DiffusionConfig, ClassifierTrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    classifier_config, diffusion_config, train = start_training(create_argparser(), CONFIGS)

    logger.log("creating model and diffusion...")
    model = build_classifier(float32_init(classifier_config)).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = training_images(train, classifier_config.image_size, True, classifier_config.num_classes,
                           classifier_config.image_channels, random_crop=True)
    val_data = None
    if train.val_data_dir:
        val_data = training_images(train, classifier_config.image_size, True, classifier_config.num_classes,
                                   classifier_config.image_channels, data_dir=train.val_data_dir)
        if val_data.class_names != data.class_names:
            raise ValueError(f"--val_data_dir has classes {val_data.class_names}, --data_dir has "
                             f"{data.class_names}: labels would not match")

    logger.log("training classifier model...")
    loop = ClassifierTrainLoop(model=model, diffusion=diffusion, data=data, val_data=val_data, config=train,
                               use_fp16=classifier_config.classifier_use_fp16,
                               run_config=run_config((classifier_config, diffusion_config), train, data.class_names))
    loop.run_loop()


if __name__ == "__main__":
    run(main)
