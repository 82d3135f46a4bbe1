"""TrainLoop / MixedPrecisionTrainer in-process on tiny models: exact resume, fp16 skips, EMA and its warm-up,
checkpoint files, signals, and the refusals (missing resume file, other flags, overwriting another run)."""

import os
import signal

import pytest
import torch as th
import torch.nn as nn

from guided_diffusion import logger, train_state
from guided_diffusion.checkpoint import CheckpointMismatchError
from guided_diffusion.config import TrainConfig
from guided_diffusion.fp16_util import GRAD_OVERFLOW, NONFINITE_LOSS, STEP_TAKEN, MixedPrecisionTrainer
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.train_util import TrainingStopped, TrainLoop, ema_rate_at, log_loss_dict, seed_all, update_ema

from _train_helpers import TINY_UNET, read_progress, tiny_loop


def make_loop(log_dir, data_dir, resume="", data=None, model_overrides=None, **config_fields):
    """A tiny class-conditional, learned-sigma, dropout UNet on Fashion-MNIST, seeded and built (in float32,
    use_fp16 going to the loop) like a script; config_fields: TrainConfig fields (they win)."""
    logger.configure(dir=str(log_dir), format_strs=["csv"])
    seed_all(0)
    flags = model_and_diffusion_defaults()
    flags.update(TINY_UNET, dropout=0.1, learn_sigma=True, **(model_overrides or {}))
    model, diffusion = create_model_and_diffusion(**dict(flags, use_fp16=False))
    if data is None:
        data = load_data(data_dir=str(data_dir), batch_size=4, image_size=32, class_cond=True, num_workers=0)
    config = dict(batch_size=4, microbatch=2, lr=1e-3, ema_rate="0.9,0.99", log_interval=3, save_interval=3,
                  resume_checkpoint=resume, schedule_sampler="loss-second-moment")
    return TrainLoop(model=model, diffusion=diffusion, data=data, config=TrainConfig(**dict(config, **config_fields)),
                     use_fp16=flags["use_fp16"],
                     run_config={"model_flags": flags, "class_names": getattr(data, "class_names", None)})


def _load(path):
    return th.load(path, weights_only=True)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert th.equal(a[k], b[k]), k


def test_resume_is_exact(tmp_path, fashion_dir):
    straight = make_loop(tmp_path / "a", fashion_dir, max_steps=6)
    straight.run_loop()
    first = make_loop(tmp_path / "b", fashion_dir, max_steps=3)
    first.run_loop()
    resumed = make_loop(tmp_path / "b", fashion_dir, resume=str(tmp_path / "b" / "model000003.pt"), max_steps=6)
    assert resumed.step == 3
    resumed.run_loop()
    for name in ["model000006.pt", "ema_0.9_000006.pt", "ema_0.99_000006.pt"]:
        _assert_same_state(_load(tmp_path / "a" / name), _load(tmp_path / "b" / name))
    opt_a, opt_b = _load(tmp_path / "a" / "opt000006.pt"), _load(tmp_path / "b" / "opt000006.pt")
    for i, state in opt_a["state"].items():
        assert th.equal(state["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])
    rows_a, rows_b = read_progress(tmp_path / "a"), read_progress(tmp_path / "b")
    assert [r["step"] for r in rows_b] == [3.0, 6.0]  # progress.csv continued, not truncated
    assert rows_a[-1] == rows_b[-1] and rows_a[-1]["loss"] > 0
    assert not th.equal(_load(tmp_path / "a" / "model000003.pt")["out.2.weight"],
                        _load(tmp_path / "a" / "model000006.pt")["out.2.weight"])  # it did train


def test_checkpoint_files_and_numbering(tmp_path, fashion_dir):
    loop = make_loop(tmp_path, fashion_dir, max_steps=2, save_interval=2, ema_rate="0.5")
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    loop.run_loop()
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pt"))
    assert names == ["ema_0.5_000002.pt", "model000002.pt", "opt000002.pt", "state000002.pt"]
    model_sd = _load(tmp_path / "model000002.pt")
    assert list(model_sd) == list(loop.model.state_dict()) and all(v.dtype == th.float32 for v in model_sd.values())
    state = _load(tmp_path / "state000002.pt")
    assert state["step"] == 2 and state["trainer"]["lg_loss_scale"] == 20.0 and len(state["ranks"]) == 1
    assert not any(".tmp-" in n for n in os.listdir(tmp_path))
    config = train_state.read_config(str(tmp_path))
    assert config["model_flags"]["num_channels"] == 32 and config["class_names"][0] == "0-tshirt"
    # EMA at rate 0.5 after two steps: 0.25 * w0 + 0.25 * w1 + 0.5 * w2 (w1 unknown) -> check the last leg only
    ema = _load(tmp_path / "ema_0.5_000002.pt")
    assert not th.equal(ema["out.2.weight"], model_sd["out.2.weight"])
    assert not th.equal(ema["out.2.weight"], before["out.2.weight"])


def test_update_ema_closed_form():
    target, source = [th.tensor([1.0, 2.0])], [th.tensor([3.0, -2.0])]
    update_ema(target, source, rate=0.75)
    assert th.allclose(target[0], th.tensor([1.5, 1.0]))


def test_ema_warmup_rate_closed_form():
    assert [ema_rate_at(0.9999, n, warmup=True) for n in (1, 2, 10)] == [2 / 11, 3 / 12, 11 / 20]
    assert ema_rate_at(0.9, 80, warmup=True) == 81 / 90 and ema_rate_at(0.9, 81, warmup=True) == 0.9  # capped
    assert ema_rate_at(0.9999, 1, warmup=False) == 0.9999  # off: the release's fixed rate


def test_ema_warmup_in_the_loop_follows_the_closed_form(tmp_path):
    loop = tiny_loop(tmp_path, max_steps=4, ema_warmup=True, save_interval=1)
    ema = {k: v.clone() for k, v in loop.model.state_dict().items()}  # the EMA starts at the initial weights
    loop.run_loop()
    for n in range(1, 5):
        weights = _load(tmp_path / f"model{n:06d}.pt")
        rate = min(0.99, (1 + n) / (10 + n))
        for k in ema:
            ema[k] = ema[k] * rate + weights[k] * (1 - rate)
        saved = _load(tmp_path / f"ema_0.99_{n:06d}.pt")
        assert all(th.allclose(saved[k], ema[k], rtol=0, atol=1e-6) for k in ema), n
    # (1 + n) / (10 + n) < 0.9 for n <= 4: both rates follow the warm-up and give the same EMA
    assert all(th.equal(saved[k], v) for k, v in _load(tmp_path / "ema_0.9_000004.pt").items())


def test_log_loss_dict_quartiles(tmp_path):
    class Diffusion:
        num_timesteps = 8

    logger.configure(dir=str(tmp_path), format_strs=[])
    log_loss_dict(Diffusion, th.tensor([0, 1, 2, 7]), {"loss": th.tensor([1.0, 3.0, 5.0, 7.0])})
    row = logger.dumpkvs()
    assert row == {"loss": 4.0, "loss_q0": 2.0, "loss_q1": 5.0, "loss_q3": 7.0}  # no t in quartile 2


class Toy(nn.Module):
    """A half-precision 1x1 conv followed by an fp32 scale, like the UNet's fp16 torso and fp32 head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.scale = nn.Parameter(th.ones(1))

    def convert_to_fp16(self):
        self.conv.half()

    def forward(self, x):
        return self.conv(x.to(self.conv.weight.dtype)).float() * self.scale


def test_fp16_overflow_skips_lowers_scale_and_keeps_fp32_masters(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    model = Toy()
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True, fp16_scale_growth=0.5)
    opt = th.optim.AdamW(trainer.master_params, lr=0.1)
    masters = [p.detach().clone() for p in trainer.master_params]
    assert model.conv.weight.dtype == th.float16 and all(p.dtype == th.float32 for p in trainer.master_params)

    trainer.zero_grad()
    trainer.backward(model(th.ones(1, 1, 64, 64)).sum())  # d/dw = 4096 * 2**20: inf in fp16
    assert not th.isfinite(model.conv.weight.grad).all()
    assert trainer.optimize(opt) is False and trainer.last_status == GRAD_OVERFLOW
    assert trainer.lg_loss_scale == 19.0
    assert all(th.equal(a, b) for a, b in zip(masters, trainer.master_params))
    assert all(th.isfinite(p).all() for p in model.parameters())

    trainer.lg_loss_scale = 10.0  # small enough for the bias gradient (2**10) to fit in fp16
    trainer.zero_grad()
    trainer.backward(model(th.full((1, 1, 1, 1), 1e-3)).sum())
    assert trainer.optimize(opt) is True and trainer.last_status == STEP_TAKEN
    assert trainer.lg_loss_scale == 10.5
    assert not th.equal(masters[1], trainer.master_params[1])
    state_dict = trainer.master_params_to_state_dict(trainer.master_params)
    assert state_dict["conv.weight"].dtype == th.float32
    assert th.equal(model.conv.weight, state_dict["conv.weight"].half())
    assert logger.dumpkvs()["grad_norm"] > 0


def test_fp16_nonfinite_loss_is_not_an_overflow(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    model = Toy()
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True)
    opt = th.optim.AdamW(trainer.master_params)
    trainer.zero_grad()
    trainer.backward(model(th.ones(1, 1, 1, 1)).sum() * float("nan"))
    assert trainer.optimize(opt) is False and trainer.last_status == NONFINITE_LOSS
    assert trainer.lg_loss_scale == 20.0  # the scale is not to blame


def test_fp32_grad_norm_matches_the_definition(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    model = Toy()
    trainer = MixedPrecisionTrainer(model=model)
    trainer.zero_grad()
    trainer.backward(model(th.full((1, 1, 2, 2), 0.5)).sum())
    expected = th.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    trainer.optimize(th.optim.SGD(model.parameters(), lr=0.0))
    assert abs(logger.dumpkvs()["grad_norm"] - expected) < 1e-6


def test_fp16_unet_trains_with_fp32_checkpoints(tmp_path, fashion_dir):
    loop = make_loop(tmp_path, fashion_dir, max_steps=2, save_interval=2, model_overrides={"use_fp16": True})
    loop.run_loop()
    assert loop.model.input_blocks[0][0].weight.dtype == th.float16
    saved = _load(tmp_path / "model000002.pt")
    assert all(v.dtype == th.float32 and th.isfinite(v).all() for v in saved.values())
    assert len(_load(tmp_path / "opt000002.pt")["state"]) == 2  # the release's two flat master tensors


def test_fp16_resume_takes_the_fp32_master_weights_from_the_checkpoint(tmp_path):
    """A use_fp16 model holds its weights rounded to half; resuming restores the exact fp32 masters."""
    fp16 = dict(model_flags={"use_fp16": True})
    tiny_loop(tmp_path / "a", max_steps=4, **fp16).run_loop()
    tiny_loop(tmp_path / "b", max_steps=2, **fp16).run_loop()
    resumed = tiny_loop(tmp_path / "b", max_steps=4, resume=tmp_path / "b" / "model000002.pt", **fp16)
    saved = _load(tmp_path / "b" / "model000002.pt")
    masters = resumed.mp_trainer.master_params_to_state_dict(resumed.mp_trainer.master_params)
    assert not all(th.equal(saved[k], v.float()) for k, v in resumed.model.state_dict().items())  # rounded
    _assert_same_state({k: masters[k] for k in saved}, saved)
    resumed.run_loop()
    for name in ["model000004.pt", "ema_0.9_000004.pt"]:
        _assert_same_state(_load(tmp_path / "a" / name), _load(tmp_path / "b" / name))


def test_fp16_trainer_warns_when_its_model_is_already_rounded(tmp_path, capsys):
    """Masters taken from a model built with use_fp16 start from float16-rounded weights: said in the log."""
    logger.configure(dir=str(tmp_path), format_strs=["stdout"])
    float32_model = Toy()
    MixedPrecisionTrainer(model=float32_model, use_fp16=True)
    assert "WARNING" not in capsys.readouterr().out
    MixedPrecisionTrainer(model=float32_model, use_fp16=True)  # now its conv is float16
    assert "already float16" in capsys.readouterr().out


def test_bf16_autocast_step(tmp_path, fashion_dir):
    loop = make_loop(tmp_path / "bf16", fashion_dir, max_steps=1, log_interval=1, use_bf16=True)
    computed = set()  # dtypes of every convolution's and linear layer's output in the training step
    for module in loop.model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda module, args, out: computed.add(out.dtype))
    loop.run_loop()
    assert computed == {th.bfloat16}
    assert all(p.dtype == th.float32 for p in loop.model.parameters())  # fp32 weights, updated in fp32
    # the same step without autocast: gradients close, not equal (bf16 keeps 8 bits of mantissa); the
    # first loss is the same (the output convolution starts at zero)
    fp32 = make_loop(tmp_path / "fp32", fashion_dir, max_steps=1, log_interval=1)
    fp32.run_loop()
    bf16_row, fp32_row = read_progress(tmp_path / "bf16")[-1], read_progress(tmp_path / "fp32")[-1]
    assert bf16_row["loss"] == fp32_row["loss"] > 0
    assert bf16_row["grad_norm"] != fp32_row["grad_norm"]
    assert bf16_row["grad_norm"] == pytest.approx(fp32_row["grad_norm"], rel=0.01)


def _batches(data_dir, bad_from=None, signal_at=None):
    data = load_data(data_dir=str(data_dir), batch_size=4, image_size=32, class_cond=True, num_workers=0)
    for i, (batch, cond) in enumerate(data, start=1):
        if signal_at == i:
            os.kill(os.getpid(), signal.SIGTERM)
        yield (batch * float("nan") if bad_from and i >= bad_from else batch), cond


def test_consecutive_nonfinite_steps_stop_and_keep_the_last_good_checkpoint(tmp_path, fashion_dir):
    loop = make_loop(tmp_path, fashion_dir, data=_batches(fashion_dir, bad_from=3), save_interval=2,
                     max_skipped_steps=3, max_steps=50)
    with pytest.raises(TrainingStopped, match=r"3 consecutive steps .*nonfinite_loss.*step 4"):
        loop.run_loop()
    assert loop.step == 5
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("model")) == ["model000002.pt", "model000004.pt"]
    # skipped steps change neither the weights nor the EMA
    _assert_same_state(_load(tmp_path / "model000002.pt"), _load(tmp_path / "model000004.pt"))
    _assert_same_state(_load(tmp_path / "ema_0.9_000002.pt"), _load(tmp_path / "ema_0.9_000004.pt"))
    assert all(th.isfinite(p).all() for p in loop.model.parameters())


def test_sigterm_saves_a_final_checkpoint_and_exits_143(tmp_path, fashion_dir):
    previous = signal.getsignal(signal.SIGTERM)
    loop = make_loop(tmp_path, fashion_dir, data=_batches(fashion_dir, signal_at=2), max_steps=50)
    with pytest.raises(SystemExit) as stop:
        loop.run_loop()
    assert stop.value.code == 128 + signal.SIGTERM
    assert loop.step == 2 and (tmp_path / "model000002.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_refusals_name_the_problem(tmp_path, fashion_dir):
    with pytest.raises(FileNotFoundError, match="--resume_checkpoint"):
        make_loop(tmp_path / "x", fashion_dir, resume=str(tmp_path / "nope" / "model000003.pt"))
    make_loop(tmp_path / "run", fashion_dir, max_steps=2, save_interval=1).run_loop()
    make_loop(tmp_path / "base", fashion_dir, max_steps=1, save_interval=1).run_loop()
    files = sorted(os.listdir(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):  # a fresh run in a used folder
        make_loop(tmp_path / "run", fashion_dir, max_steps=2)
    with pytest.raises(FileExistsError, match="at or after step 1"):  # another run's files would be overwritten
        make_loop(tmp_path / "run", fashion_dir, resume=str(tmp_path / "base" / "model000001.pt"))
    with pytest.raises(ValueError, match="--num_channels: checkpoint 32, now 64"):
        make_loop(tmp_path / "new", fashion_dir, resume=str(tmp_path / "run" / "model000002.pt"),
                  model_overrides={"num_channels": 64})
    with pytest.raises(CheckpointMismatchError, match="num_channels"):
        make_loop(tmp_path / "new2", fashion_dir, init_checkpoint=str(tmp_path / "run" / "model000002.pt"),
                  model_overrides={"num_channels": 64})
    assert sorted(os.listdir(tmp_path / "run")) == files
    assert not any(n.endswith(".pt") for d in ["new", "new2"] for n in os.listdir(tmp_path / d))


def test_init_checkpoint_fine_tunes_from_step_zero(tmp_path, fashion_dir):
    make_loop(tmp_path / "base", fashion_dir, max_steps=1, save_interval=1).run_loop()
    loop = make_loop(tmp_path / "ft", fashion_dir, init_checkpoint=str(tmp_path / "base" / "model000001.pt"))
    assert loop.step == 0
    _assert_same_state({k: v.float() for k, v in loop.model.state_dict().items()},
                       _load(tmp_path / "base" / "model000001.pt"))
