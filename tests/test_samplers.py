"""guided_diffusion.samplers: the one sampler signature, DPM-Solver++(2M) against a 1000-step reference
and against k-diffusion, and k-diffusion's OpenAIDenoiser driving our model and diffusion."""

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch as th

from guided_diffusion import samplers
from guided_diffusion.gaussian_diffusion import LossType, ModelMeanType, ModelVarType
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.schedules import get_named_beta_schedule
from guided_diffusion.unet import UNetModel

DATA_STD = 0.5


def make_diffusion(respacing="", steps=1000, var=ModelVarType.FIXED_SMALL):
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, respacing or [steps]), betas=get_named_beta_schedule("linear", steps),
        model_mean_type=ModelMeanType.EPSILON, model_var_type=var, loss_type=LossType.MSE,
    )


def gaussian_eps_model(steps=1000):
    """The exact eps predictor of data ~ N(0, DATA_STD^2 I) on the linear schedule, at original timesteps
    (integer or, as k-diffusion passes them, fractional: interpolated in log alpha_bar)."""
    log_alpha_bar = th.from_numpy(np.log(np.cumprod(1 - get_named_beta_schedule("linear", steps))))

    def model(x, t, **kwargs):
        t = t.double()
        low = t.floor().long().clamp(max=steps - 2)
        ab = (log_alpha_bar[low] + (t - low) * (log_alpha_bar[low + 1] - log_alpha_bar[low])).exp()
        ab = ab.view(-1, *[1] * (x.dim() - 1))
        return ((1 - ab).sqrt() * x / (ab * DATA_STD**2 + 1 - ab)).to(x.dtype)

    return model


def tiny_unet(learn_sigma=True, seed=0):
    """A small random UNet (weights drawn, so that no output is zero-initialised)."""
    th.manual_seed(seed)
    model = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=6 if learn_sigma else 3,
                      num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16)
    with th.no_grad():
        for param in model.parameters():
            param.copy_(th.randn_like(param) * 0.02)
    return model.eval()


def x_T(shape=(2, 3, 8, 8), seed=1):
    return th.randn(shape, generator=th.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# The one entry point


def written_out_loop(diffusion, model, x, sampler, draws, eta=0.0):
    """DDPM (Ho et al. eq. 11 with the fixed-small variance) or DDIM (Song et al. eq. 12) written out in
    float64 from the schedule's tables, unclipped, with the noise draws `draws` (one per step)."""
    ab = diffusion.alphas_cumprod
    x = x.double()
    for step, i in enumerate(reversed(range(diffusion.num_timesteps))):
        eps = model(x.float(), th.full((len(x),), diffusion.timestep_map[i])).double()
        ab_prev = ab[i - 1] if i > 0 else 1.0
        x0 = (x - math.sqrt(1 - ab[i]) * eps) / math.sqrt(ab[i])
        noise = draws[step].double() * (i > 0)
        if sampler == "ddpm":
            beta = 1 - ab[i] / ab_prev
            mean = math.sqrt(ab_prev) * beta / (1 - ab[i]) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab[i]) * x
            x = mean + math.sqrt(beta * (1 - ab_prev) / (1 - ab[i])) * noise
        else:
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab[i]) * (1 - ab[i] / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * noise
    return x


@pytest.mark.parametrize("name, loop, eta", [("ddpm", "p_sample_loop", 0.0), ("ddim", "ddim_sample_loop", 0.0),
                                             ("ddim", "ddim_sample_loop", 0.6)])
def test_sample_and_the_release_loops_follow_the_written_out_formulas(name, loop, eta):
    diffusion, model = make_diffusion("8"), perturbed_gaussian_model()
    noise = x_T((3, 3, 4, 4))
    draws = [th.randn(noise.shape, generator=th.Generator().manual_seed(10 + k)) for k in range(8)]
    expected = written_out_loop(diffusion, model, noise, name, draws, eta)
    options = {"eta": eta} if name == "ddim" else {}
    seen = []
    stream = iter(draws)
    ours = samplers.sample(diffusion, model, noise.shape, sampler=name, noise=noise, clip_denoised=False,
                           noise_fn=lambda x: next(stream), callback=seen.append, **options)
    stream = iter(draws)
    released = getattr(diffusion, loop)(model, noise.shape, noise=noise, clip_denoised=False,
                                        noise_fn=lambda x: next(stream), **options)
    assert th.allclose(ours.double(), expected, atol=1e-5)
    assert th.equal(ours, released)
    assert [s["i"] for s in seen] == list(range(8)) and th.equal(seen[-1]["sample"], ours)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="ddpm, ddim, dpm\\+\\+2m"):
        samplers.sample(make_diffusion("5"), gaussian_eps_model(), (1, 2), sampler="euler", device="cpu")


# ----------------------------------------------------------------------------------------------
# DPM-Solver++(2M)


def test_dpm_solver_first_step_and_second_order_step_follow_the_formulas():
    diffusion = make_diffusion("3")  # kept timesteps 0, 500, 999
    model = gaussian_eps_model()
    x = x_T((2, 3, 4)).double()
    steps = list(samplers.sample_steps(diffusion, model, x.shape, sampler="dpm++2m", noise=x, clip_denoised=False))
    ab = diffusion.alphas_cumprod
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha / sigma)

    def x0_at(x, i):
        t = th.full((x.shape[0],), diffusion.timestep_map[i])
        eps = model(x, t)
        return (x - sigma[i] * eps) / alpha[i]

    h1 = lam[1] - lam[2]
    x0_2 = x0_at(x, 2)
    x1 = sigma[1] / sigma[2] * x - alpha[1] * math.expm1(-h1) * x0_2
    h0 = lam[0] - lam[1]
    x0_1 = x0_at(x1, 1)
    r = h1 / h0
    d = (1 + 1 / (2 * r)) * x0_1 - 1 / (2 * r) * x0_2
    x0 = sigma[0] / sigma[1] * x1 - alpha[0] * math.expm1(-h0) * d
    assert len(steps) == 3
    assert th.allclose(steps[0]["sample"], x1, rtol=1e-5, atol=1e-5)  # float32 tables
    assert th.allclose(steps[1]["sample"], x0, rtol=1e-5, atol=1e-5)
    assert th.allclose(steps[2]["sample"], x0_at(x0, 0), rtol=1e-5, atol=1e-5)  # ends on the data prediction


def perturbed_gaussian_model(seed=0):
    """A non-linear 'trained model': the exact Gaussian eps plus a random, t-dependent convolution."""
    gaussian = gaussian_eps_model()
    conv = th.nn.Conv2d(3, 3, 3, padding=1)
    with th.no_grad():
        for param in conv.parameters():
            param.copy_(th.randn(param.shape, generator=th.Generator().manual_seed(seed)) * 0.3)

    def model(x, t, **kwargs):
        phase = (t.double() / 300).sin().view(-1, 1, 1, 1)
        return gaussian(x, t) + 0.3 * th.tanh(conv(x.float()).double() + phase).to(x.dtype)

    return model


def solve_dpm(model, noise, steps):
    with th.no_grad():
        return samplers.sample(make_diffusion(str(steps)), model, noise.shape, sampler="dpm++2m", noise=noise,
                               clip_denoised=False)


def test_the_1000_step_dpm_solver_solves_the_probability_flow_ode():
    noise = x_T((4, 3, 8, 8)).double()
    # the probability-flow ODE of Gaussian data is linear: x_0 = x_T * std_0 / std_T
    ab = np.cumprod(1 - get_named_beta_schedule("linear", 1000))
    exact = noise * math.sqrt(ab[0] * DATA_STD**2 + 1 - ab[0]) / math.sqrt(ab[-1] * DATA_STD**2 + 1 - ab[-1])
    assert (solve_dpm(gaussian_eps_model(), noise, 1000) - exact).abs().max() < 2e-3


def test_dpm_solver_converges_toward_the_1000_step_reference():
    model, noise = perturbed_gaussian_model(), x_T((4, 3, 8, 8)).double()
    reference = solve_dpm(model, noise, 1000)
    errors = [(solve_dpm(model, noise, steps) - reference).abs().mean().item() for steps in (5, 10, 20)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.2 * errors[0]


def test_dpm_solver_clips_the_data_prediction():
    diffusion = make_diffusion("4")
    big = samplers.sample(diffusion, lambda x, t: -2 * th.ones_like(x), (2, 3), sampler="dpm++2m",
                          noise=th.full((2, 3), 3.0))
    assert big.abs().max() <= 1  # the last step returns the clipped x_0


# ----------------------------------------------------------------------------------------------
# k-diffusion (installed with --no-deps): loaded by file path, its unused imports stubbed


def load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    root = Path(spec.submodule_search_locations[0])
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils", "torchdiffeq", "torchsde")}
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.dim())]
    package.utils = utils
    stubs = {"k_diffusion": package, "k_diffusion.utils": utils,
             "torchdiffeq": types.SimpleNamespace(odeint=None), "torchsde": types.ModuleType("torchsde")}
    try:
        sys.modules.update(stubs)
        modules = {}
        for name in ("sampling", "external"):
            module_spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", root / f"{name}.py")
            modules[name] = importlib.util.module_from_spec(module_spec)
            sys.modules[f"k_diffusion.{name}"] = modules[name]
            setattr(package, name, modules[name])
            try:
                module_spec.loader.exec_module(modules[name])
            except ImportError as error:
                pytest.skip(f"k-diffusion's {name}.py needs {error.name}, which is not installed")
        return modules["sampling"], modules["external"]
    finally:
        for name in ("k_diffusion.sampling", "k_diffusion.external"):
            sys.modules.pop(name, None)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_openai_denoiser_gives_our_eps_and_x0():
    _, external = load_k_diffusion()
    model, diffusion = tiny_unet(learn_sigma=True), make_diffusion(var=ModelVarType.LEARNED_RANGE)
    wrapped = external.OpenAIDenoiser(model, diffusion, quantize=True)
    x = x_T()
    t = th.tensor([37, 640])
    sigma = wrapped.sigmas[t]
    with th.no_grad():
        ours = diffusion.p_mean_variance(model, x, t, clip_denoised=False)
        k_eps = wrapped.get_eps(x, wrapped.sigma_to_t(sigma))
        k_x0 = wrapped(x / th.from_numpy(diffusion.sqrt_alphas_cumprod[t]).float().view(-1, 1, 1, 1), sigma)
    assert th.allclose(k_eps, diffusion._predict_eps_from_xstart(x, t, ours["pred_xstart"]), atol=1e-5)
    assert th.allclose(k_x0, ours["pred_xstart"], rtol=1e-4, atol=1e-4)


def test_dpm_solver_agrees_with_k_diffusion_on_the_same_timesteps():
    k_sampling, external = load_k_diffusion()
    model, full = tiny_unet(learn_sigma=True, seed=2), make_diffusion(var=ModelVarType.LEARNED_RANGE)
    respaced = make_diffusion("10", var=ModelVarType.LEARNED_RANGE)
    noise = x_T(seed=3)
    with th.no_grad():
        ours = samplers.sample(respaced, model, noise.shape, sampler="dpm++2m", noise=noise, clip_denoised=False)
        wrapped = external.OpenAIDenoiser(model, full)
        kept = th.tensor(respaced.timestep_map).flip(0)
        sigmas = th.cat([wrapped.sigmas[kept], th.zeros(1)])
        theirs = k_sampling.sample_dpmpp_2m(wrapped, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, disable=True)
    # an untrained eps ~ 0 gives |x_0| ~ |x_T| / sqrt(alpha_bar_T) in the hundreds: compare relative to that
    assert (ours - theirs).abs().max() < 1e-5 * ours.abs().max()


def test_use_ddim_means_ddim_and_conflicts_with_another_sampler():
    assert samplers.resolve_sampler("ddpm", use_ddim=False) == "ddpm"
    assert samplers.resolve_sampler("ddpm", use_ddim=True) == "ddim"
    assert samplers.resolve_sampler("dpm++2m") == "dpm++2m"
    with pytest.raises(ValueError, match="give only one"):
        samplers.resolve_sampler("dpm++2m", use_ddim=True)


def k_diffusion_run(respaced, model, noise, sampler, **options):
    """k-diffusion's sampler `sampler` through OpenAIDenoiser on the respaced diffusion's timesteps."""
    k_sampling, external = load_k_diffusion()
    wrapped = external.OpenAIDenoiser(model, make_diffusion(var=ModelVarType.LEARNED_RANGE))
    kept = th.tensor(respaced.timestep_map).flip(0)
    sigmas = th.cat([wrapped.sigmas[kept], th.zeros(1)])
    return getattr(k_sampling, sampler)(wrapped, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, disable=True, **options)


def noise_draws(shape, count=30, seed=100):
    return [th.randn(shape, generator=th.Generator().manual_seed(seed + k)) for k in range(count)]


@pytest.mark.parametrize("eta", [1.0, 2.0])  # 2: more noise than the reverse SDE, docs/tradeoffs.md's best at 50 steps
def test_dpm_solver_sde_equals_k_diffusion_given_the_same_draws_one_per_step_none_on_the_last(eta):
    model, respaced, noise = tiny_unet(learn_sigma=True, seed=2), make_diffusion("10", var=ModelVarType.LEARNED_RANGE), x_T(seed=3)
    draws, used = noise_draws(noise.shape), []

    def noise_fn(x):
        used.append(len(used))
        return draws[len(used) - 1]

    with th.no_grad():
        ours = samplers.sample(respaced, model, noise.shape, sampler="dpm++2m-sde", eta=eta, noise=noise,
                               clip_denoised=False, noise_fn=noise_fn)
        stream = iter(draws)
        theirs = k_diffusion_run(respaced, model, noise, "sample_dpmpp_2m_sde", eta=eta,
                                 noise_sampler=lambda sigma, sigma_next: next(stream))
    assert len(used) == 9  # 10 steps, the last returns x_0
    assert (ours - theirs).abs().max() < 1e-5 * ours.abs().max()


def test_dpm_solver_sde_with_eta_0_is_dpm_solver_and_draws_nothing():
    model, respaced, noise = tiny_unet(learn_sigma=True, seed=2), make_diffusion("10", var=ModelVarType.LEARNED_RANGE), x_T(seed=3)
    with th.no_grad():
        deterministic = samplers.sample(respaced, model, noise.shape, sampler="dpm++2m", noise=noise)
        sde = samplers.sample(respaced, model, noise.shape, sampler="dpm++2m-sde", eta=0.0, noise=noise,
                              noise_fn=lambda x: pytest.fail("eta = 0 draws no noise"))
    assert th.equal(deterministic, sde)


def test_heun_without_churn_equals_k_diffusion_and_is_deterministic():
    model, respaced, noise = tiny_unet(learn_sigma=True, seed=2), make_diffusion("10", var=ModelVarType.LEARNED_RANGE), x_T(seed=3)
    with th.no_grad():
        ours = samplers.sample(respaced, model, noise.shape, sampler="heun", noise=noise, clip_denoised=False,
                               noise_fn=lambda x: pytest.fail("churn 0 draws no noise"))
        theirs = k_diffusion_run(respaced, model, noise, "sample_heun")
    assert (ours - theirs).abs().max() < 1e-5 * ours.abs().max()


def test_heun_takes_two_evaluations_per_step_and_one_on_the_last():
    calls = []
    model = perturbed_gaussian_model()

    def counting(x, t, **kwargs):
        calls.append(t[0].item())
        return model(x, t)

    samplers.sample(make_diffusion("6"), counting, (2, 3, 4, 4), sampler="heun", device="cpu")
    assert len(calls) == 2 * 6 - 1 and calls[-1] == 0


def test_heun_churn_raises_the_noise_level_to_an_original_timestep_with_one_draw_each():
    diffusion, model = make_diffusion("10"), perturbed_gaussian_model()
    calls, draws = [], []

    def recording(x, t, **kwargs):
        calls.append(t[0].item())
        return model(x, t)

    def noise_fn(x):
        draws.append(1)
        return th.randn(x.shape, generator=th.Generator().manual_seed(len(draws)), dtype=x.dtype)

    noise = x_T((2, 3, 4, 4)).double()
    churned = samplers.sample(diffusion, recording, noise.shape, sampler="heun", noise=noise, churn=5.0,
                              s_tmin=0.05, s_tmax=50.0, noise_fn=noise_fn)
    ab = np.cumprod(1 - get_named_beta_schedule("linear", 1000))
    s = np.sqrt((1 - ab) / ab)
    gamma = min(5.0 / 10, math.sqrt(2) - 1)
    raised = [int(np.abs(np.log(s) - np.log(s[tau] * (1 + gamma))).argmin()) for tau in diffusion.timestep_map
              if 0.05 <= s[tau] <= 50.0]
    assert len(draws) == len(raised) > 0
    assert all(tau in calls for tau in raised) and not set(raised) & set(diffusion.timestep_map)
    plain = samplers.sample(diffusion, model, noise.shape, sampler="heun", noise=noise)
    assert (churned - plain).abs().max() > 1e-3


def test_lower_order_final_makes_the_last_update_first_order():
    diffusion, model = make_diffusion("3"), gaussian_eps_model()  # kept timesteps 0, 500, 999
    x = x_T((2, 3, 4)).double()
    steps = list(samplers.sample_steps(diffusion, model, x.shape, sampler="dpm++2m", noise=x, clip_denoised=False,
                                       lower_order_final=True))
    ab = diffusion.alphas_cumprod
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha / sigma)
    t1 = th.full((2,), diffusion.timestep_map[1])
    x0_1 = (steps[0]["sample"] - sigma[1] * model(steps[0]["sample"], t1)) / alpha[1]
    h0 = lam[0] - lam[1]
    first_order = sigma[0] / sigma[1] * steps[0]["sample"] - alpha[0] * math.expm1(-h0) * x0_1
    assert th.allclose(steps[1]["sample"], first_order, rtol=1e-5, atol=1e-5)
    second_order = list(samplers.sample_steps(diffusion, model, x.shape, sampler="dpm++2m", noise=x,
                                              clip_denoised=False))[1]["sample"]
    assert (second_order - first_order).abs().max() > 1e-3


def test_dynamic_thresholding_scales_each_sample_by_its_quantile():
    threshold = samplers.dynamic_thresholding(0.5)
    x0 = th.tensor([[0.2, -0.4, 0.6, 0.8], [3.0, -1.0, 2.0, 4.0]]).view(2, 1, 2, 2)
    out = threshold(x0)
    assert th.equal(out[0], x0[0])  # the median |x_0| is 0.5 < 1: left as it is
    level = th.quantile(th.tensor([3.0, 1.0, 2.0, 4.0]), 0.5)  # 2.5
    assert th.allclose(out[1].flatten(), th.tensor([2.5, -1.0, 2.0, 2.5]) / level)
    with pytest.raises(ValueError, match="quantile in \\(0, 1\\]"):
        samplers.dynamic_thresholding(99.5)


def test_score_guidance_reclips_x0_for_the_new_samplers_and_not_for_the_release_ddim():
    diffusion, model = make_diffusion("5"), gaussian_eps_model()
    noise = x_T((2, 3, 4))
    push = lambda x, t, prediction, **kw: 50 * th.ones_like(x)  # noqa: E731: saturates x_0 at t = T - 1

    def first_x0(sampler, **options):
        steps = samplers.sample_steps(diffusion, model, noise.shape, sampler=sampler, guidance=push, noise=noise,
                                      **options)
        return next(iter(steps))["pred_xstart"]

    assert first_x0("ddim").max() > 100  # the release: alpha_bar_{T-1} ~ 4e-5 divides the shift
    assert first_x0("ddim", reclip_guided=True).abs().max() <= 1
    for sampler in ("dpm++2m", "dpm++2m-sde", "heun"):
        assert first_x0(sampler).abs().max() <= 1, sampler
        assert first_x0(sampler, reclip_guided=False).max() > 100, sampler


def test_start_step_and_ddim_inversion_reconstruct_better_with_more_steps():
    model, x0 = perturbed_gaussian_model(), 0.5 * x_T((4, 3, 8, 8)).double().clamp(-2, 2) / 2
    errors = []
    for steps in (5, 20, 100):
        diffusion = make_diffusion(str(steps))
        latent = samplers.invert(diffusion, model, x0, clip_denoised=False)
        back = samplers.sample(diffusion, model, x0.shape, sampler="ddim", noise=latent, clip_denoised=False)
        errors.append((back - x0).abs().mean().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1 * errors[0]
    diffusion = make_diffusion("20")
    middle = samplers.invert(diffusion, model, x0, end_step=9, clip_denoised=False)
    back = samplers.sample(diffusion, model, x0.shape, sampler="ddim", noise=middle, start_step=9, clip_denoised=False)
    assert (back - x0).abs().mean() < errors[1]  # half the trajectory: less error than the whole


def test_sampler_options_are_checked_against_the_sampler():
    with pytest.raises(ValueError, match="'ddpm' does not take eta: it takes no options"):
        samplers.sample(make_diffusion("5"), gaussian_eps_model(), (1, 2), sampler="ddpm", device="cpu", eta=0.5)
    with pytest.raises(ValueError, match="churn=0.0"):
        samplers.sample(make_diffusion("5"), gaussian_eps_model(), (1, 2), sampler="heun", device="cpu", rho=7)
    assert samplers.SAMPLERS["dpm++2m-sde"].options() == {"eta": 1.0, "lower_order_final": False}
