"""Train a noisy-image classifier (for classifier guidance) on a folder of class-prefixed images
(the release's classifier_train.py, same flags; also runs on the CPU).

    mpiexec -n 8 python scripts/classifier_train.py --data_dir train/ --val_data_dir val/ \
        --preset classifier128 --batch_size 256 --lr 3e-4 --weight_decay 0.05 --anneal_lr True
"""

import argparse

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import load_data
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, classifier_and_diffusion_defaults,
                                          create_classifier_and_diffusion, parse_args)
from guided_diffusion.train_util import (ClassifierTrainLoop, check_num_classes, run_config, seed_all,
                                         train_loop_options, training_defaults)


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    seed_all(args.seed)

    logger.log("creating model and diffusion...")
    model_flags = args_to_dict(args, classifier_and_diffusion_defaults().keys())
    model, diffusion = create_classifier_and_diffusion(**model_flags)
    model.to(dist_util.dev())
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion) if args.noised else None

    logger.log("creating data loader...")
    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=True, random_crop=True, seed=args.seed)
    check_num_classes(args.num_classes, data.class_names)
    val_data = None
    if args.val_data_dir:
        val_data = load_data(data_dir=args.val_data_dir, batch_size=args.batch_size, image_size=args.image_size,
                             class_cond=True, seed=args.seed)
        if val_data.class_names != data.class_names:
            raise ValueError(f"--val_data_dir has classes {val_data.class_names}, --data_dir has "
                             f"{data.class_names}: labels would not match")

    logger.log("training classifier model...")
    ClassifierTrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        val_data=val_data,
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        anneal_lr=args.anneal_lr,
        iterations=args.iterations,
        noised=args.noised,
        schedule_sampler=schedule_sampler,
        log_interval=args.log_interval,
        eval_interval=args.eval_interval,
        save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint,
        use_fp16=args.classifier_use_fp16,
        run_config=run_config(args, model_flags, data.class_names),
        **train_loop_options(args),
    ).run_loop()


def create_argparser():
    defaults = dict(
        data_dir="",
        val_data_dir="",
        noised=True,
        iterations=150000,
        lr=3e-4,
        weight_decay=0.0,
        anneal_lr=False,
        batch_size=4,
        microbatch=-1,
        schedule_sampler="uniform",
        resume_checkpoint="",
        log_interval=10,
        eval_interval=5,
        save_interval=10000,
    )
    defaults.update(classifier_and_diffusion_defaults())
    defaults.update(training_defaults())
    del defaults["max_steps"]  # --iterations is the classifier's step budget
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
