"""guided_diffusion.distill where consistency_models cannot pin numbers: the timestep grid of a VP schedule, the
ADM (VP) parameterisation on tiny UNets, and closed forms of the loss, the schedules and the sampler."""

import math

import numpy as np
import pytest
import torch as th

from guided_diffusion.distill.grid import karras_level, karras_sigmas, timestep_grid, vp_sigmas
from guided_diffusion.distill.losses import (consistency_losses, draw_indices, euler_step, heun_step, loss_distance,
                                             loss_weight)
from guided_diffusion.distill.parameterisation import EDMModel, VPModel
from guided_diffusion.distill.sampling import cm_ts_sigmas, consistency_sample
from guided_diffusion.distill.schedules import TargetSchedule
from guided_diffusion.schedules import get_named_beta_schedule
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.train_util import update_ema

import make_release_fixtures as fx  # noqa: E402 (tests/fixtures is on the path through conftest's fixture_compare)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
            num_heads=2, diffusion_steps=100, noise_schedule="cosine")
VP_CASES = {  # name: flags over TINY
    "epsilon": {},
    "x0": dict(predict_xstart=True),
    "learned_sigma_class_cond": dict(learn_sigma=True, class_cond=True, num_classes=4),
    "respaced_rescaled": dict(learn_sigma=True, timestep_respacing="10", rescale_timesteps=True),
}


def alphas_cumprod(schedule, steps=1000):
    return np.cumprod(1 - get_named_beta_schedule(schedule, steps))


def normal(shape, seed, scale=1.0):
    return scale * th.randn(shape, generator=th.Generator().manual_seed(seed))


# ------------------------------------------------------------------ grid


@pytest.mark.parametrize("schedule, first, last, t80", [("cosine", 0.006425, 2.029e4, 991),
                                                        ("linear", 0.0100005, 157.41, 930)])
def test_vp_sigmas_of_the_released_schedules(schedule, first, last, t80):
    sigma = vp_sigmas(alphas_cumprod(schedule))
    assert sigma[0] == pytest.approx(first, rel=1e-4) and sigma[-1] == pytest.approx(last, rel=1e-3)
    assert np.all(np.diff(sigma) > 0)
    assert np.abs(np.log(sigma) - np.log(80.0)).argmin() == t80  # SPEC: sigma = 80 at t = 991 (cosine)


@pytest.mark.parametrize("schedule, top", [("cosine", 991), ("linear", 930)])
@pytest.mark.parametrize("levels", [18, 40])
def test_timestep_grid_rounds_karras_levels_to_distinct_timesteps(schedule, top, levels):
    abar = alphas_cumprod(schedule)
    timesteps, sigmas = timestep_grid(abar, levels)
    assert timesteps.dtype == th.int64 and sigmas.dtype == th.float32 and len(timesteps) == levels
    assert timesteps[0] == top and timesteps[-1] == 0 and bool((timesteps[1:] < timesteps[:-1]).all())
    sigma = vp_sigmas(abar)
    np.testing.assert_array_equal(sigmas.numpy(), sigma[timesteps.numpy()].astype(np.float32))
    # each is the timestep nearest in log sigma to its level (rho = 7 between 80 and sigma_0)
    ramp = np.linspace(0, 1, levels)
    level = (80 ** (1 / 7) + ramp * (sigma[0] ** (1 / 7) - 80 ** (1 / 7))) ** 7
    distance = np.abs(np.log(sigma)[None, :] - np.log(level)[:, None])
    np.testing.assert_allclose(distance[np.arange(levels), timesteps.numpy()], distance.min(axis=1), atol=1e-12)


def test_timestep_grid_caps_sigma_max_at_the_schedules_largest():
    timesteps, _ = timestep_grid(alphas_cumprod("linear"), 10, sigma_max=1e4)
    assert timesteps[0] == 999 and timesteps[-1] == 0


def test_timestep_grid_refuses_a_grid_that_does_not_fit():
    abar = alphas_cumprod("cosine")
    with pytest.raises(ValueError, match=r"a grid of 2000 levels does not fit a schedule of 1000 timesteps below "
                                         r"sigma_max=80: .*--num_scales (\d+)") as error:
        timestep_grid(abar, 2000)
    fits = int(error.value.args[0].split("--num_scales ")[1].split(",")[0])
    assert len(set(timestep_grid(abar, fits)[0].tolist())) == fits
    with pytest.raises(ValueError, match="num_scales"):
        timestep_grid(abar, fits + 10)
    with pytest.raises(ValueError, match="smallest sigma"):
        timestep_grid(abar, 10, sigma_max=0.001)


@pytest.mark.parametrize("levels", [18, 40, 201])
def test_karras_sigmas_gather_to_consistency_models_per_batch_sigmas(levels):
    """consistency_models computes sigma from the drawn indices [B], a batch at a time, in float32 as
    (80^(1/7) + i / (N - 1) (0.002^(1/7) - 80^(1/7)))^7: equal bit for bit (in that order: i * (1 / (N - 1))
    differs in 29 of 201 levels)."""
    grid = karras_sigmas(levels)
    for batch in th.randperm(levels, generator=th.Generator().manual_seed(3)).split(2):
        as_cm = (80.0 ** (1 / 7) + batch / (levels - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7.0
        np.testing.assert_array_equal(grid[batch].numpy(), as_cm.numpy())
        np.testing.assert_array_equal(karras_level(batch, levels, 0.002, 80.0).numpy(), as_cm.numpy())
    assert bool((grid[1:] < grid[:-1]).all())
    assert grid[0].item() == pytest.approx(80.0, rel=2e-7) and grid[-1].item() == pytest.approx(0.002, rel=2e-7)
    with pytest.raises(ValueError, match="at least 2"):
        karras_sigmas(1)


# ------------------------------------------------------------------ parameterisations


@pytest.fixture(scope="module")
def vp_models():
    """{case: (UNet with seeded weights, its diffusion, model_kwargs)}."""
    models = {}
    for name, flags in VP_CASES.items():
        model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **TINY, **flags})
        fx.fill_weights(model, seed=4)
        kwargs = {"y": th.tensor([1, 3])} if flags.get("class_cond") else {}
        models[name] = (model, diffusion, kwargs)
    return models


@pytest.mark.parametrize("name", list(VP_CASES))
def test_vp_consistency_function_meets_the_boundary_condition_exactly(name, vp_models):
    model, diffusion, kwargs = vp_models[name]
    student = VPModel(model, diffusion)
    x = normal((2, 3, 8, 8), 5, scale=3.0)
    with th.no_grad():
        assert th.equal(student.consistency(x, student.sigmas[:1].expand(2), **kwargs), x)


def test_edm_consistency_function_meets_the_boundary_condition_exactly():
    net = th.nn.Conv2d(3, 3, 3, padding=1)
    x = normal((2, 3, 8, 8), 5, scale=3.0)
    with th.no_grad():
        assert th.equal(EDMModel(lambda x, t: net(x)).consistency(x, th.full((2,), 0.002)), x)


@pytest.mark.parametrize("name", list(VP_CASES))
def test_vp_student_at_init_is_the_teacher_denoiser_plus_s0_eps(name, vp_models):
    """D = x - sigma eps_hat (the first C channels of the output at x_t = sqrt(alpha_bar_t) x and the model's
    timestep); f - D = s0 eps_hat."""
    model, diffusion, kwargs = vp_models[name]
    teacher = VPModel(model, diffusion)
    seen = []

    def network(x_t, t, **model_kwargs):
        seen.append((x_t, t, model_kwargs))
        return model(x_t, t, **model_kwargs)

    vp = VPModel(network, diffusion)
    steps = th.tensor([len(vp.sigmas) - 1, len(vp.sigmas) // 2])
    sigma = vp.sigmas[steps]
    x = normal((2, 3, 8, 8), 6) + sigma.view(-1, 1, 1, 1) * normal((2, 3, 8, 8), 7)
    with th.no_grad():
        denoised, student = vp.denoise(x, sigma, **kwargs), teacher.consistency(x, sigma, **kwargs)
    x_t, model_t, model_kwargs = seen[0]
    sqrt_abar = th.from_numpy(np.sqrt(diffusion.alphas_cumprod[steps.numpy()])).float().view(-1, 1, 1, 1)
    np.testing.assert_array_equal(x_t.numpy(), (sqrt_abar * x).numpy())
    original = th.tensor(diffusion.timestep_map)[steps] if diffusion.timestep_map is not None else steps
    expected_t = original.float() * (1000.0 / diffusion.original_num_steps) if diffusion.rescale_timesteps else original
    np.testing.assert_array_equal(model_t.numpy(), expected_t.numpy())
    assert model_kwargs.keys() == kwargs.keys()
    with th.no_grad():
        mean_output = model(x_t, model_t, **kwargs)[:, :3]
    if diffusion.model_mean_type.name == "START_X":
        eps = (x - mean_output) / sigma.view(-1, 1, 1, 1)
        assert th.equal(denoised, mean_output)
    else:
        eps = mean_output
        np.testing.assert_allclose(denoised.numpy(), (x - sigma.view(-1, 1, 1, 1) * eps).numpy(),
                                   atol=2e-6 * x.abs().max().item())
    np.testing.assert_allclose((student - denoised).numpy(), (vp.sigma_min * eps).numpy(),
                               atol=2e-6 * x.abs().max().item())


def test_vp_model_passes_model_kwargs_and_clips_when_asked(vp_models):
    model, diffusion, kwargs = vp_models["learned_sigma_class_cond"]
    vp, clipped = VPModel(model, diffusion), VPModel(model, diffusion, clip_denoised=True)
    sigma = vp.sigmas[[40, 90]]
    x = normal((2, 3, 8, 8), 8, scale=3.0)
    with th.no_grad():
        denoised = vp.denoise(x, sigma, **kwargs)
        assert not th.equal(denoised, vp.denoise(x, sigma, y=th.tensor([0, 2])))
        assert denoised.abs().max() > 1
        assert th.equal(clipped.denoise(x, sigma, **kwargs), denoised.clamp(-1, 1))


def test_vp_model_maps_sigma_to_its_timestep_exactly_and_refuses_others(vp_models):
    model, diffusion, _ = vp_models["epsilon"]
    vp = VPModel(model, diffusion)
    assert th.equal(vp.timesteps(vp.sigmas), th.arange(len(vp.sigmas)))
    timesteps, sigmas = timestep_grid(diffusion.alphas_cumprod, 8)
    assert th.equal(vp.timesteps(sigmas), timesteps)
    off = th.tensor([vp.sigmas[5].item(), np.nextafter(vp.sigmas[5].item(), 1, dtype=np.float32)])
    with pytest.raises(ValueError, match="is not the sigma_t of any of the schedule's 100 timesteps"):
        vp.timesteps(off)
    with pytest.raises(ValueError, match="not the sigma_t"):
        vp.consistency(normal((1, 3, 8, 8), 1), th.tensor([0.5]))


def test_cd_loss_on_the_teachers_grid_calls_it_at_its_timesteps_only(vp_models):
    """The grid's sigmas, gathered per example, map back to the grid's timesteps exactly; with the
    teacher's weights the student starts as the teacher."""
    model, diffusion, _ = vp_models["epsilon"]
    timesteps, grid = timestep_grid(diffusion.alphas_cumprod, 8)
    seen = []

    def teacher_net(x_t, t, **kwargs):
        seen.append(t)
        return model(x_t, t, **kwargs)

    vp = VPModel(model, diffusion)
    indices = th.tensor([0, 3, 6])
    x_start, noise = normal((3, 3, 8, 8), 1).clamp(-1, 1), normal((3, 3, 8, 8), 2)
    with th.no_grad():
        losses = consistency_losses(vp.consistency, vp.consistency, x_start, grid, indices, noise,
                                    teacher=VPModel(teacher_net, diffusion).denoise)
    assert [t.tolist() for t in seen] == [timesteps[indices].tolist(), timesteps[indices + 1].tolist()]
    assert bool(th.isfinite(losses["loss"]).all()) and bool((losses["loss"] > 0).all())


# ------------------------------------------------------------------ losses


def test_pseudo_huber_closed_form():
    """sqrt(||a - b||^2 + c^2) - c over all C H W of an example, c = 0.00054 sqrt(C H W) by default."""
    a = th.zeros(3, 3, 8, 8)
    b = th.tensor([0.0, 1e-4, 0.5]).view(-1, 1, 1, 1).expand(3, 3, 8, 8)
    c = 0.00054 * math.sqrt(192)
    expected = [math.sqrt(192 * k**2 + c**2) - c for k in (0.0, 1e-4, 0.5)]
    np.testing.assert_allclose(loss_distance("pseudo-huber", a, b).numpy(), expected, rtol=1e-5)
    assert loss_distance("pseudo-huber", a, b, huber_c=0.1)[2].item() == pytest.approx(math.sqrt(48 + 0.01) - 0.1)
    np.testing.assert_allclose(loss_distance("l2", a, b).numpy(), [0, 1e-8, 0.25], rtol=1e-6)
    np.testing.assert_allclose(loss_distance("l1", a, b).numpy(), [0, 1e-4, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="LPIPS is not available"):
        loss_distance("lpips", a, b)


def test_weightings_closed_form():
    hi, lo = th.tensor([0.5, 2.0]), th.tensor([0.25, 1.5])
    expected = {"uniform": [1, 1], "snr": [4, 0.25], "snr+1": [5, 1.25], "karras": [8, 4.25],
                "truncated-snr": [4, 1], "ict": [4, 2]}
    for name, values in expected.items():
        np.testing.assert_allclose(loss_weight(name, hi, lo).numpy(), values, rtol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="unknown weight schedule"):
        loss_weight("lpips", hi, lo)


def test_index_draw_is_consistency_models_randint():
    th.manual_seed(0)
    indices = draw_indices(4000, 5)
    th.manual_seed(0)
    assert th.equal(indices, th.randint(0, 4, (4000,)))
    assert indices.min() == 0 and indices.max() == 3


@pytest.mark.parametrize("loss_norm", ["l2", "l1", "pseudo-huber"])
def test_ct_loss_is_zero_for_the_ideal_consistency_function(loss_norm):
    """On x_t = x_0 + sigma z the ideal f returns x_0 at every level; CT's Euler step with x_0 as the denoiser
    lands on x_0 + sigma_lo z (up to rounding), so the loss vanishes."""
    x_start, noise = normal((3, 3, 8, 8), 1).clamp(-1, 1), normal((3, 3, 8, 8), 2)
    grid = karras_sigmas(18)
    indices = th.tensor([0, 8, 16])
    targets = []

    def ideal(x, sigma):
        targets.append(x)
        return x - sigma.view(-1, 1, 1, 1) * noise

    losses = consistency_losses(ideal, ideal, x_start, grid, indices, noise, loss_norm=loss_norm,
                                weight_schedule="karras")
    np.testing.assert_allclose(targets[1].numpy(), (x_start + grid[indices + 1].view(-1, 1, 1, 1) * noise).numpy(),
                               atol=3e-5)
    assert losses["loss"].abs().max() < {"l2": 1e-8, "l1": 1e-4, "pseudo-huber": 1e-5}[loss_norm]
    assert th.equal(losses["sigma"], grid[indices])


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_cd_with_an_exact_teacher_steps_where_ct_does(solver):
    """A teacher that knows x_0 (D = x_0) gives CT's x_lo: one code path."""
    x_start, noise = normal((2, 3, 8, 8), 1).clamp(-1, 1), normal((2, 3, 8, 8), 2)
    grid, indices = karras_sigmas(40), th.tensor([3, 30])
    seen = {"cd": [], "ct": []}

    def recorder(key):
        return lambda x, sigma: seen[key].append(x) or x

    consistency_losses(recorder("cd"), recorder("cd"), x_start, grid, indices, noise, teacher=lambda x, s: x_start,
                       solver=solver)
    consistency_losses(recorder("ct"), recorder("ct"), x_start, grid, indices, noise)
    np.testing.assert_allclose(seen["cd"][1].numpy(), seen["ct"][1].numpy(), atol=3e-5)


def test_heun_is_second_order_on_gaussian_data():
    """For data N(0, sd^2), D(x, s) = sd^2 / (s^2 + sd^2) x and the ODE's solution is
    x(s') = x(s) sqrt(s'^2 + sd^2) / sqrt(s^2 + sd^2)."""
    sd = 0.5

    def denoise(x, s):
        return (sd**2 / (s**2 + sd**2)).view(-1, 1) * x

    x = th.ones(1, 4, dtype=th.float64)
    errors = {}
    for step in (0.2, 0.1):
        s, s_next = th.tensor([1.0], dtype=th.float64), th.tensor([1.0 - step], dtype=th.float64)
        exact = x * math.sqrt((1 - step) ** 2 + sd**2) / math.sqrt(1 + sd**2)
        errors[step] = [(solver(denoise, x, s, s_next) - exact).abs().max().item()
                        for solver in (euler_step, heun_step)]
    assert errors[0.1][1] < errors[0.1][0] / 10
    assert errors[0.2][0] / errors[0.1][0] == pytest.approx(4, rel=0.2)  # local error O(h^2)
    assert errors[0.2][1] / errors[0.1][1] == pytest.approx(8, rel=0.2)  # O(h^3)


def test_target_replays_the_students_random_draws_and_gets_no_gradient():
    """consistency_models saves the RNG state before the student and restores it before the target: the
    target sees the student's dropout draws, whatever the teacher draws in between."""
    draws = {"student": [], "teacher": [], "target": []}
    weight = th.nn.Parameter(th.tensor(2.0))
    target_weight = th.nn.Parameter(th.tensor(3.0))

    def network(key, scale):
        def f(x, sigma):
            draws[key].append(th.rand(4))
            return scale * x
        return f

    x_start, noise = normal((2, 3, 4, 4), 1), normal((2, 3, 4, 4), 2)
    th.manual_seed(0)
    losses = consistency_losses(network("student", weight), network("target", target_weight), x_start,
                                karras_sigmas(10), th.tensor([2, 5]), noise, teacher=network("teacher", 1.0))
    assert th.equal(draws["target"][0], draws["student"][0])
    assert not th.equal(draws["teacher"][0], draws["student"][0])
    losses["loss"].sum().backward()
    assert weight.grad is not None and target_weight.grad is None


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        consistency_losses(None, None, th.zeros(1, 3, 4, 4), karras_sigmas(4), th.tensor([0]), th.zeros(1, 3, 4, 4),
                           solver="rk4")


# ------------------------------------------------------------------ schedules


def test_improved_ct_curriculum_doubles_every_k_prime_steps():
    """K = 400000, s0 = 10, s1 = 1280: K' = floor(400000 / (log2 128 + 1)) = 50000."""
    schedule = TargetSchedule("fixed", "exponential", start_ema=0.0, start_scales=10, end_scales=1280,
                              total_steps=400000)
    expected = {0: 11, 49999: 11, 50000: 21, 100000: 41, 150000: 81, 200000: 161, 250000: 321, 300000: 641,
                349999: 641, 350000: 1281, 400000: 1281, 10**6: 1281}
    assert {step: schedule(step) for step in expected} == {step: (0.0, n) for step, n in expected.items()}
    # not a power of two: K' = floor(1000 / (log2 75 + 1)) = floor(138.33) = 138
    odd = TargetSchedule("fixed", "exponential", start_ema=0.0, start_scales=2, end_scales=150, total_steps=1000)
    assert [odd(step)[1] for step in (0, 137, 138, 276, 827, 828, 966)] == [3, 3, 5, 9, 65, 129, 151]


def test_progressive_schedule_end_points():
    """N(0) = s0 and N(K) = s1 + 1; adaptive mu = exp(s0 log(mu0) / (N - 1))."""
    schedule = TargetSchedule("adaptive", "progressive", start_ema=0.95, start_scales=2, end_scales=200,
                              total_steps=800000)
    assert schedule(0) == (pytest.approx(0.95**2), 2)
    assert schedule(800000) == (pytest.approx(0.95 ** (2 / 200)), 201)


def test_progressive_schedule_keeps_two_levels_from_one_start_scale():
    """s0 = 1: ceil(sqrt(1) - 1) = 0 intervals, raised to 1 (N = 2) as consistency_models does."""
    assert TargetSchedule("fixed", "progressive", start_ema=0.9, start_scales=1, end_scales=10, total_steps=100)(0) \
        == (0.9, 2)


def test_schedule_refuses_unknown_combinations():
    for modes in [("adaptive", "fixed"), ("adaptive", "exponential"), ("ema", "fixed"), ("fixed", "linear")]:
        with pytest.raises(ValueError, match="target_ema_mode"):
            TargetSchedule(*modes)
    with pytest.raises(ValueError, match="exponential curriculum"):
        TargetSchedule("fixed", "exponential", start_scales=20, end_scales=10)


def test_target_update_with_the_schedules_mu():
    """theta^- <- mu theta^- + (1 - mu) theta through train_util.update_ema; improved CT's mu = 0 copies."""
    target, source = [th.tensor([1.0, 2.0])], [th.tensor([3.0, 6.0])]
    update_ema(target, source, rate=TargetSchedule(start_ema=0.95)(0)[0])
    np.testing.assert_allclose(target[0].numpy(), [1.1, 2.2], rtol=1e-6)
    update_ema(target, source, rate=TargetSchedule("fixed", "exponential", 0.0, 10, 1280, 100)(5)[0])
    assert th.equal(target[0], source[0])


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("clip_denoised", [True, False])
def test_multistep_sampling_closed_form(clip_denoised):
    """x = sigma_max z, then x_0 + sqrt(sigma_next^2 - sigma_min^2) z' after each level but the last (with
    sigma_end: after the last too), the square root in float64 rounded once to float32 (as consistency_models:
    at 2.0 and 1.1 a float32 square root differs); f sees float32 sigmas; the output is clamped to [-1, 1]."""
    calls = []

    def f(x, sigma):
        calls.append((x.clone(), sigma))
        return th.full_like(x, 2.5)

    z = th.ones(2, 3, 4, 4)
    sample = consistency_sample(f, z, [80.0, 2.0, 1.1], 0.002, clip_denoised=clip_denoised,
                                noise_fn=lambda x: th.full_like(x, 0.75))
    assert [c[1].tolist() for c in calls] == [[80.0] * 2, [2.0] * 2, [1.1000000238418579] * 2]
    assert calls[0][1].dtype == th.float32 and th.equal(calls[0][0], 80.0 * z)
    x0 = np.float32(1.0 if clip_denoised else 2.5)
    for (x, _), level in zip(calls[1:], (2.0, 1.1)):
        scale = np.float32(math.sqrt(level**2 - 0.002**2))
        np.testing.assert_array_equal(x.numpy(), np.full(x.shape, x0 + np.float32(0.75) * scale, np.float32))
    assert th.equal(sample, th.ones_like(z))
    left = consistency_sample(lambda x, s: th.full_like(x, 0.25), z, [80.0], 0.002, sigma_end=0.1,
                              noise_fn=lambda x: -th.ones_like(x) * 2)
    np.testing.assert_allclose(left.numpy(), 0.25 - 2 * math.sqrt(0.01 - 0.002**2), rtol=1e-6)
    with pytest.raises(ValueError, match="below the consistency function's sigma_min"):
        consistency_sample(f, z, [80.0, 0.001], 0.002)


def test_cm_ts_sigmas_of_the_published_two_step_schedule():
    """ImageNet-64 CD's two steps "0,22,39" of 40: 80 then 1.38 (SPEC); the last level, just above
    sigma_min in float64, is where consistency_models leaves the sample."""
    sigmas, sigma_end = cm_ts_sigmas("0,22,39", 40)
    assert sigmas[0] == 80.0 and sigmas[1] == pytest.approx(1.38, abs=0.01)
    assert sigma_end == pytest.approx(0.002, rel=1e-12) and sigma_end >= 0.002
    assert cm_ts_sigmas((0, 22, 39), 40) == (sigmas, sigma_end)
    # at sigma_min 0.004 the last level rounds to 0.003999999999999996: clipped, it leaves no noise
    assert cm_ts_sigmas("0,39", 40, sigma_min=0.004)[1] == 0.004
    for bad in ("22,0", "0,40", "5"):
        with pytest.raises(ValueError, match="increasing indices"):
            cm_ts_sigmas(bad, 40)


def test_vp_student_samples_on_the_teachers_timesteps(vp_models):
    model, diffusion, _ = vp_models["epsilon"]
    student = VPModel(model, diffusion)
    timesteps, sigmas = timestep_grid(diffusion.alphas_cumprod, 3)
    seen = []
    sample = consistency_sample(lambda x, s: seen.append(student.timesteps(s)) or student.consistency(x, s),
                                normal((2, 3, 8, 8), 3), sigmas, student.sigma_min)
    assert [t.tolist() for t in seen] == [[t] * 2 for t in timesteps.tolist()]
    assert sample.abs().max() <= 1
