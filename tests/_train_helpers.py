"""Helpers the test files import: tiny model flags, a tiny seeded training loop, the Fashion-MNIST export,
the sampled images alive in a process, and running Python files and scripts in subprocesses (one process
or mpiexec). Fixtures: conftest.py."""

import csv
import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch as th

import _warm_python

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MPIEXEC = str(Path(PYTHON).with_name("mpiexec"))
TORCHRUN = str(Path(PYTHON).with_name("torchrun"))

# A ~0.75M-parameter class-conditional UNet at 32x32 (0.1-0.3 s per batch-8 step on one CPU core).
TINY_UNET = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                 num_head_channels=-1, num_heads=2, class_cond=True, num_classes=10, diffusion_steps=100)
TINY_CLASSIFIER = dict(image_size=32, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                       classifier_attention_resolutions="16", num_classes=10, diffusion_steps=100)


# A small learned-sigma class-conditional UNet at 16x16 for the checkpoint-set tests.
MICRO_UNET = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                  num_heads=1, class_cond=True, num_classes=4, diffusion_steps=50, learn_sigma=True)


class SeededBatches:
    """An endless, resumable stream like load_data's: batch i ([2, 3, 16, 16] in [-1, 1], {"y": [2]}) is
    drawn from a generator seeded with i, so there is nothing to decode."""

    def __init__(self):
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        gen = th.Generator().manual_seed(self.index)
        self.index += 1
        return th.rand(2, 3, 16, 16, generator=gen) * 2 - 1, {"y": th.randint(0, 4, (2,), generator=gen)}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def tiny_loop(log_dir, max_steps, resume="", model_flags=None, **config_fields):
    """A seeded TrainLoop of MICRO_UNET (updated with model_flags; built in float32 as the training scripts
    build it, use_fp16 goes to the loop) on SeededBatches logging to log_dir (stdout, log.txt,
    progress.csv): EMA rates 0.9 and 0.99, a row every step, a set every 2 steps. config_fields: more
    TrainConfig fields (they win)."""
    from guided_diffusion import logger
    from guided_diffusion.config import TrainConfig
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
    from guided_diffusion.train_util import TrainLoop, seed_all

    logger.configure(dir=str(log_dir))
    seed_all(0)
    flags = dict(model_and_diffusion_defaults(), **MICRO_UNET, **(model_flags or {}))
    model, diffusion = create_model_and_diffusion(**dict(flags, use_fp16=False))
    config = dict(batch_size=2, lr=1e-3, ema_rate="0.9,0.99", log_interval=1, save_interval=2,
                  resume_checkpoint=str(resume), max_steps=max_steps)
    return TrainLoop(model=model, diffusion=diffusion, data=SeededBatches(), config=TrainConfig(**dict(config, **config_fields)),
                     use_fp16=flags["use_fp16"], run_config={"model_flags": flags})


def write_run(run_dir, model, model_config, diffusion_config):
    """model's state dict as run_dir/model000000.pt with the train_config.json of train_setup.run_config's layout
    beside it (the run's flags: what --model_path alone rebuilds the model from). Returns the checkpoint's path."""
    from guided_diffusion.config import as_flags, checked_on_resume

    run_dir.mkdir(parents=True)
    th.save(model.state_dict(), run_dir / "model000000.pt")
    config = {"model_flags": checked_on_resume(model_config, diffusion_config),
              "train_flags": as_flags(model_config, diffusion_config), "class_names": None}
    (run_dir / "train_config.json").write_text(json.dumps(config))
    return run_dir / "model000000.pt"


def live_image_bytes(height, width):
    """{device type: bytes} of the uint8 image tensors [n, height, width, 3] alive in this process now
    (each storage counted once, empty ones left out): where sampled images are being kept."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, th.Tensor) and obj.dtype == th.uint8 and tuple(obj.shape[1:]) == (height, width, 3):
            storage = obj.untyped_storage()
            storages[obj.device.type, storage.data_ptr()] = storage.nbytes()
    totals = {}
    for (device, _), nbytes in storages.items():
        if nbytes:
            totals[device] = totals.get(device, 0) + nbytes
    return totals


# A 16x16 greyscale class-conditional run with label dropout and its classifier, trained by the scripts
# for a few steps (tiny_runs in conftest.py): what the flags-from-checkpoint tests sample from.
TINY_RUN = dict(image_size=16, image_channels=1, num_classes=2, class_cond=True, class_dropout_prob=0.1,
                num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8", num_heads=2,
                learn_sigma=True, diffusion_steps=20, noise_schedule="cosine")
TINY_RUN_CLASSIFIER = dict(image_size=16, image_channels=1, num_classes=2, classifier_width=32, classifier_depth=1,
                           classifier_channel_mult="1,2", classifier_attention_resolutions="8", diffusion_steps=20,
                           noise_schedule="cosine")


def write_grey_images(data_dir, per_class=4, size=16):
    """per_class random greyscale PNGs of classes "dark" and "light" (size x size) in data_dir."""
    from PIL import Image

    data_dir.mkdir(parents=True)
    gen = th.Generator().manual_seed(0)
    for label, name in enumerate(("dark", "light")):
        for i in range(per_class):
            pixels = (th.rand(size, size, generator=gen) * 100 + 120 * label).to(th.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(data_dir / f"{name}_{i}.png")
    return data_dir


def to_argv(flags):
    """{"lr": 1e-4, "class_cond": True} -> ["--lr", "0.0001", "--class_cond", "True"]."""
    return [tok for k, v in flags.items() for tok in (f"--{k}", str(v))]


def load_fashion_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist", REPO / "datasets" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_fashion(out_dir, per_class=60):
    """per_class Fashion-MNIST training images per class into out_dir (32x32 RGB, class-prefixed names)."""
    load_fashion_module().export(str(out_dir), split="train", per_class=per_class)
    return out_dir


# Limits that only catch a hung process: 10 or more times what the slowest run takes on an idle machine.
TIMEOUT = 900
# What the interpreter reads only at start-up: a run that sets one of these cannot use the warm server.
STARTUP_VARIABLES = ("PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                     "LD_LIBRARY_PATH")
WARM = _warm_python.WarmPython(PYTHON, dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
                                            PYTHONWARNINGS="default"), REPO)


def run_python(args, ranks=1, env=None, check=True, timeout=TIMEOUT):
    """Runs `python *args` from the repository root (under `mpiexec -n ranks` when ranks > 1) with the
    repository importable, one thread per process and warnings shown; returns the CompletedProcess
    (stdout, stderr as text). check: raise with both outputs on a non-zero exit. A single process whose
    env leaves the start-up variables alone is forked from the warm server (_warm_python.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="default", **(env or {}))
    command = [PYTHON, *map(str, args)]
    if ranks == 1 and all(env.get(name) == WARM.env.get(name) for name in STARTUP_VARIABLES):
        result = WARM.run(args, env, timeout)
    else:
        if ranks > 1:
            command = [MPIEXEC, "-n", str(ranks), *command]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


def run_script(name, flags, log_dir, ranks=1, check=True, timeout=TIMEOUT):
    """scripts/{name}.py with flags (a dict, or an argv list) and OPENAI_LOGDIR=log_dir (the sampling
    scripts, image_nll and image_edit with --progress False) -> CompletedProcess (see run_python)."""
    argv = to_argv(flags) if isinstance(flags, dict) else [str(a) for a in flags]
    quiet = ["--progress", "False"] if "sample" in name or name in ("image_nll", "image_edit") else []
    return run_python([REPO / "scripts" / f"{name}.py", *argv, *quiet], ranks=ranks,
                      env={"OPENAI_LOGDIR": str(log_dir)}, check=check, timeout=timeout)


def assert_same_uint8_images(a, b):
    """Two runs' uint8 images of the same seeds, batched differently: equal up to float round-off (convolution
    kernels may round differently for another batch size), i.e. at most one level apart in under 1% of the
    pixels, as tests/test_seeds.py states for every sampler."""
    levels = np.abs(a.astype(np.int64) - b.astype(np.int64))
    assert a.shape == b.shape and levels.max() <= 1 and (levels > 0).mean() < 0.01, (levels.max(), (levels > 0).mean())


def read_progress(log_dir):
    """Rows of progress.csv as dicts of floats (empty cells left out)."""
    with open(Path(log_dir) / "progress.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
