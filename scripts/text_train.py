"""Train GLIDE's text-conditional model on a folder of captioned images: `<stem>.txt` beside each image, one
caption per line (each time an image is drawn, one of its lines is too). Learned sigma and the hybrid loss, as
GLIDE; --caption_dropout_prob trains the empty caption for classifier-free guidance.

    mpiexec -n 8 python scripts/text_train.py --data_dir DIR --batch_size 32 --caption_dropout_prob 0.2
    python scripts/text_train.py --data_dir DIR --init_checkpoint base.pt --noise_schedule cosine --lr 1e-5
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_text_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import TextDiffusionConfig, TextModelConfig, TrainConfig
from guided_diffusion.errors import UsageError, run
from guided_diffusion.image_datasets import list_image_files, read_captions
from guided_diffusion.train_setup import float32_init, start_training, train_diffusion, training_images

CONFIGS = (TextModelConfig, TextDiffusionConfig, TrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def check_run(configs):
    """Before anything is written: refuse the variants this script cannot feed, and read every caption file
    (read_captions' errors)."""
    model_config, _, train = configs
    for name in ("inpaint", "super_res"):
        if getattr(model_config, name):
            raise UsageError(f"--{name} True: text_train.py trains the base text model (no known image or "
                             f"low-resolution input to feed it); leave --{name} False")
    read_captions(list_image_files(train.data_dir))


def main():
    model_config, diffusion_config, train = start_training(create_argparser(), CONFIGS, check_data=check_run)

    logger.log("creating model and diffusion...")
    model = build_text_unet(float32_init(model_config), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = training_images(train, model_config.image_size, False, model_config.num_classes,
                           model_config.image_channels, text_ctx=model_config.text_ctx)

    logger.log("training...")
    train_diffusion(model, diffusion, data, train, (model_config, diffusion_config), class_names=[])


if __name__ == "__main__":
    run(main)
