"""The three training scripts end to end in subprocesses on tiny models: mpiexec with identical replicas,
learning on Fashion-MNIST, the classifier on the CPU, super-resolution, and bad input."""

import json
import os
import re
import signal
import subprocess
import textwrap

import pytest
import torch as th

from guided_diffusion.build import build_classifier, build_unet
from guided_diffusion.config import ClassifierConfig, ModelConfig, split_flags
from guided_diffusion.train_util import seed_all

from _train_helpers import (PYTHON, REPO, TIMEOUT, TINY_CLASSIFIER, TINY_UNET, read_progress, run_python, run_script,
                            to_argv)

# The start of the wrappers below: run_main(path, argv) runs a script's main() with sys.argv = [path, *argv].
RUN_MAIN = textwrap.dedent("""
    import importlib.util, sys
    def run_main(path, argv):
        spec = importlib.util.spec_from_file_location("script", path)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        sys.argv = [path, *argv]
        script.main()
""")

# Wraps a script under MPI: runs its main(), then compares every rank's trained weights with rank 0's.
REPLICA_CHECK = RUN_MAIN + textwrap.dedent("""
    import torch as th, torch.distributed as dist
    from guided_diffusion import train_util
    loops, run_loop = [], train_util.TrainLoop.run_loop
    def keep(self):
        loops.append(self)
        run_loop(self)
    train_util.TrainLoop.run_loop = keep
    run_main(sys.argv[1], sys.argv[2:])
    flat = th.cat([p.detach().flatten() for p in loops[0].model.parameters()])
    every = [th.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    if dist.get_rank() == 0:
        print("MAX_REPLICA_DIFF", max((x - every[0]).abs().max().item() for x in every))
""")

# Runs a training script (argv[2:]) until its loop is built, then saves the loop's fp32 master weights (at
# step 0) to argv[1] instead of training.
MASTERS_AT_START = RUN_MAIN + textwrap.dedent("""
    import torch as th
    from guided_diffusion import train_util
    def save_masters(self, out=sys.argv[1]):
        assert self.mp_trainer.use_fp16 and any(p.dtype == th.float16 for p in self.model.parameters())
        th.save(self.mp_trainer.master_params_to_state_dict(self.mp_trainer.master_params), out)
    train_util._LoopBase.run_loop = save_masters
    run_main(sys.argv[2], sys.argv[3:])
""")


@pytest.mark.parametrize("script", ["image_train", "classifier_train"])
def test_fp16_master_weights_start_from_the_float32_initialisation(tmp_path, fashion_dir, script):
    """As released: the script builds the model in float32 and the trainer copies those weights to its fp32
    masters before casting the torso, so the masters at step 0 are the seed's float32 initialisation."""
    if script == "image_train":
        flags, build, config_class, fp16_flag = TINY_UNET, build_unet, ModelConfig, "use_fp16"
    else:
        flags, build, config_class, fp16_flag = TINY_CLASSIFIER, build_classifier, ClassifierConfig, "classifier_use_fp16"
    flags = dict(flags, **{fp16_flag: True})
    wrapper, saved = tmp_path / "masters.py", tmp_path / "masters.pt"
    wrapper.write_text(MASTERS_AT_START)
    argv = [REPO / "scripts" / f"{script}.py", *to_argv(dict(flags, data_dir=fashion_dir, batch_size=4, seed=5))]
    run_python([wrapper, saved, *argv], env={"OPENAI_LOGDIR": str(tmp_path / "log")})
    float32_flags = {k: v for k, v in flags.items() if k != "diffusion_steps"}
    seed_all(5)
    initial = build(split_flags(dict(float32_flags, **{fp16_flag: False}), config_class)[0]).state_dict()
    masters = th.load(saved, weights_only=True)
    assert all(v.dtype == th.float32 for v in [*masters.values(), *initial.values()])
    assert masters.keys() == initial.keys() and all(th.equal(masters[k], v) for k, v in initial.items())
    assert not all(th.equal(v.half().float(), v) for v in initial.values())  # rounding would have shown


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# Runs super_res_train.py recording, at every training_losses call, the clean batch and model_kwargs'
# low_res, and the low_res the model itself receives; saves them to argv[1].
SUPER_RES_PROBE = textwrap.dedent("""
    import runpy, sys, torch as th
    from guided_diffusion.gaussian_diffusion import GaussianDiffusion
    from guided_diffusion.unet import SuperResModel
    seen = {"x_start": [], "low_res": [], "model_low_res": []}
    training_losses, forward = GaussianDiffusion.training_losses, SuperResModel.forward
    def record_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        seen["x_start"].append(x_start.clone())
        seen["low_res"].append(model_kwargs["low_res"].clone())
        return training_losses(self, model, x_start, t, model_kwargs=model_kwargs, noise=noise)
    def record_forward(self, x, timesteps, low_res=None, **kwargs):
        seen["model_low_res"].append(low_res.detach().clone())
        return forward(self, x, timesteps, low_res=low_res, **kwargs)
    GaussianDiffusion.training_losses, SuperResModel.forward = record_losses, record_forward
    out, sys.argv = sys.argv[1], sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    th.save(seen, out)
""")


def test_super_res_train_conditions_on_area_downsampled_images(tmp_path, fashion_dir):
    """At a size without a default channel multiplier (the release's upsampler knew 64, 256 and 512 only):
    32 -> 8, so each low-res pixel is the mean of a 4 x 4 block (bilinear or nearest would differ)."""
    flags = dict(data_dir=fashion_dir, large_size=32, small_size=8, channel_mult="1,2", num_channels=32,
                 num_res_blocks=1, attention_resolutions="8", diffusion_steps=100, batch_size=2, max_steps=2,
                 log_interval=2)
    probe = tmp_path / "probe.py"
    probe.write_text(SUPER_RES_PROBE)
    run_python([probe, tmp_path / "seen.pt", REPO / "scripts" / "super_res_train.py", *to_argv(flags)],
               env={"OPENAI_LOGDIR": str(tmp_path)})
    assert (tmp_path / "model000002.pt").exists() and read_progress(tmp_path)[-1]["loss"] > 0
    seen = th.load(tmp_path / "seen.pt", weights_only=True)
    assert len(seen["x_start"]) == 2 and len(seen["model_low_res"]) == 2
    for x_start, low_res, model_low_res in zip(seen["x_start"], seen["low_res"], seen["model_low_res"]):
        assert x_start.shape == (2, 3, 32, 32) and low_res.shape == (2, 3, 8, 8)
        assert x_start.std() > 0.3  # Fashion-MNIST items, not flat blocks
        assert th.allclose(low_res, x_start.view(2, 3, 8, 4, 8, 4).mean(dim=(3, 5)), atol=1e-6)
        assert th.equal(model_low_res, low_res)
    assert not th.equal(seen["low_res"][0], seen["low_res"][1])


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


@pytest.mark.slow
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


RESUMED_RUNS = {  # script, its flags, the flag that sets the step count, the files of a checkpoint set
    "classifier_train": ("classifier_train", dict(TINY_CLASSIFIER, image_size=16, classifier_attention_resolutions="8",
                                                  eval_interval=1),
                         "iterations", ["model", "opt"]),
    "super_res_train": ("super_res_train", dict(large_size=32, small_size=8, channel_mult="1,2", num_channels=32,
                                                num_res_blocks=1, attention_resolutions="8", diffusion_steps=100,
                                                class_cond=True, dropout=0.1, learn_sigma=True),
                        "max_steps", ["model", "ema_0.9999_", "opt"]),
    "bf16": ("image_train", dict(TINY_UNET, image_size=16, attention_resolutions="8", dropout=0.1, learn_sigma=True,
                                 use_bf16=True), "max_steps", ["model", "ema_0.9999_", "opt"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RESUMED_RUNS))
def test_resume_is_exact(tmp_path, fashion_dir, case):
    """2 steps, then a resume for 2 more, gives the weights, EMA, optimizer state and logged losses
    of 4 uninterrupted steps (RNG, data and validation streams, schedule sampler restored)."""
    script, flags, steps_flag, prefixes = RESUMED_RUNS[case]
    flags = dict(flags, data_dir=fashion_dir, batch_size=2, log_interval=1, save_interval=2)
    if script == "classifier_train":
        flags["val_data_dir"] = fashion_dir
    run_script(script, dict(flags, **{steps_flag: 4}), tmp_path / "straight")
    run_script(script, dict(flags, **{steps_flag: 2}), tmp_path / "split")
    run_script(script, dict(flags, **{steps_flag: 4}, resume_checkpoint=tmp_path / "split" / "model000002.pt"),
               tmp_path / "split")
    for prefix in prefixes:
        a, b = (th.load(tmp_path / run / f"{prefix}000004.pt", weights_only=True) for run in ("straight", "split"))
        if prefix == "opt":
            a, b = a["state"], b["state"]
            a, b = ({f"{i}.{k}": v for i, state in x.items() for k, v in state.items()} for x in (a, b))
        assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a), prefix
    straight, split = read_progress(tmp_path / "straight"), read_progress(tmp_path / "split")
    assert [row["step"] for row in split] == [1, 2, 3, 4] and split == straight
    assert straight[-1]["train_loss" if script == "classifier_train" else "loss"] > 0
    first = th.load(tmp_path / "straight" / "model000002.pt", weights_only=True)
    last = th.load(tmp_path / "straight" / "model000004.pt", weights_only=True)
    assert any(not th.equal(first[k], last[k]) for k in first)  # steps 3 and 4 did train


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_and_exits(tmp_path, fashion_dir):
    """As a cluster scheduler does: the signal reaches the data-loading worker too."""
    flags = dict(TINY_UNET, image_size=16, attention_resolutions="8", data_dir=fashion_dir, batch_size=2,
                 log_interval=1, save_interval=100000)
    env = dict(os.environ, OPENAI_LOGDIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # this checkout
    proc = subprocess.Popen([PYTHON, str(REPO / "scripts" / "image_train.py"), *to_argv(flags)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if re.match(r"\|\s*step\s*\|", line):  # a logged row: the loop (and its signal handlers) runs
            break
    os.killpg(proc.pid, signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM, rest  # a stopped run does not look finished
    step = int(re.search(r"saving step (\d+)", rest).group(1))
    assert step > 0 and (tmp_path / f"model{step:06d}.pt").exists()
