"""Train a super-resolution diffusion model (the release's super_res_train.py, same flags): each batch
is area-downsampled to --small_size and given to the model as `low_res`.

    mpiexec -n 8 python scripts/super_res_train.py --data_dir DIR --preset upsampler64_256 --batch_size 8
"""

import argparse

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import LowResConditioned, load_data
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, parse_args,
                                          sr_create_model_and_diffusion, sr_model_and_diffusion_defaults)
from guided_diffusion.train_util import (check_num_classes, diffusion_training_flags, seed_all, train_diffusion,
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

    logger.log("creating data loader...")
    images = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.large_size,
                       class_cond=args.class_cond, seed=args.seed)
    if args.class_cond:
        check_num_classes(args.num_classes, images.class_names)
    data = LowResConditioned(images, args.small_size)

    logger.log("training...")
    train_diffusion(args, model, diffusion, data, model_flags, images.class_names)


def create_argparser():
    defaults = diffusion_training_flags()
    defaults.update(sr_model_and_diffusion_defaults())
    defaults.update(training_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
