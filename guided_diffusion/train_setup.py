"""What the training scripts share: the start of a run, the training images, the training loops called
from typed configs and train_config.json's contents."""

import dataclasses
import functools

from . import dist_util, run_lock
from .config import as_flags, checked_on_resume
from .image_datasets import load_data
from .run_flags import start_run
from .train_util import TrainLoop, seed_all


def start_training(parser, config_classes, argv=None, check_data=None):
    """run_flags.start_run (the model flags of --resume_checkpoint / --init_checkpoint from their runs), with
    the log dir locked for this run before anything is written there (run_lock: rank 0 takes the lock; if
    another run holds it every rank stops with LogDirInUse), then the seeds. check_data(configs): checks of
    the data that raise before the lock, so a bad folder stops the run with nothing written. Returns one
    instance per config class, the last a LoopConfig."""
    configs = start_run(parser, config_classes, argv, before_writing=functools.partial(_check_then_lock, check_data))
    seed_all(configs[-1].seed)
    return configs


def _check_then_lock(check_data, configs, log_dir):
    """check_data(configs) unless None, then lock log_dir for this run on rank 0 (every rank learns the
    outcome); returns the lock's warnings."""
    if check_data is not None:
        check_data(configs)
    return dist_util.on_rank0(functools.partial(run_lock.acquire, log_dir))


def training_images(loop_config, image_size, class_cond, num_classes, image_channels=3, data_dir=None, **options):
    """load_data's endless batches of the LoopConfig's data_dir (or of data_dir, e.g. its val_data_dir),
    decoded by its num_workers processes; a class-conditional model must know every class of the data.
    options: more load_data keywords (e.g. random_crop)."""
    data = load_data(data_dir=data_dir or loop_config.data_dir, batch_size=loop_config.batch_size,
                     image_size=image_size, class_cond=class_cond, seed=loop_config.seed,
                     num_workers=loop_config.num_workers, image_channels=image_channels, **options)
    if class_cond:
        check_num_classes(num_classes, data.class_names)
    return data


def float32_init(model_config):
    """model_config with its fp16 flag (use_fp16 or classifier_use_fp16) off, to build a model to train:
    it is initialised in float32, the trainer copies these weights to its fp32 master weights and only then
    casts the torso to float16, as the release does (built with the flag on, the masters would start
    from the float16-rounded weights)."""
    name = "classifier_use_fp16" if hasattr(model_config, "classifier_use_fp16") else "use_fp16"
    return dataclasses.replace(model_config, **{name: False})


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


def train_diffusion(model, diffusion, data, train, model_configs, class_names):
    """Run TrainLoop to the end with a TrainConfig (`train`); model_configs: (the model's config, its
    DiffusionConfig), for --use_fp16 and train_config.json."""
    TrainLoop(model=model, diffusion=diffusion, data=data, config=train, use_fp16=model_configs[0].use_fp16,
              run_config=run_config(model_configs, train, class_names)).run_loop()
