"""Checkpoints load strictly, and a checkpoint built with other flags names the flag that differs."""

import pytest
import torch as th

from guided_diffusion import script_util as su
from guided_diffusion.checkpoint import CheckpointFileError, CheckpointMismatchError, load_checkpoint, read_torch_file
from guided_diffusion.unet import UNetModel

BASE = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True, class_cond=True)  # fmt: skip


def saved(tmp_path, **flags):
    model = su.create_model(**{**BASE, **flags})
    path = tmp_path / "model.pt"
    th.save(model.state_dict(), path)
    return path, model


def test_round_trip_loads_the_same_weights(tmp_path):
    path, original = saved(tmp_path)
    with th.no_grad():
        for p in original.parameters():
            p.normal_()
    th.save(original.state_dict(), path)
    model = load_checkpoint(su.create_model(**BASE), str(path))
    assert all(th.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))


def test_fp16_saved_weights_load_into_fp32_model(tmp_path):
    th.manual_seed(0)
    model = su.create_model(**BASE)
    with th.no_grad():
        for p in model.parameters():
            p.normal_()  # no zero-initialised layer: every value is checked
    model.convert_to_fp16()
    half = model.state_dict()
    assert {v.dtype for v in half.values()} == {th.float16, th.float32}  # convs and linears in fp16
    th.save(half, tmp_path / "half.pt")
    loaded = load_checkpoint(su.create_model(**BASE), str(tmp_path / "half.pt"))
    state = loaded.state_dict()
    assert state.keys() == half.keys()
    for key, value in half.items():
        assert state[key].dtype == th.float32 and th.equal(state[key], value.float()), key


@pytest.mark.parametrize(
    "checkpoint_flags, pattern",
    [
        (dict(learn_sigma=False), r"--learn_sigma: the checkpoint outputs 3 channels, the model 6"),
        (dict(class_cond=False), r"--class_cond / --num_classes: checkpoint has no class embedding"),
        (dict(num_channels=64), r"--num_channels .*checkpoint 64, flags 32"),
        (dict(resblock_updown=False), r"--resblock_updown: checkpoint False, flags True"),
        (dict(num_res_blocks=2), r"--num_res_blocks / --channel_mult / --image_size"),
        (dict(use_scale_shift_norm=False), r"--use_scale_shift_norm: checkpoint False, flags True"),
        (dict(attention_resolutions="16,8"), r"--attention_resolutions"),
    ],
)
def test_mismatch_names_the_flag(tmp_path, checkpoint_flags, pattern):
    path, _ = saved(tmp_path, **checkpoint_flags)
    with pytest.raises(CheckpointMismatchError, match=pattern) as info:
        load_checkpoint(su.create_model(**BASE), str(path))
    assert "--preset" in str(info.value)


def test_classifier_pool_mismatch(tmp_path):
    args = (16, False, 32, 1, "8", True, True)
    th.save(su.create_classifier(*args, "adaptive", classifier_channel_mult="1,2").state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointMismatchError, match="--classifier_pool: checkpoint adaptive, flags attention"):
        load_checkpoint(su.create_classifier(*args, "attention", classifier_channel_mult="1,2"), str(tmp_path / "c.pt"))


def unet(**overrides):
    """A tiny UNet built directly, for flags the factories may not take."""
    kwargs = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                  attention_resolutions=(), channel_mult=(1,))  # fmt: skip
    return UNetModel(**{**kwargs, **overrides})


@pytest.mark.parametrize(
    "checkpoint_kwargs, model_kwargs, pattern",
    [
        (dict(in_channels=1, out_channels=1), {}, r"--image_channels: the checkpoint takes 1 input channels, the model 3"),
        (dict(in_channels=1, out_channels=2), dict(out_channels=6), r"--image_channels / --learn_sigma: .* outputs 2 "),
        (dict(num_classes=10, class_dropout_prob=0.1), dict(num_classes=10), r"--class_dropout_prob: .* 11 rows, the model's 10"),
    ],
)
def test_mismatch_names_image_channels_and_class_dropout(tmp_path, checkpoint_kwargs, model_kwargs, pattern):
    th.save(unet(**checkpoint_kwargs).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=pattern):
        load_checkpoint(unet(**model_kwargs), str(tmp_path / "model.pt"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(su.create_model(**BASE), str(tmp_path / "nope.pt"))


def _saved_bytes(tmp_path, obj):
    th.save(obj, tmp_path / "whole.pt")
    return (tmp_path / "whole.pt").read_bytes()


@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda tmp: b"", "is empty"),
        (lambda tmp: _saved_bytes(tmp, unet().state_dict())[:-100], "is truncated or damaged"),
        (lambda tmp: _saved_bytes(tmp, unet().state_dict())[:10], "is truncated or damaged"),
        (lambda tmp: b"step,loss\n1,0.5\n", "is not a torch checkpoint"),
        (lambda tmp: _saved_bytes(tmp, th.nn.Linear(2, 2)), "holds Python objects"),
    ],
)
def test_unreadable_file_names_the_file_and_what_was_expected(tmp_path, content, reason):
    path = tmp_path / "model000010.pt"
    path.write_bytes(content(tmp_path))
    with pytest.raises(CheckpointFileError, match=reason) as info:
        load_checkpoint(unet(), str(path))
    assert str(path) in str(info.value)
    assert "expected a model state dict saved by training" in str(info.value) and "modelNNNNNN.pt" in str(info.value)


@pytest.mark.parametrize("obj, kind", [([1, 2, 3], "list"), ({"step": 3, "lr": 1e-4}, "dict")])
def test_pickle_of_a_non_state_dict(tmp_path, obj, kind):
    th.save(obj, tmp_path / "state.pt")
    with pytest.raises(CheckpointFileError, match=f"holds a {kind}, not a model state dict"):
        load_checkpoint(unet(), str(tmp_path / "state.pt"))


def test_read_torch_file_names_what_the_caller_expected(tmp_path):
    (tmp_path / "opt000010.pt").write_bytes(b"")
    with pytest.raises(CheckpointFileError, match=r"opt000010.pt' is empty: expected the optimizer state"):
        read_torch_file(str(tmp_path / "opt000010.pt"), expected="the optimizer state (optNNNNNN.pt)")
    th.save({"state": {}, "param_groups": []}, tmp_path / "opt000010.pt")
    assert read_torch_file(str(tmp_path / "opt000010.pt"), expected="-") == {"state": {}, "param_groups": []}
