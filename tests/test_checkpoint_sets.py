"""Checkpoint sets that survive anything: real SIGKILLs of a training process in the middle of its saves,
resuming from an older complete set in the same folder, a full disk, and the exit status after a signal."""

import errno
import os
import shutil
import signal
import subprocess
import textwrap

import pytest
import torch as th

from _train_helpers import PYTHON, REPO, TIMEOUT, read_progress, tiny_loop
from guided_diffusion import train_state
from guided_diffusion.checkpoint import CheckpointFileError

# Trains tiny_loop(LOG_DIR, MAX_STEPS[, RESUME]). With PAUSE_AT=<checkpoint file name>, the save of that
# file stops for a minute once its temp file is written (announced as "wrote <temp name>"), so that a kill
# lands there: in the middle of a set, and of that file's atomic write.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import torch as th
    from _train_helpers import tiny_loop

    save = th.save

    def pausing_save(obj, f):
        save(obj, f)
        if os.path.basename(f.name).startswith(os.environ["PAUSE_AT"] + ".tmp-"):
            print("wrote", os.path.basename(f.name), flush=True)
            time.sleep(60)

    if os.environ.get("PAUSE_AT"):
        th.save = pausing_save
    tiny_loop(sys.argv[1], int(sys.argv[2]), *sys.argv[3:]).run_loop()
""")


def train(log_dir, max_steps, resume="", kill_during=None, stop_at=None, sig=signal.SIGKILL):
    """Run the driver -> (exit status, output). kill_during: a checkpoint file name; SIGKILL the run while
    that file is half written. stop_at: send `sig` when a line of the output contains this text."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests"), PAUSE_AT=kill_during or "")
    if kill_during:
        stop_at = f"wrote {kill_during}.tmp-"
    proc = subprocess.Popen([PYTHON, "-c", DRIVER, str(log_dir), str(max_steps), *([str(resume)] if resume else [])],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if stop_at is not None and stop_at in line:
            proc.send_signal(sig)
            break
    lines.append(proc.stdout.read())
    return proc.wait(timeout=TIMEOUT), "".join(lines)


def newest_model_file(log_dir):
    return max(log_dir.glob("model*.pt"))


def _load(path):
    return th.load(path, weights_only=True)


def assert_same_files(dir_a, dir_b, names):
    for name in names:
        a, b = _load(dir_a / name), _load(dir_b / name)
        if name.startswith("opt"):
            a, b = ({i: s["exp_avg_sq"] for i, s in x["state"].items()} for x in (a, b))
        assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a), name


def losses_by_step(log_dir):
    """{step: loss} from progress.csv; a step logged twice (before a kill and after the resume) must agree."""
    seen = {}
    for row in read_progress(log_dir):
        assert seen.setdefault(row["step"], row["loss"]) == row["loss"], row
    return seen


SET_6 = ["model000006.pt", "ema_0.9_000006.pt", "ema_0.99_000006.pt", "opt000006.pt"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run (sets at steps 2, 4, 6)."""
    log_dir = tmp_path_factory.mktemp("straight")
    status, out = train(log_dir, 6)
    assert status == 0, out
    return log_dir


@pytest.mark.slow
def test_sigkill_mid_save_then_resume_from_the_newest_model_file_is_exact(tmp_path, straight):
    run = tmp_path / "run"
    # 0. the first save killed before its model file: the same command again sets those files aside
    status, out = train(run, 6, kill_during="opt000002.pt")
    assert status == -signal.SIGKILL and not list(run.glob("model*")) and (run / "ema_0.9_000002.pt").exists()
    # 1. killed after the first file of step 4 went to its temp file: step 2 is the newest (complete) set
    status, out = train(run, 6, kill_during="ema_0.9_000004.pt")
    assert status == -signal.SIGKILL and "removed 1 temp file(s)" in out, out
    assert "moved the 2 files of incomplete checkpoint sets (no model file) aside" in out
    assert any(".tmp-" in p.name for p in run.iterdir()) and newest_model_file(run).name == "model000002.pt"
    # 2. resumed from it, killed with every file of step 4 renamed but the model file, still a temp file
    status, out = train(run, 6, resume=newest_model_file(run), kill_during="model000004.pt")
    assert status == -signal.SIGKILL and "removed 1 temp file(s)" in out, out
    assert {"opt000004.pt", "state000004.pt", "ema_0.9_000004.pt"} <= {p.name for p in run.iterdir()}
    assert newest_model_file(run).name == "model000002.pt"
    # 3. resumed again: the incomplete step-4 files are moved aside; killed in the middle of step 6's set
    status, out = train(run, 6, resume=newest_model_file(run), kill_during="ema_0.99_000006.pt")
    assert status == -signal.SIGKILL, out
    aside = run / "set_aside_after_step000002"
    assert f"aside to {aside}" in out and "removed 1 temp file(s)" in out, out
    assert sorted(p.name for p in aside.iterdir()) == ["ema_0.99_000004.pt", "ema_0.9_000004.pt", "opt000004.pt",
                                                       "state000004.pt"]
    # 4. resumed from the newest model file (step 4, complete): runs to the end
    status, out = train(run, 6, resume=newest_model_file(run))
    assert status == 0 and f"resuming from {run / 'model000004.pt'} at step 4" in out, out
    assert [p.name for p in (run / "set_aside_after_step000004").iterdir()] == ["ema_0.9_000006.pt"]
    assert not any(".tmp-" in p.name for p in run.rglob("*"))
    assert_same_files(straight, run, SET_6)
    assert losses_by_step(run) == losses_by_step(straight) and len(losses_by_step(run)) == 6


@pytest.mark.slow
def test_resume_from_an_older_complete_set_in_the_same_folder(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    status, out = train(run, 6, resume=run / "model000002.pt")
    assert status == 0, out
    aside = run / "set_aside_after_step000002"
    assert f"moved the 10 files of later checkpoints (complete or not) aside to {aside}" in out, out
    assert_same_files(straight, run, SET_6)  # the same as the set it replaced
    assert_same_files(straight, aside, SET_6 + ["model000004.pt"])  # moved, not deleted


def test_resuming_from_an_incomplete_or_damaged_set_is_refused_naming_the_file(tmp_path):
    tiny_loop(tmp_path, max_steps=4).run_loop()
    (tmp_path / "state000004.pt").unlink()  # as an interrupted save of the older code could leave it
    with pytest.raises(ValueError, match=r"incomplete checkpoint set \(state000004.pt missing\).*"
                                         r"--resume_checkpoint .*model000002.pt"):
        tiny_loop(tmp_path, max_steps=6, resume=tmp_path / "model000004.pt")
    (tmp_path / "opt000002.pt").write_bytes((tmp_path / "opt000002.pt").read_bytes()[:500])  # a damaged copy
    with pytest.raises(CheckpointFileError, match=r"opt000002.pt' is truncated .*expected the optimizer state"):
        tiny_loop(tmp_path, max_steps=6, resume=tmp_path / "model000002.pt")
    for name in ["opt000002.pt", "opt000004.pt", "state000002.pt"]:  # a release-style folder: no state files
        (tmp_path / name).unlink()
    assert tiny_loop(tmp_path, max_steps=6, resume=tmp_path / "model000004.pt").step == 4  # as released


def test_disk_full_during_a_save_names_the_intact_set(tmp_path, monkeypatch):
    tiny_loop(tmp_path, max_steps=2).run_loop()
    before = sorted(os.listdir(tmp_path))
    save = th.save

    def disk_fills_at_the_opt_file(obj, f):
        if "opt000004" in f.name:
            f.write(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f)

    monkeypatch.setattr(train_state.th, "save", disk_fills_at_the_opt_file)
    loop = tiny_loop(tmp_path, max_steps=4, resume=tmp_path / "model000002.pt")
    with pytest.raises(train_state.DiskFullError) as failure:
        loop.run_loop()
    message = str(failure.value)
    assert failure.value.errno == errno.ENOSPC and "the disk is full" in message and "step 4" in message
    assert f"intact: resume with --resume_checkpoint {tmp_path / 'model000002.pt'}" in message
    assert sorted(os.listdir(tmp_path)) == before  # step 4's partial files and temp file are gone
    monkeypatch.undo()
    tiny_loop(tmp_path, max_steps=4, resume=tmp_path / "model000002.pt").run_loop()
    assert (tmp_path / "model000004.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_logs_the_resume_command_and_exits_128_plus_its_number(tmp_path, sig):
    status, out = train(tmp_path, 1000, stop_at="saved checkpoint of step 2", sig=sig)
    assert status == 128 + sig, out  # 143 for SIGTERM, 130 for SIGINT
    step = int(out.split("saving step ")[1].split()[0])
    model = tmp_path / train_state.model_filename(step)
    assert f"stopped by {sig.name}; resume with --resume_checkpoint {model}" in out and model.exists()
    assert f"stopped by {sig.name}" in (tmp_path / "log.txt").read_text()
