"""The files of a training run: checkpoint names, atomic writes, what a resume finds beside its model file,
the run's flags (train_config.json), and the random-number-generator states needed for an exact resume.

Files in the log dir after NNNNNN completed steps (release format for the first three):
  modelNNNNNN.pt, ema_RATE_NNNNNN.pt   state dicts (float32)
  optNNNNNN.pt                        the AdamW state dict
  stateNNNNNN.pt                      new: loss scale, timestep-sampler state, per-rank RNG and data position
  train_config.json                   new: the run's flags and class names, checked on resume
"""

import json
import os
import random
import re
import uuid

import blobfile as bf
import numpy as np
import torch as th

CONFIG_NAME = "train_config.json"
# Model flags that change no weight and may differ on resume (memory / kernel choices).
FREE_ON_RESUME = ("use_checkpoint", "attention_impl", "classifier_attention_impl")
CHECKPOINT_RE = re.compile(r"^(?:model|opt|state|ema_[0-9.]+_)(\d{6,})\.pt$")


def model_filename(step):
    return f"model{step:06d}.pt"


def ema_filename(rate, step):
    return f"ema_{rate}_{step:06d}.pt"


def opt_filename(step):
    return f"opt{step:06d}.pt"


def state_filename(step):
    return f"state{step:06d}.pt"


def parse_resume_step_from_filename(filename):
    """The step NNNNNN of a path ending in modelNNNNNN.pt, else None (e.g. a released checkpoint)."""
    match = re.match(r"^model(\d+)\.pt$", bf.basename(filename))
    return int(match.group(1)) if match else None


def save_atomically(obj, path):
    """torch.save `obj` to `path` so that readers never see a partial file.

    Local paths: write a temp file beside it, then rename. Object stores (gs://, az://) only publish
    a blob when its upload completes, so they are written directly.
    """
    if "://" in path:
        with bf.BlobFile(path, "wb") as f:
            th.save(obj, f)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            th.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(obj, path):
    text = json.dumps(obj, indent=2, sort_keys=True)
    if "://" in path:
        with bf.BlobFile(path, "w") as f:
            f.write(text)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def checkpoint_steps_in(log_dir):
    """{step: [file names]} of the checkpoint files already in log_dir."""
    found = {}
    if not bf.isdir(log_dir):
        return found
    for name in bf.listdir(log_dir):
        match = CHECKPOINT_RE.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    return found


def check_log_dir_is_free(log_dir, start_step, resume_dir=None):
    """Refuse to start where this run's saves could overwrite checkpoints of a different run.

    Files at steps >= start_step are a conflict, except the resumed checkpoint's own files when the run
    continues in the folder it was resumed from.
    """
    same_dir = resume_dir is not None and os.path.abspath(resume_dir) == os.path.abspath(log_dir)
    conflicts = sorted(
        name
        for step, names in checkpoint_steps_in(log_dir).items()
        if step > start_step or (step == start_step and not same_dir)
        for name in names
    )
    if conflicts:
        shown = ", ".join(conflicts[:4]) + (" ..." if len(conflicts) > 4 else "")
        raise FileExistsError(
            f"the log dir {log_dir} already holds checkpoints at or after step {start_step} ({shown}); "
            f"this run would overwrite them. Set OPENAI_LOGDIR to a new folder, or resume from the latest "
            f"checkpoint with --resume_checkpoint {log_dir}/modelNNNNNN.pt"
        )


def read_config(directory):
    """The train_config.json in `directory`, or None when there is none."""
    path = bf.join(directory, CONFIG_NAME)
    if not bf.exists(path):
        return None
    with bf.BlobFile(path, "r") as f:
        return json.load(f)


def check_config_matches(saved, current, source):
    """Raise ValueError when the model flags or class names differ from the resumed run's."""
    problems = []
    saved_flags, flags = saved.get("model_flags", {}), current.get("model_flags", {})
    for key in sorted(set(saved_flags) | set(flags)):
        if key in saved_flags and key in flags and saved_flags[key] != flags[key] and key not in FREE_ON_RESUME:
            problems.append(f"--{key}: checkpoint {saved_flags[key]!r}, now {flags[key]!r}")
    if saved.get("class_names") != current.get("class_names"):
        problems.append(f"class names: checkpoint {saved.get('class_names')}, data now {current.get('class_names')}")
    if problems:
        raise ValueError(
            f"the resumed run ({source}) was trained with other settings:\n  " + "\n  ".join(problems)
            + "\nPass the same model flags and a data dir with the same classes; to start a new model from "
            "these weights use --init_checkpoint instead."
        )


def rng_state():
    """The RNG states of python, numpy, torch (CPU and CUDA) as weights_only-loadable objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": th.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": th.get_rng_state(),
        "cuda": th.cuda.get_rng_state_all() if th.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore the states saved by rng_state()."""
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    th.set_rng_state(state["torch"])
    if state["cuda"] and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["cuda"])


def _tuples(obj):
    return tuple(_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj
