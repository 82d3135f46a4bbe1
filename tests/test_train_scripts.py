"""The three training scripts end to end in subprocesses on tiny models: mpiexec with identical replicas,
learning on Fashion-MNIST, the classifier on the CPU, super-resolution, and bad input."""

import json
import os
import re
import signal
import subprocess
import textwrap
import time

import pytest
import torch as th

from _train_helpers import PYTHON, REPO, TINY_CLASSIFIER, TINY_UNET, read_progress, run_python, run_script, to_argv

# Wraps a script under MPI: runs its main(), then compares every rank's trained weights with rank 0's.
REPLICA_CHECK = textwrap.dedent("""
    import importlib.util, sys, torch as th, torch.distributed as dist
    from guided_diffusion import train_util
    loops, run_loop = [], train_util.TrainLoop.run_loop
    def keep(self):
        loops.append(self)
        run_loop(self)
    train_util.TrainLoop.run_loop = keep
    spec = importlib.util.spec_from_file_location("script", sys.argv[1])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.argv = sys.argv[1:]
    script.main()
    flat = th.cat([p.detach().flatten() for p in loops[0].model.parameters()])
    every = [th.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    if dist.get_rank() == 0:
        print("MAX_REPLICA_DIFF", max((x - every[0]).abs().max().item() for x in every))
""")


def test_mpiexec_two_ranks_identical_replicas_and_files(tmp_path, fashion_dir):
    wrapper = tmp_path / "replica_check.py"
    wrapper.write_text(REPLICA_CHECK)
    flags = dict(TINY_UNET, data_dir=fashion_dir, batch_size=4, microbatch=2, max_steps=3, log_interval=3,
                 save_interval=3, schedule_sampler="loss-second-moment", ema_rate="0.9999,0.99", dropout=0.1)
    log_dir = tmp_path / "log"
    argv = [REPO / "scripts" / "image_train.py", *to_argv(flags)]
    out = run_python([wrapper, *argv], ranks=2, env={"OPENAI_LOGDIR": str(log_dir)})
    diff = float(out.stdout.split("MAX_REPLICA_DIFF")[1].split()[0])
    assert diff == 0.0  # ranks start from different seeds: only the broadcast + all-reduce make them equal
    names = set(os.listdir(log_dir))
    assert {"model000003.pt", "ema_0.9999_000003.pt", "ema_0.99_000003.pt", "opt000003.pt", "state000003.pt",
            "progress.csv", "log.txt", "log-rank001.txt", "train_config.json"} <= names
    row = read_progress(log_dir)[-1]
    assert row["step"] == 3 and row["samples"] == 3 * 4 * 2
    assert len(th.load(log_dir / "state000003.pt", weights_only=True)["ranks"]) == 2


def test_class_conditional_model_learns_fashion_mnist(tmp_path, fashion_dir):
    """The loss starts near 1 (the zero-initialised output predicts eps = 0) and falls within 150 CPU steps
    (~20 s) to ~0.07 overall and ~0.2 for t < 250. Thresholds 0.15 and 0.3 exclude a model that ignores its
    input (loss 1) and one that copies x_t as its eps guess (about 0.3 overall, about 0.8 for t < 250)."""
    flags = dict(TINY_UNET, image_size=16, attention_resolutions="8", data_dir=fashion_dir, batch_size=8,
                 lr=2e-3, max_steps=150, log_interval=10, save_interval=150, diffusion_steps=1000, ema_warmup=True)
    run_script("image_train", flags, tmp_path)
    rows = read_progress(tmp_path)
    first, last = rows[0], rows[-1]
    assert last["step"] == 150 and first["loss"] > 0.5, first
    assert last["loss"] < 0.15 and last["loss_q0"] < 0.3, last
    # train_config.json: the typed configs' flags (the model's are checked on resume) and the classes
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["model_flags"]["num_channels"] == 32 and saved["model_flags"]["image_channels"] == 3
    assert "lr" not in saved["model_flags"] and "use_checkpoint" not in saved["model_flags"]  # free on resume
    assert saved["train_flags"]["ema_warmup"] is True
    assert saved["train_flags"]["lr"] == 2e-3 and len(saved["class_names"]) == 10


def test_classifier_train_runs_on_cpu_evaluates_and_resumes(tmp_path, fashion_dir):
    flags = dict(TINY_CLASSIFIER, data_dir=fashion_dir, val_data_dir=fashion_dir, batch_size=8, iterations=4,
                 log_interval=2, eval_interval=2, save_interval=2, anneal_lr=True)
    run_script("classifier_train", flags, tmp_path)
    row = read_progress(tmp_path)[-1]
    assert {"train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1", "val_acc@5"} <= set(row)
    assert 0 <= row["val_acc@1"] <= row["val_acc@5"] <= 1
    assert {"model000004.pt", "opt000004.pt"} <= set(os.listdir(tmp_path))
    flags.update(iterations=6, resume_checkpoint=tmp_path / "model000004.pt")
    run_script("classifier_train", flags, tmp_path)
    assert read_progress(tmp_path)[-1]["step"] == 6 and (tmp_path / "model000006.pt").exists()


def test_super_res_train_conditions_on_area_downsampled_images(tmp_path, fashion_dir):
    """At a size without a default channel multiplier (the release's upsampler knew 64, 256 and 512 only)."""
    flags = dict(data_dir=fashion_dir, large_size=32, small_size=16, channel_mult="1,2", num_channels=32,
                 num_res_blocks=1, attention_resolutions="8", diffusion_steps=100, batch_size=2, max_steps=2,
                 log_interval=2)
    run_script("super_res_train", flags, tmp_path)
    assert (tmp_path / "model000002.pt").exists() and read_progress(tmp_path)[-1]["loss"] > 0


@pytest.mark.parametrize("case", ["empty_dir", "missing_resume", "other_flags", "too_many_classes"])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, fashion_dir, case):
    flags = dict(TINY_UNET, data_dir=fashion_dir, batch_size=2, max_steps=1, save_interval=1)
    if case == "other_flags":
        run_script("image_train", flags, tmp_path / "first")
        flags.update(num_channels=64, resume_checkpoint=tmp_path / "first" / "model000001.pt")
        expected = r"--num_channels 64 contradicts the checkpoint \(32, from .*train_config.json\)"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        flags["data_dir"] = tmp_path / "empty"
        expected = "no image files"
    elif case == "missing_resume":
        flags["resume_checkpoint"] = tmp_path / "model000009.pt"
        expected = "--resume_checkpoint .*model000009.pt.* does not exist"
    else:
        flags["num_classes"] = 5
        expected = "the data has 10 classes .* pass --num_classes 10"
    before = sorted(os.listdir(tmp_path / "first")) if case == "other_flags" else None
    result = run_script("image_train", flags, tmp_path / "log", check=False)
    assert result.returncode != 0
    assert re.search(expected, result.stderr), result.stderr[-3000:]
    log_dir = tmp_path / "log"  # flag errors come before the log dir is made
    assert not any(n.endswith(".pt") for n in (os.listdir(log_dir) if log_dir.exists() else []))
    if before is not None:
        assert sorted(os.listdir(tmp_path / "first")) == before


def test_mpiexec_resume_is_exact(tmp_path, fashion_dir):
    """Two ranks: 2 steps + resume + 2 steps gives the same weights as 4 steps (per-rank RNG and data)."""
    flags = dict(TINY_UNET, data_dir=fashion_dir, batch_size=2, log_interval=2, save_interval=2, dropout=0.1)
    run_script("image_train", dict(flags, max_steps=4), tmp_path / "straight", ranks=2)
    run_script("image_train", dict(flags, max_steps=2), tmp_path / "split", ranks=2)
    run_script("image_train", dict(flags, max_steps=4, resume_checkpoint=tmp_path / "split" / "model000002.pt"),
               tmp_path / "split", ranks=2)
    for name in ["model000004.pt", "ema_0.9999_000004.pt"]:
        a = th.load(tmp_path / "straight" / name, weights_only=True)
        b = th.load(tmp_path / "split" / name, weights_only=True)
        assert all(th.equal(a[k], b[k]) for k in a), name
    assert read_progress(tmp_path / "straight")[-1] == read_progress(tmp_path / "split")[-1]


def test_sigterm_to_the_whole_process_group_saves_and_exits(tmp_path, fashion_dir):
    """As a cluster scheduler does: the signal reaches the data-loading worker too."""
    flags = dict(TINY_UNET, image_size=16, attention_resolutions="8", data_dir=fashion_dir, batch_size=2,
                 log_interval=1000, save_interval=100000)
    env = dict(os.environ, OPENAI_LOGDIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # this checkout
    proc = subprocess.Popen([PYTHON, str(REPO / "scripts" / "image_train.py"), *to_argv(flags)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("training"):
            break
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest  # a stopped run does not look finished
    step = int(re.search(r"saving step (\d+)", rest).group(1))
    assert step > 0 and (tmp_path / f"model{step:06d}.pt").exists()
