"""Timestep respacing: the kept step sets, the respaced schedule and the timestep mapping."""

import numpy as np
import pytest
import torch as th

from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)
from guided_diffusion.respace import SpacedDiffusion, space_timesteps


def diffusion_kwargs(steps=1000, schedule="linear", rescale_timesteps=False, var=ModelVarType.FIXED_SMALL):
    return dict(
        betas=get_named_beta_schedule(schedule, steps),
        model_mean_type=ModelMeanType.EPSILON,
        model_var_type=var,
        loss_type=LossType.MSE,
        rescale_timesteps=rescale_timesteps,
    )


class RecordingModel:
    """Returns zeros and records the timesteps it is called with."""

    def __init__(self, channels_factor=1):
        self.channels_factor = channels_factor
        self.timesteps = []

    def __call__(self, x, t, **kwargs):
        self.timesteps.append(t)
        return th.zeros(x.shape[0], x.shape[1] * self.channels_factor, *x.shape[2:])


def test_hand_checked_small_cases():
    assert space_timesteps(10, "ddim5") == {0, 2, 4, 6, 8}
    assert space_timesteps(10, "ddim10") == set(range(10))
    assert space_timesteps(10, "ddim4") == {0, 3, 6, 9}
    assert space_timesteps(10, [3]) == {0, 4, 9}  # stride 4.5: round(4.5) = 4 (round half to even)
    assert space_timesteps(10, "3") == {0, 4, 9}
    # 7 steps in 2 sections: sizes 4 and 3 (the first takes the remainder)
    assert space_timesteps(7, "2,2") == {0, 3, 4, 6}
    assert space_timesteps(10, [1, 1]) == {0, 5}
    assert space_timesteps(8, "4") == {0, 2, 5, 7}  # stride 7/3: 0, 2.33, 4.67, 7


def test_release_step_sets():
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == set(range(0, 1000, 4))

    steps = sorted(space_timesteps(1000, "250"))
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    stride = 999 / 249
    assert steps == [round(i * stride) for i in range(250)]  # accumulation error stays below rounding

    steps = sorted(space_timesteps(300, "10,15,20"))
    assert len(steps) == 45
    first, second, third = steps[:10], steps[10:25], steps[25:]
    assert (first[0], first[-1], second[0], second[-1], third[0], third[-1]) == (0, 99, 100, 199, 200, 299)
    assert all(0 <= s < 100 for s in first) and all(100 <= s < 200 for s in second)
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, "10,15,20")


def test_impossible_requests_raise_clear_errors():
    with pytest.raises(ValueError, match=r"exactly 7 of 10 steps.*ddim5"):
        space_timesteps(10, "ddim7")
    with pytest.raises(ValueError, match="exactly 300 of 1000"):
        space_timesteps(1000, "ddim300")
    with pytest.raises(ValueError, match="cannot take 6 steps from a section of 5"):
        space_timesteps(10, "6,1")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("respacing", ["ddim25", "250", "10,15,20"])
def test_respacing_keeps_alphas_cumprod_at_the_kept_steps(schedule, respacing):
    kwargs = diffusion_kwargs(schedule=schedule)
    base = GaussianDiffusion(**kwargs)
    kept = space_timesteps(1000, respacing)
    spaced = SpacedDiffusion(kept, **kwargs)
    assert spaced.timestep_map == sorted(kept)
    assert spaced.num_timesteps == len(kept) and spaced.original_num_steps == 1000
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[sorted(kept)], rtol=1e-10)


def test_keeping_every_step_reproduces_the_base_schedule():
    kwargs = diffusion_kwargs(steps=100, schedule="cosine")
    spaced = SpacedDiffusion(range(100), **kwargs)
    np.testing.assert_allclose(spaced.betas, kwargs["betas"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rescale", [False, True])
def test_model_sees_original_timesteps(rescale):
    spaced = SpacedDiffusion(space_timesteps(100, "ddim5"), **diffusion_kwargs(steps=100, rescale_timesteps=rescale))
    assert spaced.timestep_map == [0, 20, 40, 60, 80]
    model = RecordingModel()
    spaced.ddim_sample_loop(model, (2, 1, 2, 2), device="cpu")
    seen = [t.tolist() for t in model.timesteps]
    originals = [80, 60, 40, 20, 0]
    if rescale:
        assert all(t.dtype == th.float32 for t in model.timesteps)
        assert seen == [[10.0 * s] * 2 for s in originals]  # scaled to [0, 1000) from 100 steps
    else:
        assert seen == [[s] * 2 for s in originals]


def test_training_losses_and_guidance_use_original_timesteps():
    spaced = SpacedDiffusion([0, 50, 99], **diffusion_kwargs(steps=100, var=ModelVarType.LEARNED_RANGE))
    model = RecordingModel(channels_factor=2)
    x = th.zeros(3, 1, 2)
    t = th.tensor([0, 1, 2])
    terms = spaced.training_losses(model, x, t)
    assert model.timesteps[0].tolist() == [0, 50, 99] and set(terms) == {"loss", "mse", "vb"}

    seen = []

    def cond_fn(x, t, **kwargs):
        seen.append(t.tolist())
        return th.zeros_like(x)

    pmv = spaced.p_mean_variance(model, x, t)
    spaced.condition_mean(cond_fn, pmv, x, t)
    spaced.condition_score(cond_fn, pmv, x, t)
    assert seen == [[0, 50, 99], [0, 50, 99]]


def test_respaced_sampling_equals_sampling_the_respaced_schedule_directly():
    # The spaced process is an ordinary diffusion over the new betas, with a remapped model.
    kept = space_timesteps(100, "10")
    spaced = SpacedDiffusion(kept, **diffusion_kwargs(steps=100))
    plain = GaussianDiffusion(**dict(diffusion_kwargs(steps=100), betas=spaced.betas))
    timestep_map = th.tensor(spaced.timestep_map)

    def model(x, t):
        return 0.1 * x * (1 + t.float().view(-1, 1))

    noise = th.randn(2, 3)
    a = spaced.p_sample_loop(model, (2, 3), noise=noise, noise_fn=th.ones_like)
    b = plain.p_sample_loop(lambda x, t: model(x, timestep_map[t]), (2, 3), noise=noise, noise_fn=th.ones_like)
    assert th.equal(a, b)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("kind", ["logsnr", "karras"])
@pytest.mark.parametrize("count", [2, 5, 20, 100, 1000])
def test_noise_level_spacings_keep_exactly_n_distinct_steps_with_both_ends(schedule, kind, count):
    alphas_cumprod = np.cumprod(1 - get_named_beta_schedule(schedule, 1000))
    kept = space_timesteps(1000, f"{kind}{count}", alphas_cumprod=alphas_cumprod)
    assert len(kept) == count and min(kept) == 0 and max(kept) == 999


def test_logsnr_steps_are_uniform_in_lambda_and_karras_follow_rho_7():
    alphas_cumprod = np.cumprod(1 - get_named_beta_schedule("linear", 1000))
    lam = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    steps = sorted(space_timesteps(1000, "logsnr8", alphas_cumprod=alphas_cumprod), reverse=True)
    targets = np.linspace(lam[999], lam[0], 8)
    # each kept step is the timestep whose lambda is nearest its target
    assert steps == [int(np.abs(lam - target).argmin()) for target in targets]
    sigma = np.exp(-lam)
    ramp = np.linspace(0, 1, 8)
    karras = (sigma[999] ** (1 / 7) + ramp * (sigma[0] ** (1 / 7) - sigma[999] ** (1 / 7))) ** 7
    steps = sorted(space_timesteps(1000, "karras8", alphas_cumprod=alphas_cumprod), reverse=True)
    assert steps == [int(np.abs(np.log(sigma) - np.log(level)).argmin()) for level in karras]
    assert steps == [999, 917, 815, 681, 484, 205, 32, 0]  # pinned: the linear schedule's rho = 7 levels


def test_noise_level_collisions_move_to_the_next_free_timestep():
    alphas_cumprod = np.cumprod(1 - get_named_beta_schedule("cosine", 1000))
    # the cosine schedule's last betas are capped at 0.999: sigma spans 1e4 in the last few timesteps,
    # where many karras levels round to the same timestep; they are spread over the next free ones
    kept = sorted(space_timesteps(1000, "karras10", alphas_cumprod=alphas_cumprod))
    assert kept[-5:] == [995, 996, 997, 998, 999] and len(set(kept)) == 10


@pytest.mark.parametrize("respacing", ["1", "ddim1", "logsnr1", "karras0", "1001", "ddim1001", "500,501"])
def test_fewer_than_two_or_more_than_t_steps_are_refused(respacing):
    alphas_cumprod = np.cumprod(1 - get_named_beta_schedule("linear", 1000))
    with pytest.raises(ValueError, match="at least 2|at most 1000"):
        space_timesteps(1000, respacing, alphas_cumprod=alphas_cumprod)


def test_noise_level_spacings_need_the_schedule_and_unknown_forms_are_named():
    with pytest.raises(ValueError, match="needs the schedule's alphas_cumprod"):
        space_timesteps(1000, "karras10")
    with pytest.raises(ValueError, match="ddimN, logsnrN, karrasN, consistencyN or at:T1,T2"):
        space_timesteps(1000, "edm10")
