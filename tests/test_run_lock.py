"""One training run per log dir (run_lock), with real processes: a second run started while the first
trains is refused before it writes anything, a killed run's lock is taken over with a warning, and under
mpiexec every rank stops when rank 0 finds the dir taken."""

import json
import os
import pickle
import re
import signal
import subprocess

import pytest

from guided_diffusion import run_lock

from _train_helpers import PYTHON, REPO, TINY_UNET, run_script, to_argv

FLAGS = dict(TINY_UNET, image_size=16, attention_resolutions="8", batch_size=2, save_interval=100000)


def start_training(log_dir, data_dir):
    """image_train in its own process group, returned once it has logged a training step (it holds the lock)."""
    env = dict(os.environ, OPENAI_LOGDIR=str(log_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([PYTHON, str(REPO / "scripts" / "image_train.py"),
                             *to_argv(dict(FLAGS, data_dir=data_dir, log_interval=1))],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"\|\s*step\s*\|", line):
            return proc
    raise AssertionError(f"the first run ended before training ({proc.wait()}):\n{''.join(seen)[-3000:]}")


@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_trains_and_a_killed_runs_lock_is_taken_over(tmp_path, fashion_dir):
    log_dir = tmp_path / "log"
    first = start_training(log_dir, fashion_dir)
    try:
        record = json.loads((log_dir / "run.lock").read_text())
        assert record["pid"] == first.pid
        second = run_script("image_train", dict(FLAGS, data_dir=fashion_dir, max_steps=1), log_dir, check=False)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as a crash would: no handler runs, the record stays
        first.wait()
    assert second.returncode != 0
    error = f"{log_dir} is in use by another training run (host {record['host']}, pid {first.pid}, started "
    assert error in second.stderr and "set OPENAI_LOGDIR to another folder, or wait" in second.stderr
    log_text = (log_dir / "log.txt").read_text()
    assert log_text.count("Logging to") == 1 and "creating model" in log_text  # the second wrote nothing
    assert sorted(os.listdir(log_dir)) == ["log.txt", "progress.csv", "run.lock", "train_config.json"]

    third = run_script("image_train", dict(FLAGS, data_dir=fashion_dir, max_steps=1), log_dir)
    assert re.search(rf"WARNING: took over .*run\.lock from a run that is gone \(host .*, pid {first.pid}, ",
                     third.stdout), third.stdout[-3000:]
    assert (log_dir / "model000001.pt").exists()
    assert (log_dir / "run.lock").read_text() == ""  # a run that ends releases its record


@pytest.mark.slow
def test_every_rank_stops_when_rank_0_finds_the_log_dir_taken(tmp_path, fashion_dir):
    log_dir = tmp_path / "log"
    assert run_lock.acquire(str(log_dir)) == []  # this test process is the live holder
    assert run_lock.acquire(str(log_dir)) == []  # holding it already, a second call changes nothing
    result = run_script("image_train", dict(FLAGS, data_dir=fashion_dir, max_steps=1), log_dir, ranks=2,
                        check=False)
    assert result.returncode != 0
    assert "in use by another training run (host " in result.stderr and f"pid {os.getpid()}," in result.stderr
    assert os.listdir(log_dir) == ["run.lock"]  # neither rank started logging


def test_the_refusal_reaches_other_ranks_intact():
    """on_rank0 sends rank 0's exception to the other ranks by pickling it."""
    error = run_lock.LogDirInUse("runs/x is in use by another training run (host h, pid 1, started t)")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is run_lock.LogDirInUse and isinstance(copy, FileExistsError) and str(copy) == str(error)
