"""What the training scripts share: the training loops called from typed configs, train_config.json's
contents and the check of the model's classes against the data's."""

from .config import as_flags, checked_on_resume
from .resample import create_named_schedule_sampler
from .train_util import TrainLoop


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


def train_diffusion(model, diffusion, data, train, use_fp16, run_config):
    """Run TrainLoop to the end with a TrainConfig (`train`) and the model's --use_fp16."""
    TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        ema_rate=train.ema_rate,
        use_fp16=use_fp16,
        fp16_scale_growth=train.fp16_scale_growth,
        schedule_sampler=create_named_schedule_sampler(train.schedule_sampler, diffusion),
        lr_anneal_steps=train.lr_anneal_steps,
        max_steps=train.max_steps,
        ema_warmup=train.ema_warmup,
        run_config=run_config,
        **loop_options(train),
    ).run_loop()
