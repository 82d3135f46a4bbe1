"""Train a diffusion model on a folder of images (the release's image_train.py, same flags).

    mpiexec -n 8 python scripts/image_train.py --data_dir DIR --preset adm64_cond --batch_size 32
"""

import argparse

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, create_model_and_diffusion,
                                          model_and_diffusion_defaults, parse_args)
from guided_diffusion.train_util import (check_num_classes, diffusion_training_flags, seed_all, train_diffusion,
                                         training_defaults)


def main():
    args = parse_args(create_argparser())
    dist_util.setup_dist()
    logger.configure()
    seed_all(args.seed)

    logger.log("creating model and diffusion...")
    model_flags = args_to_dict(args, model_and_diffusion_defaults().keys())
    model, diffusion = create_model_and_diffusion(**model_flags)
    model.to(dist_util.dev())

    logger.log("creating data loader...")
    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, seed=args.seed)
    if args.class_cond:
        check_num_classes(args.num_classes, data.class_names)

    logger.log("training...")
    train_diffusion(args, model, diffusion, data, model_flags, data.class_names)


def create_argparser():
    defaults = diffusion_training_flags()
    defaults.update(model_and_diffusion_defaults())
    defaults.update(training_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    main()
