"""Train GLIDE's text-conditional model on a folder of captioned images: `<stem>.txt` beside each image, one
caption per line (each time an image is drawn, one of its lines is too). Learned sigma and the hybrid loss, as
GLIDE; --caption_dropout_prob trains the empty caption for classifier-free guidance.
--super_res True trains an upsampler: each image is area-downsampled to --small_size and given as `low_res`.
--inpaint True trains an inpainting model: each image gets a random mask (--inpaint_unknown_prob,
--inpaint_min_area, --inpaint_max_area) and the model sees the image's known pixels and the mask; the loss is
the plain diffusion loss over the whole image, as GLIDE's. Both together train GLIDE's upsampler for inpainting.
A variant may start from a base model's --init_checkpoint, as GLIDE's did: its input layer is widened for the new
inputs with zero weights (at step 0 it computes the base model's function).

    mpiexec -n 8 python scripts/text_train.py --data_dir DIR --batch_size 32 --caption_dropout_prob 0.2
    python scripts/text_train.py --data_dir DIR --init_checkpoint base.pt --noise_schedule cosine --lr 1e-5
    python scripts/text_train.py --data_dir DIR --inpaint True --init_checkpoint base.pt --noise_schedule cosine
    python scripts/text_train.py --data_dir DIR --super_res True --image_size 256 --small_size 64 \\
        --num_res_blocks 2 --noise_schedule linear
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_text_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import TextDiffusionConfig, TextModelConfig, TextTrainConfig
from guided_diffusion.errors import UsageError, run
from guided_diffusion.image_datasets import (InpaintMasked, LowResConditioned, check_mask_distribution,
                                             list_image_files, read_captions)
from guided_diffusion.train_setup import float32_init, start_training, train_diffusion, training_images

CONFIGS = (TextModelConfig, TextDiffusionConfig, TextTrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def check_run(configs):
    """Before anything is written: refuse a --small_size that does not divide --image_size (super_res) and
    masks out of range (inpaint), and read every caption file (read_captions' errors)."""
    model_config, _, train = configs
    if model_config.super_res:
        check_small_size(model_config.small_size, model_config.image_size)
    if model_config.inpaint:
        check_mask_distribution(train.inpaint_unknown_prob, train.inpaint_min_area, train.inpaint_max_area)
    read_captions(list_image_files(train.data_dir))


def check_small_size(small_size, image_size):
    """A super-resolution model's low-resolution size: smaller than the image size and dividing it."""
    if not 0 < small_size < image_size or image_size % small_size:
        raise UsageError(f"--small_size {small_size} with --image_size {image_size}: a super-resolution model's "
                         "low-resolution size must be smaller than the image size and divide it (GLIDE's upsampler: "
                         "--image_size 256 --small_size 64)")


def model_inputs(data, model_config, train):
    """The batch stream with the variant's extra model inputs: low_res (super_res), the mask and the known
    pixels (inpaint)."""
    if model_config.super_res:
        data = LowResConditioned(data, model_config.small_size)
    if model_config.inpaint:
        data = InpaintMasked(data, train.inpaint_unknown_prob, train.inpaint_min_area, train.inpaint_max_area)
    return data


def main():
    model_config, diffusion_config, train = start_training(create_argparser(), CONFIGS, check_data=check_run)

    logger.log("creating model and diffusion...")
    model = build_text_unet(float32_init(model_config), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = training_images(train, model_config.image_size, False, model_config.num_classes,
                           model_config.image_channels, text_ctx=model_config.text_ctx)

    logger.log("training...")
    train_diffusion(model, diffusion, model_inputs(data, model_config, train), train, (model_config, diffusion_config),
                    class_names=[])


if __name__ == "__main__":
    run(main)
