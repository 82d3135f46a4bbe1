"""Distil a diffusion model into a consistency model that samples in one to four steps (Song et al. 2023):
consistency distillation (CD) from --teacher_path, whose run gives the model and diffusion flags and the
student's first weights, or consistency training (CT) without a teacher, from scratch or from --teacher_path's
weights. The student keeps the teacher's keys (with --guidance_scale_max W_max, a W embedding's too) and its
train_config.json the teacher's flags, so --model_path alone samples it. docs/distillation.md.

    mpiexec -n 8 python scripts/consistency_train.py --data_dir DIR --teacher_path 64x64_diffusion.pt \\
        --batch_size 32 --lr 8e-6 --ema_rate 0.999,0.9999 --use_fp16 True
    python scripts/consistency_train.py --data_dir DIR --teacher_path run/ema_0.9999_100000.pt --guidance_scale 3
    python scripts/consistency_train.py --data_dir DIR --teacher_path run/ema_0.9999_100000.pt --guidance_scale_max 4
    python scripts/consistency_train.py --data_dir DIR --training_mode consistency_training --preset adm64_cond \\
        --target_ema_mode adaptive --scale_mode progressive --start_scales 2 --end_scales 40
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import ConsistencyConfig, DiffusionConfig, ModelConfig
from guided_diffusion.distill.train import check_consistency_run, load_teacher, student_config, train_consistency
from guided_diffusion.errors import run
from guided_diffusion.train_setup import float32_init, start_training, training_images

CONFIGS = (ModelConfig, DiffusionConfig, ConsistencyConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    model_config, diffusion_config, train = start_training(create_argparser(), CONFIGS,
                                                           check_data=check_consistency_run)

    logger.log("creating the student, the teacher and the diffusion...")
    student = student_config(model_config, train)
    model = build_unet(float32_init(student), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)
    teacher = load_teacher(train, model_config, diffusion_config.learn_sigma)

    logger.log("creating data loader...")
    data = training_images(train, model_config.image_size, model_config.class_cond, model_config.num_classes,
                           model_config.image_channels)

    logger.log("training...")
    train_consistency(model, diffusion, data, train, (student, diffusion_config), data.class_names, teacher)


if __name__ == "__main__":
    run(main)
