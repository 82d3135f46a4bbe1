"""What the training scripts share: the start of a run, the training images, the training loops called
from typed configs and train_config.json's contents."""

from .config import as_flags, checked_on_resume
from .image_datasets import load_data
from .resample import create_named_schedule_sampler
from .run_flags import start_run
from .train_util import TrainLoop, seed_all


def start_training(parser, config_classes, argv=None):
    """run_flags.start_run (the model flags of --resume_checkpoint / --init_checkpoint from their runs),
    then the seeds. Returns one instance per config class, the last a LoopConfig."""
    configs = start_run(parser, config_classes, argv)
    seed_all(configs[-1].seed)
    return configs


def training_images(loop_config, image_size, class_cond, num_classes, image_channels=3, **options):
    """load_data's endless batches of the LoopConfig's data_dir; a class-conditional model must know
    every class of the data. options: more load_data keywords (e.g. random_crop)."""
    data = load_data(data_dir=loop_config.data_dir, batch_size=loop_config.batch_size, image_size=image_size,
                     class_cond=class_cond, seed=loop_config.seed, image_channels=image_channels, **options)
    if class_cond:
        check_num_classes(num_classes, data.class_names)
    return data


def check_num_classes(num_classes, class_names):
    """A class-conditional model needs at least as many classes as the data has."""
    if len(class_names) > num_classes:
        raise ValueError(f"the data has {len(class_names)} classes ({', '.join(class_names[:5])}, ...) but the "
                         f"model only {num_classes}: pass --num_classes {len(class_names)}")


def run_config(model_configs, loop_config, class_names):
    """train_config.json: the model flags a resumed run must repeat (all but those marked free_on_resume),
    every flag, the data's class names."""
    return {"model_flags": checked_on_resume(*model_configs), "train_flags": as_flags(*model_configs, loop_config),
            "class_names": class_names}


def loop_options(loop_config):
    """The keywords of TrainLoop and ClassifierTrainLoop that a LoopConfig gives."""
    shared = ("batch_size", "microbatch", "lr", "weight_decay", "log_interval", "save_interval", "resume_checkpoint",
              "use_bf16", "init_checkpoint", "max_skipped_steps")
    return {name: getattr(loop_config, name) for name in shared}


def train_diffusion(model, diffusion, data, train, model_configs, class_names):
    """Run TrainLoop to the end with a TrainConfig (`train`); model_configs: (the model's config, its
    DiffusionConfig), for --use_fp16 and train_config.json."""
    TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        ema_rate=train.ema_rate,
        use_fp16=model_configs[0].use_fp16,
        fp16_scale_growth=train.fp16_scale_growth,
        schedule_sampler=create_named_schedule_sampler(train.schedule_sampler, diffusion),
        lr_anneal_steps=train.lr_anneal_steps,
        max_steps=train.max_steps,
        ema_warmup=train.ema_warmup,
        run_config=run_config(model_configs, train, class_names),
        **loop_options(train),
    ).run_loop()
