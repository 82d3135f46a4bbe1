"""Timestep samplers: importance weights, the loss-second-moment rule, resume state, all-gather."""

import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
import torch.multiprocessing as mp

from guided_diffusion.resample import (
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)


def fake_diffusion(num_timesteps):
    return SimpleNamespace(num_timesteps=num_timesteps)


class FixedWeights(ScheduleSampler):
    def __init__(self, weights):
        self._w = np.array(weights, dtype=np.float64)

    def weights(self):
        return self._w


def test_create_named_schedule_sampler():
    assert type(create_named_schedule_sampler("uniform", fake_diffusion(5))) is UniformSampler
    sampler = create_named_schedule_sampler("loss-second-moment", fake_diffusion(5))
    assert type(sampler) is LossSecondMomentResampler
    assert (sampler.history_per_term, sampler.uniform_prob) == (10, 0.001)
    with pytest.raises(NotImplementedError, match="uniform or loss-second-moment"):
        create_named_schedule_sampler("importance", fake_diffusion(5))


def test_uniform_sampler():
    np.random.seed(0)
    t, w = UniformSampler(fake_diffusion(7)).sample(1000, "cpu")
    assert t.dtype == th.long and w.dtype == th.float32 and t.shape == w.shape == (1000,)
    assert set(t.tolist()) == set(range(7))
    assert th.equal(w, th.ones(1000))


def test_importance_weights_undo_the_sampling_bias():
    np.random.seed(0)
    t, w = FixedWeights([1.0, 3.0]).sample(20_000, "cpu")
    assert t.float().mean().item() == pytest.approx(0.75, abs=0.015)
    assert th.allclose(w[t == 0], th.tensor(2.0)) and th.allclose(w[t == 1], th.tensor(2 / 3))
    assert w.mean().item() == pytest.approx(1.0, abs=0.02)  # E[w] = 1 keeps the loss unbiased


def test_loss_second_moment_is_uniform_until_every_history_is_full():
    sampler = LossSecondMomentResampler(fake_diffusion(3), history_per_term=2)
    sampler.update_with_all_losses([0, 0, 1, 1, 2], [1.0, 1.0, 2.0, 2.0, 5.0])
    assert np.array_equal(sampler.weights(), np.ones(3))
    sampler.update_with_all_losses([2], [5.0])
    expected = np.array([1.0, 2.0, 5.0]) / 8 * (1 - 0.001) + 0.001 / 3
    np.testing.assert_allclose(sampler.weights(), expected, rtol=1e-12)
    assert sampler.weights().sum() == pytest.approx(1.0)


def test_loss_second_moment_uses_the_root_mean_square_of_the_last_losses():
    sampler = LossSecondMomentResampler(fake_diffusion(2), history_per_term=2, uniform_prob=0.1)
    # t = 0 sees 9, then 3, 4: the oldest (9) is dropped -> sqrt((9 + 16) / 2)
    sampler.update_with_all_losses([0, 0, 0, 1, 1], [9.0, 3.0, 4.0, -1.0, 1.0])
    rms = np.array([np.sqrt(12.5), 1.0])
    np.testing.assert_allclose(sampler.weights(), rms / rms.sum() * 0.9 + 0.05, rtol=1e-12)


def test_update_with_local_losses_without_distributed():
    sampler = LossSecondMomentResampler(fake_diffusion(2), history_per_term=1)
    sampler.update_with_local_losses(th.tensor([1, 0]), th.tensor([3.0, 1.0]))
    np.testing.assert_allclose(sampler.weights(), np.array([0.25, 0.75]) * 0.999 + 0.0005)


def round_trip(state):
    buffer = io.BytesIO()
    th.save(state, buffer)
    buffer.seek(0)
    return th.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(0)
    ts, losses = rng.integers(0, 5, 60).tolist(), rng.random(60).tolist()
    original = LossSecondMomentResampler(fake_diffusion(5), history_per_term=4)
    original.update_with_all_losses(ts[:40], losses[:40])

    resumed = LossSecondMomentResampler(fake_diffusion(5), history_per_term=4)
    resumed.load_state_dict(round_trip(original.state_dict()))
    assert np.array_equal(resumed.weights(), original.weights())
    for sampler in (original, resumed):
        sampler.update_with_all_losses(ts[40:], losses[40:])
    assert np.array_equal(resumed.weights(), original.weights())
    assert not np.array_equal(original.weights(), np.ones(5))  # warmed up: the history matters


def test_state_dict_of_another_schedule_is_rejected():
    state = LossSecondMomentResampler(fake_diffusion(5)).state_dict()
    with pytest.raises(ValueError, match="diffusion_steps"):
        LossSecondMomentResampler(fake_diffusion(4)).load_state_dict(state)


def test_uniform_sampler_state_is_empty():
    sampler = UniformSampler(fake_diffusion(3))
    assert sampler.state_dict() == {}
    sampler.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        sampler.load_state_dict({"loss_history": th.zeros(3, 10)})


def _gather_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sampler = LossSecondMomentResampler(fake_diffusion(4), history_per_term=2)
        if rank == 0:  # ranks with different batch sizes
            sampler.update_with_local_losses(th.tensor([0, 1, 2]), th.tensor([1.0, 2.0, 3.0]))
        else:
            sampler.update_with_local_losses(th.tensor([3]), th.tensor([4.0]))
        th.save(sampler.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_update_with_local_losses_gathers_every_rank(tmp_path):
    mp.start_processes(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        state = th.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert state["loss_counts"].tolist() == [1, 1, 1, 1]
        assert state["loss_history"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
