"""Usage errors are one line (guided_diffusion/errors.py): every script, run as a subprocess, ends a user
error with `script.py: error: <what and the fix>` on stderr, no traceback and exit code 2, and a run that
had to stop with exit code 1; nothing is written; --debug shows the traceback; under mpiexec one rank
prints and every rank exits."""

import re
import shutil

import pytest

from _train_helpers import REPO, TINY_RUN, run_python, run_script, to_argv


def assert_one_line_error(result, script, code, pattern):
    """Exit code `code`, no traceback, no usage block, and one `script: error: ...` line matching pattern."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]


def assert_nothing_written(folder):
    """No sample batch (npz) and no checkpoint (pt) under folder, if it exists at all."""
    assert not [p.name for p in folder.rglob("*") if p.suffix in (".npz", ".pt")] if folder.exists() else True


def bare_copy(path, folder):
    """path copied into a new folder without the train_config.json of its run."""
    folder.mkdir()
    return shutil.copy(path, folder / path.name)


def empty_dir(folder):
    folder.mkdir()
    return folder


TRAIN = dict(TINY_RUN, batch_size=2, max_steps=2)

# name: (script, argv(tiny_runs, tmp_path), exit code, pattern of the error line)
CASES = {
    "contradicting flag": ("image_sample", lambda r, t: ["--model_path", r["ema"], "--num_channels", "64"], 2,
                           r"--num_channels 64 contradicts the checkpoint \(32, from .*train_config.json\)"),
    "bad choice": ("image_sample", lambda r, t: ["--model_path", r["ema"], "--sampler", "euler"], 2,
                   r"argument --sampler: invalid choice: 'euler'"),
    "bad label": ("image_sample", lambda r, t: ["--model_path", r["ema"], "--class_labels", "0,5"], 2,
                  r"--class_labels \[5\] are outside \[0, 2\)"),
    "missing checkpoint": ("image_sample", lambda r, t: ["--model_path", t / "nope.pt"], 2,
                           r"--model_path '.*nope.pt' does not exist"),
    "foreign file": ("image_sample", lambda r, t: ["--model_path", bare_copy(REPO / "README.md", t / "f")], 2,
                     r"README.md' is not a torch checkpoint"),
    "classifier as model": ("image_sample", lambda r, t: ["--model_path", r["classifier"]], 2,
                            r"holds a noisy-image classifier .*, not a diffusion model"),
    "model as upsampler": ("super_res_sample", lambda r, t: ["--model_path", r["ema"]], 2,
                           r"holds a diffusion model .*, not a super-resolution model"),
    "mismatched checkpoint": ("image_sample", lambda r, t: ["--model_path", bare_copy(r["ema"], t / "bare"),
                                                            *to_argv(dict(TINY_RUN, num_channels=64))], 2,
                              r"ema_0.9_000002.pt does not fit the model built from these flags"),
    "narrow model": ("image_train", lambda r, t: to_argv(dict(TRAIN, data_dir=r["data"], num_channels=16)), 2,
                     r"--num_channels 16 with --channel_mult 1,2 gives levels of 16, 32 channels, but GroupNorm\(32\) "
                     r"needs every level to be a multiple of 32: use e.g. --num_channels 32"),
    "odd multiplier": ("image_train", lambda r, t: to_argv(dict(TRAIN, data_dir=r["data"], channel_mult="1,1.5")), 2,
                       r"--num_channels 32 with --channel_mult 1,1.5 gives levels of 32, 48 channels.* "
                       r"--num_channels 64"),
    "narrow classifier": ("classifier_train", lambda r, t: ["--data_dir", r["data"], "--classifier_width", "48"], 2,
                          r"--classifier_width 48 with --classifier_channel_mult 1,2,3,4 gives levels of 48, 96, 144, "
                          r"192 channels"),
    "empty data dir": ("image_train", lambda r, t: to_argv(dict(TRAIN, data_dir=empty_dir(t / "empty"))), 2,
                       r"no image files .* found under"),
    "empty nll data": ("image_nll", lambda r, t: ["--model_path", r["ema"], "--data_dir", empty_dir(t / "empty")], 2,
                       r"no image files .* found under"),
    "impossible sweep": ("sweep", lambda r, t: ["--model_path", r["ema"], "--ref_batch", "ref.npz", "--samplers",
                                                "euler", "--out_dir", t / "log"], 2,
                         r"--samplers: unknown \['euler'\]"),
    "non-finite steps": ("image_train", lambda r, t: to_argv(dict(TRAIN, data_dir=r["data"], lr=1e30,
                                                                  max_skipped_steps=1)), 1,
                         r"1 consecutive steps were skipped .* no checkpoint was written yet\. Lower --lr"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_errors_are_one_line_and_write_nothing(case, tiny_runs, tmp_path):
    script, argv, code, pattern = CASES[case]
    result = run_script(script, argv(tiny_runs, tmp_path), tmp_path / "log", check=False)
    assert_one_line_error(result, f"{script}.py", code, pattern)
    assert_nothing_written(tmp_path / "log")


TOOLS = {
    "evaluator": (["evaluations/evaluator.py", "nope.npz", "nope.npz"], r"nope.npz does not exist"),
    "tools": (["evaluations/tools.py", "to_png", "nope.npz", "png"], r"nope.npz does not exist"),
    "plots": (["evaluations/plots.py", "training", "nope.csv"], r"No such file or directory: nope.csv"),
    "fashion_mnist": (["datasets/fashion_mnist.py", "--out_dir", "x", "--channels", "2"],
                      r"argument --channels: invalid choice: 2"),
    "fashion_mnist_judge": (["datasets/fashion_mnist_judge.py", "nope.npz"], r"No such file or directory: nope.npz"),
}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_evaluation_and_dataset_errors_are_one_line(name):
    argv, pattern = TOOLS[name]
    result = run_python(argv, check=False)
    assert_one_line_error(result, argv[0].split("/")[-1], 2, pattern)


def test_a_full_disk_stops_training_with_one_line(tiny_runs, tmp_path):
    """ENOSPC while the first checkpoint is written (train_state.save_atomically fails as on a full disk)."""
    script = REPO / "scripts" / "image_train.py"
    code = (
        "import errno, runpy, sys\n"
        "from guided_diffusion import train_state\n"
        "def full(obj, path):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', path)\n"
        "train_state.save_atomically = full\n"
        f"sys.argv = [{str(script)!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    argv = to_argv(dict(TRAIN, data_dir=tiny_runs["data"], save_interval=1))
    result = run_python(["-c", code, *argv], env={"OPENAI_LOGDIR": str(tmp_path / "log")}, check=False)
    assert_one_line_error(result, "image_train.py", 1, r"the disk is full: the checkpoint of step 1 could not be "
                                                       r"written .* no earlier checkpoint set exists\. Free some space")
    assert_nothing_written(tmp_path / "log")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(tiny_runs, tmp_path, how):
    argv = ["scripts/image_sample.py", "--model_path", tiny_runs["ema"], "--num_channels", "64"]
    argv, env = (argv + ["--debug"], None) if how == "flag" else (argv, {"GUIDED_DIFFUSION_DEBUG": "1"})
    result = run_python(argv, env=dict(env or {}, OPENAI_LOGDIR=str(tmp_path / "log")), check=False)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "run_flags.py" in result.stderr
    assert "image_sample.py: error: --num_channels 64 contradicts the checkpoint (32" in result.stderr


@pytest.mark.slow
def test_under_mpiexec_one_rank_prints_and_every_rank_exits(tiny_runs, tmp_path):
    """The bad label is found after the process group and the log dir were set up, on both ranks."""
    result = run_script("image_sample", ["--model_path", tiny_runs["ema"], "--class_labels", "7"], tmp_path / "log",
                        ranks=2, check=False)
    assert_one_line_error(result, "image_sample.py", 2, r"--class_labels \[7\] are outside \[0, 2\)")
    assert "[rank" not in result.stderr
    assert_nothing_written(tmp_path / "log")


def test_the_error_wrapper_does_not_hide_a_bug(tmp_path):
    """An exception that is neither a usage error nor a stop keeps its traceback (exit code 1)."""
    code = "from guided_diffusion.errors import run\ndef main():\n    raise KeyError('a bug')\nrun(main)\n"
    result = run_python(["-c", code], check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr
    assert not any(": error: " in line for line in result.stderr.splitlines())


def test_a_rank_whose_peer_left_says_so_in_one_line():
    """gloo's error on the ranks still waiting in a collective when another rank has exited."""
    code = ("from guided_diffusion.errors import run\ndef main():\n"
            "    raise RuntimeError('[pair.cc:553] Connection closed by peer [127.0.0.1]:4523')\nrun(main)\n")
    result = run_python(["-c", code], check=False)
    assert_one_line_error(result, "-c", 1, r"^-c: error: another rank stopped; rerun with --debug to see each rank's "
                                           r"error$")
