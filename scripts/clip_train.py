"""Train a CLIP on a folder of captioned images (`<stem>.txt` beside each image, one caption per line; each time
an image is drawn, one of its lines is too) with CLIP's contrastive loss over the batch of every rank. With
--clip_noise_aware True (the default, GLIDE's noisy CLIP) each image is noised to x_t at a uniform t of the
diffusion's schedule (--noise_schedule, --diffusion_steps) and the image encoder reads (x_t, t); False trains a
clean CLIP. The checkpoints modelNNNNNN.pt load with guided_diffusion.clip.checkpoint.load_clip(path) (docs/clip.md).

    mpiexec -n 8 python scripts/clip_train.py --data_dir DIR --batch_size 256 --noise_schedule cosine
    python scripts/clip_train.py --data_dir DIR --clip_image_size 32 --clip_patch_size 4 --clip_width 128 \\
        --clip_image_heads 4 --clip_image_layers 4 --clip_text_heads 4 --clip_text_layers 4 --clip_text_ctx 16 \\
        --diffusion_steps 1000 --max_steps 5000
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion
from guided_diffusion.cli import config_parser
from guided_diffusion.clip.checkpoint import build_clip
from guided_diffusion.clip.train import ClipTrainLoop, check_run, clip_training_data
from guided_diffusion.config import ClipModelConfig, ClipTrainConfig, DiffusionConfig
from guided_diffusion.errors import run
from guided_diffusion.train_setup import run_config, start_training

CONFIGS = (ClipModelConfig, DiffusionConfig, ClipTrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, train = start_training(
        create_argparser(), CONFIGS, check_data=lambda configs: check_run(*configs))

    logger.log("creating model and diffusion...")
    model = build_clip(model_config, diffusion_config.diffusion_steps).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = clip_training_data(train, model_config)

    logger.log("training CLIP...")
    loop = ClipTrainLoop(model=model, diffusion=diffusion, data=data, config=train,
                         run_config=run_config((model_config, diffusion_config), train, class_names=[]))
    loop.run_loop()


if __name__ == "__main__":
    run(main)
