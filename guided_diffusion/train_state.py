"""The files of a training run: checkpoint names, checkpoint sets written so that they survive a kill at
any moment, tidying a log dir before a (resumed) run, the run's flags (train_config.json), and the
random-number-generator states needed for an exact resume.

Files in the log dir after NNNNNN completed steps (release format for the first three):
  modelNNNNNN.pt, ema_RATE_NNNNNN.pt   state dicts (float32)
  optNNNNNN.pt                        the AdamW state dict
  stateNNNNNN.pt                      new: loss scale, timestep-sampler state, per-rank RNG and data position
  train_config.json                   new: the run's flags and class names, checked on resume

The files of a step form a set written one file at a time, each atomically, the model file last: a model
file is therefore always part of a complete set, whenever the writing process was killed.
"""

import errno
import json
import os
import random
import re
import uuid

import blobfile as bf
import numpy as np
import torch as th

CONFIG_NAME = "train_config.json"
CHECKPOINT_RE = re.compile(r"^(?:model|opt|state|ema_[0-9.]+_)(\d{6,})\.pt$")
TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}$")  # the suffix of a file being written (see write_file)
SET_ASIDE_PREFIX = "set_aside_after_step"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The disk (or quota) filled up while a checkpoint set was written; the previous set is intact."""


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


def checkpoint_set_names(step, ema_rates):
    """The file names of step's checkpoint set, in the order they are written (the model file last)."""
    return [*(ema_filename(rate, step) for rate in ema_rates), opt_filename(step), state_filename(step),
            model_filename(step)]


def write_file(path, write):
    """Create `path` with write(f) (f: a binary file) so that no reader ever sees a partial file.

    Local paths: a temp file `<path>.tmp-<hex>` beside it, flushed to disk, renamed over `path`, and the
    rename made durable (the folder synced). A killed process leaves at most the temp file, removed at the
    next start (remove_temp_files). Object stores (gs://, az://) publish a blob only when its upload
    completes, so they are written directly.
    """
    if "://" in path:
        with bf.BlobFile(path, "wb") as f:
            write(f)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(os.path.dirname(path) or ".")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomically(obj, path):
    """torch.save `obj` to `path` through write_file."""
    write_file(path, lambda f: th.save(obj, f))


def write_json_atomically(obj, path):
    """Write `obj` as indented JSON to `path` through write_file."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    write_file(path, lambda f: f.write(text.encode()))


def write_checkpoint_set(log_dir, step, files, intact):
    """torch.save each {name: object} of step's set into log_dir, in order (the model file last).

    intact: the model file of the newest complete set, or None; named when the disk fills up, which
    raises DiskFullError after removing the files of this (incomplete) set written so far.
    A file that already exists is not overwritten (FileExistsError: another run in the same folder?).
    """
    written = []
    try:
        for name, obj in files.items():
            path = bf.join(log_dir, name)
            if bf.exists(path):
                raise FileExistsError(f"{path} appeared while training (another run in the same "
                                      f"OPENAI_LOGDIR?); not overwriting it")
            save_atomically(obj, path)
            written.append(path)
    except Exception as exc:
        if not _disk_full(exc):
            raise
        for path in written:
            bf.remove(path)
        kept = (f"the newest complete set is intact: resume with --resume_checkpoint {intact}" if intact
                else "no earlier checkpoint set exists")
        raise DiskFullError(errno.ENOSPC, f"the disk is full: the checkpoint of step {step} could not be written "
                                          f"to {log_dir} (its partial files were removed); {kept}. Free some "
                                          f"space, or resume with OPENAI_LOGDIR set to a folder on another "
                                          f"disk") from exc


def _disk_full(exc):
    """True when exc, or an exception it was raised from, is ENOSPC / EDQUOT (torch may wrap it)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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


def same_folder(a, b):
    """Whether two folder paths (local or blobfile) name the same folder."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def remove_temp_files(log_dir):
    """Delete the temp files that an interrupted write_file left in log_dir; returns their names."""
    if not bf.isdir(log_dir):
        return []
    names = sorted(name for name in bf.listdir(log_dir) if TEMP_RE.search(name))
    for name in names:
        bf.remove(bf.join(log_dir, name))
    return names


def complete_steps(folder):
    """Sorted steps whose model, optimizer and state files are all in `folder` (EMA rates may change)."""
    return sorted(step for step, names in checkpoint_steps_in(folder).items()
                  if {model_filename(step), opt_filename(step), state_filename(step)} <= set(names))


def has_resume_state(folder):
    """Whether `folder` holds a stateNNNNNN.pt: a run of this project (the release writes none)."""
    return any(state_filename(step) in names for step, names in checkpoint_steps_in(folder).items())


def later_files(log_dir, step, incomplete_only=False):
    """Names of the checkpoint files of steps after `step`; with incomplete_only, only of steps that have no
    model file (the remains of an interrupted save, which no run can resume from)."""
    return sorted(name for later, names in checkpoint_steps_in(log_dir).items()
                  if later > step and not (incomplete_only and model_filename(later) in names) for name in names)


def set_aside(log_dir, step, names):
    """Move `names` (files of log_dir) into a new folder log_dir/set_aside_after_stepNNNNNN[_K] and return
    it: a run continuing from `step` keeps them out of its way without deleting anything."""
    folder = bf.join(log_dir, f"{SET_ASIDE_PREFIX}{step:06d}")
    k = 1
    while bf.exists(folder):
        k += 1
        folder = bf.join(log_dir, f"{SET_ASIDE_PREFIX}{step:06d}_{k}")
    bf.makedirs(folder)
    for name in names:
        _move(bf.join(log_dir, name), bf.join(folder, name))
    return folder


def _move(src, dst):
    if "://" in src:
        bf.copy(src, dst)
        bf.remove(src)
    else:
        os.replace(src, dst)


def check_log_dir_is_free(log_dir, start_step, resume_dir=None):
    """Refuse to start where this run's saves could overwrite checkpoints of a different run.

    Files at steps >= start_step are a conflict, except the resumed checkpoint's own files when the run
    continues in the folder it was resumed from (whose later files are set aside first).
    """
    same_dir = resume_dir is not None and same_folder(resume_dir, log_dir)
    conflicts = sorted(
        name
        for step, names in checkpoint_steps_in(log_dir).items()
        if step > start_step or (step == start_step and not same_dir)
        for name in names
    )
    if conflicts:
        shown = ", ".join(conflicts[:4]) + (" ..." if len(conflicts) > 4 else "")
        steps = complete_steps(log_dir)
        newest = f"--resume_checkpoint {bf.join(log_dir, model_filename(steps[-1]))}" if steps else \
            "--resume_checkpoint <its newest modelNNNNNN.pt>"
        raise FileExistsError(
            f"the log dir {log_dir} already holds checkpoints at or after step {start_step} ({shown}); "
            f"this run would overwrite them. Set OPENAI_LOGDIR to a new folder, or continue that run with "
            f"{newest}"
        )


def read_config(directory):
    """The train_config.json in `directory`, or None when there is none."""
    path = bf.join(directory, CONFIG_NAME)
    if not bf.exists(path):
        return None
    with bf.BlobFile(path, "r") as f:
        return json.load(f)


def check_config_matches(saved, current, source):
    """Raise ValueError when the model flags both runs record, or the class names, differ (the
    flags that change no weight are not recorded: see config.checked_on_resume)."""
    problems = []
    saved_flags, flags = saved.get("model_flags", {}), current.get("model_flags", {})
    for key in sorted(set(saved_flags) & set(flags)):
        if saved_flags[key] != flags[key]:
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
