"""Train a super-resolution diffusion model (the release's super_res_train.py, same flags): each batch
is area-downsampled to --small_size and given to the model as `low_res`.

    mpiexec -n 8 python scripts/super_res_train.py --data_dir DIR --preset upsampler64_256 --batch_size 8
"""

import argparse

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import LowResConditioned, load_data
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, parse_args,
                                          sr_create_model_and_diffusion, sr_model_and_diffusion_defaults)
from guided_diffusion.train_util import (TrainLoop, check_num_classes, run_config, seed_all, train_loop_options,
                                         training_defaults)


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    seed_all(args.seed)

    logger.log("creating model...")
    model_flags = args_to_dict(args, sr_model_and_diffusion_defaults().keys())
    model, diffusion = sr_create_model_and_diffusion(**model_flags)
    model.to(dist_util.dev())
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)

    logger.log("creating data loader...")
    images = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.large_size,
                       class_cond=args.class_cond, seed=args.seed)
    if args.class_cond:
        check_num_classes(args.num_classes, images.class_names)
    data = LowResConditioned(images, args.small_size)

    logger.log("training...")
    TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        ema_rate=args.ema_rate,
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint,
        use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=schedule_sampler,
        weight_decay=args.weight_decay,
        lr_anneal_steps=args.lr_anneal_steps,
        run_config=run_config(args, model_flags, images.class_names),
        **train_loop_options(args),
    ).run_loop()


def create_argparser():
    defaults = dict(
        data_dir="",
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        batch_size=1,
        microbatch=-1,
        ema_rate="0.9999",
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        use_fp16=False,
        fp16_scale_growth=1e-3,
    )
    defaults.update(sr_model_and_diffusion_defaults())
    defaults.update(training_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
