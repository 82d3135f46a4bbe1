"""Checkpoints load strictly, and a checkpoint built with other flags names the flag that differs."""

import pytest
import torch as th

from guided_diffusion import script_util as su
from guided_diffusion.checkpoint import CheckpointMismatchError, load_checkpoint

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
    model = su.create_model(**BASE)
    model.convert_to_fp16()
    th.save(model.state_dict(), tmp_path / "half.pt")
    loaded = load_checkpoint(su.create_model(**BASE), str(tmp_path / "half.pt"))
    assert all(p.dtype == th.float32 for p in loaded.parameters())


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


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(su.create_model(**BASE), str(tmp_path / "nope.pt"))
    th.save({"step": 3, "lr": 1e-4}, tmp_path / "state.pt")
    with pytest.raises(CheckpointMismatchError, match="not a model state dict"):
        load_checkpoint(su.create_model(**BASE), str(tmp_path / "state.pt"))
