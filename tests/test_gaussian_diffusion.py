"""Closed-form checks of guided_diffusion.gaussian_diffusion with tiny hand-made models (no UNet)."""

import math

import numpy as np
import pytest
import torch as th

from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    betas_for_alpha_bar,
    get_named_beta_schedule,
)
from guided_diffusion.losses import discretized_gaussian_log_likelihood

SHORT_BETAS = np.linspace(1e-3, 0.1, 10)  # alpha_bar_T ~ 0.6: the prior KL is far from 0


def make_diffusion(betas=SHORT_BETAS, mean=ModelMeanType.EPSILON, var=ModelVarType.FIXED_SMALL,
                   loss=LossType.MSE, rescale_timesteps=False):
    return GaussianDiffusion(
        betas=betas, model_mean_type=mean, model_var_type=var, loss_type=loss,
        rescale_timesteps=rescale_timesteps,
    )


class FixedOutput(th.nn.Module):
    """A 'model' returning a fixed tensor (a parameter, so gradients can be inspected)."""

    def __init__(self, out):
        super().__init__()
        self.out = th.nn.Parameter(out.clone())
        self.timesteps = []

    def forward(self, x, t, **kwargs):
        self.timesteps.append(t)
        return self.out


def zeros_model(channels_factor=1):
    def model(x, t, **kwargs):
        return th.zeros(x.shape[0], x.shape[1] * channels_factor, *x.shape[2:], dtype=x.dtype)

    return model


def gaussian_eps_model(diffusion, data_std=0.5):
    """The exact eps predictor for data ~ N(0, data_std^2 I): a smooth, analytic 'trained model'."""
    alpha_bar = th.from_numpy(diffusion.alphas_cumprod)

    def model(x, t, **kwargs):
        ab = alpha_bar[t].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return (1 - ab).sqrt() * x / (ab * data_std**2 + 1 - ab)

    return model


def seeded_noise_fn(seed):
    generator = th.Generator().manual_seed(seed)
    return lambda x: th.randn(x.shape, generator=generator, dtype=x.dtype)


def col(values, x):
    """numpy [N] -> float64 tensor broadcastable against x [N, ...]."""
    return th.as_tensor(values, dtype=th.float64).view(-1, *([1] * (x.dim() - 1)))


def kl_bits(mean1, logvar1, mean2, logvar2):
    """Per-example mean Gaussian KL in bits, float64 reference."""
    kl = 0.5 * (-1 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())
    return kl.flatten(1).mean(1) / math.log(2)


# ----------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("steps", [1000, 250, 4000])
def test_linear_betas_follow_the_scaled_formula(steps):
    betas = get_named_beta_schedule("linear", steps)
    scale = 1000 / steps
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    i = np.arange(steps)
    expected = scale * 1e-4 + i * (scale * 0.02 - scale * 1e-4) / (steps - 1)
    np.testing.assert_allclose(betas, expected, rtol=1e-13, atol=0)
    assert betas[0] == scale * 1e-4 and betas[-1] == pytest.approx(scale * 0.02, rel=1e-15)


def test_cosine_betas_follow_the_formula_and_are_clipped():
    steps = 1000
    betas = get_named_beta_schedule("cosine", steps)

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
    np.testing.assert_array_equal(betas, np.array(expected))
    assert betas[-1] == 0.999 and (betas[:-1] < 0.999).all()  # alpha_bar(1) = 0 would give beta = 1
    # Away from the clip, the cumulative product is the continuous alpha_bar.
    alphas_cumprod = np.cumprod(1 - betas)
    for i in (0, 10, 500, 900):
        assert alphas_cumprod[i] == pytest.approx(alpha_bar((i + 1) / steps) / alpha_bar(0), rel=1e-10)


def test_betas_for_alpha_bar_max_beta():
    betas = betas_for_alpha_bar(4, lambda t: 1 - t, max_beta=0.4)
    np.testing.assert_allclose(betas, [0.25, 1 / 3, 0.4, 0.4])


def test_a_linear_schedule_shorter_than_20_steps_is_refused_by_name():
    assert get_named_beta_schedule("linear", 20)[-1] == pytest.approx(1.0)  # the shortest: its last beta is 1
    with pytest.raises(ValueError, match=r"needs --diffusion_steps >= 20: over 10 steps its last beta, "
                                         r"0.02 \* 1000 / T, is 2 > 1"):
        get_named_beta_schedule("linear", 10)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(NotImplementedError, match="linear or cosine"):
        get_named_beta_schedule("quadratic", 10)


def test_invalid_betas_are_rejected():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        make_diffusion(betas=np.array([0.1, 1.5]))


# ----------------------------------------------------------------------------------------------
# Forward process and posterior


def test_q_mean_variance_closed_form():
    diffusion = make_diffusion()
    x0 = th.rand(4, 3, 2, 2) * 2 - 1
    t = th.tensor([0, 3, 7, 9])
    mean, var, logvar = diffusion.q_mean_variance(x0, t)
    ab = col(np.cumprod(1 - SHORT_BETAS)[t.numpy()], x0)
    assert th.allclose(mean.double(), ab.sqrt() * x0.double(), rtol=1e-6)
    assert th.allclose(var.double(), (1 - ab).expand_as(var), rtol=1e-6)
    assert th.allclose(logvar.double(), (1 - ab).log().expand_as(var), rtol=1e-6)
    assert mean.dtype == var.dtype == th.float32


def test_q_sample_marginal_statistics():
    diffusion = make_diffusion()
    th.manual_seed(0)
    n = 200_000
    x0 = th.full((n, 1), 0.8)
    t = th.full((n,), 6)
    xt = diffusion.q_sample(x0, t)
    ab = diffusion.alphas_cumprod[6]
    # standard errors: sqrt(var / n) ~ 0.0015 for the mean, var * sqrt(2 / n) ~ 0.001 for the variance
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=0.008)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.006)


def test_q_sample_with_given_noise():
    diffusion = make_diffusion()
    x0, noise = th.randn(3, 2, 4), th.randn(3, 2, 4)
    t = th.tensor([0, 5, 9])
    ab = col(diffusion.alphas_cumprod[t.numpy()], x0)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    assert th.allclose(diffusion.q_sample(x0, t, noise=noise).double(), expected, atol=1e-6)


def test_posterior_matches_bayes_rule():
    # q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1 - ab_{t-1})
    diffusion = make_diffusion()
    T = diffusion.num_timesteps
    x0, xt = th.randn(T - 1, 5), th.randn(T - 1, 5)
    t = th.arange(1, T)
    mean, var, logvar = diffusion.q_posterior_mean_variance(x0, xt, t)
    beta = col(SHORT_BETAS[1:], x0)
    ab_prev = col(np.cumprod(1 - SHORT_BETAS)[:-1], x0)
    precision = (1 - beta) / beta + 1 / (1 - ab_prev)
    expected_var = 1 / precision
    expected_mean = expected_var * (
        (1 - beta).sqrt() / beta * xt.double() + ab_prev.sqrt() / (1 - ab_prev) * x0.double()
    )
    assert th.allclose(var.double(), expected_var.expand_as(var), rtol=1e-5)
    assert th.allclose(logvar.double(), expected_var.log().expand_as(var), rtol=1e-5)
    assert th.allclose(mean.double(), expected_mean, rtol=1e-5, atol=1e-6)


def test_posterior_at_t0_is_x0_with_clipped_log_variance():
    diffusion = make_diffusion()
    x0, xt = th.randn(2, 3), th.randn(2, 3)
    mean, var, logvar = diffusion.q_posterior_mean_variance(x0, xt, th.zeros(2, dtype=th.long))
    assert th.allclose(mean, x0, atol=1e-6)
    assert (var == 0).all()
    assert th.allclose(logvar, th.full_like(logvar, math.log(diffusion.posterior_variance[1])))


# ----------------------------------------------------------------------------------------------
# p_mean_variance


def test_p_mean_variance_eps_prediction():
    diffusion = make_diffusion()
    x = th.randn(3, 2, 4, 4)
    eps = th.randn(3, 2, 4, 4)
    t = th.tensor([0, 4, 9])
    out = diffusion.p_mean_variance(FixedOutput(eps), x, t, clip_denoised=False)
    ab = col(diffusion.alphas_cumprod[t.numpy()], x)
    x0 = (x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    assert th.allclose(out["pred_xstart"].double(), x0, rtol=1e-5, atol=1e-5)
    post_mean, _, _ = diffusion.q_posterior_mean_variance(out["pred_xstart"], x, t)
    assert th.equal(out["mean"], post_mean)
    assert th.equal(out["variance"][:, 0, 0, 0], th.from_numpy(diffusion.posterior_variance[t.numpy()]).float())
    clipped = diffusion.p_mean_variance(FixedOutput(eps), x, t, clip_denoised=True)
    assert th.equal(clipped["pred_xstart"], out["pred_xstart"].clamp(-1, 1))


def test_p_mean_variance_denoised_fn_runs_before_clipping():
    diffusion = make_diffusion(mean=ModelMeanType.START_X)
    x = th.randn(2, 1, 3)
    model = FixedOutput(th.full((2, 1, 3), 0.5))
    out = diffusion.p_mean_variance(model, x, th.tensor([2, 3]), denoised_fn=lambda x0: x0 * 4)
    assert th.equal(out["pred_xstart"], th.ones(2, 1, 3))


def test_p_mean_variance_previous_x_round_trips_the_posterior_mean():
    diffusion = make_diffusion(mean=ModelMeanType.PREVIOUS_X)
    x = th.randn(3, 2, 5, dtype=th.float64)
    xprev = th.randn(3, 2, 5, dtype=th.float64)
    t = th.tensor([1, 5, 9])
    out = diffusion.p_mean_variance(FixedOutput(xprev), x, t, clip_denoised=False)
    assert th.equal(out["mean"], xprev)
    mean_again, _, _ = diffusion.q_posterior_mean_variance(out["pred_xstart"], x, t)
    assert th.allclose(mean_again, xprev, atol=1e-5)


def test_fixed_variances():
    t = th.tensor([0, 1, 9])
    x = th.zeros(3, 1)
    small = make_diffusion(var=ModelVarType.FIXED_SMALL).p_mean_variance(zeros_model(), x, t)
    large = make_diffusion(var=ModelVarType.FIXED_LARGE).p_mean_variance(zeros_model(), x, t)
    post = make_diffusion().posterior_variance
    np.testing.assert_allclose(small["variance"][:, 0].numpy(), [post[0], post[1], post[9]], rtol=1e-6)
    np.testing.assert_allclose(small["log_variance"][:, 0].numpy(), np.log([post[1], post[1], post[9]]), rtol=1e-6)
    # beta_t, except at t = 0 where the posterior variance of t = 1 is used
    large_expected = np.array([post[1], SHORT_BETAS[1], SHORT_BETAS[9]])
    np.testing.assert_allclose(large["variance"][:, 0].numpy(), large_expected, rtol=1e-6)
    np.testing.assert_allclose(large["log_variance"][:, 0].numpy(), np.log(large_expected), rtol=1e-6)


@pytest.mark.parametrize("v", [-1.0, 0.0, 1.0])
def test_learned_range_interpolates_log_variances(v):
    diffusion = make_diffusion(var=ModelVarType.LEARNED_RANGE)
    x = th.randn(3, 2, 4)
    t = th.tensor([0, 4, 9])
    output = th.cat([th.randn(3, 2, 4), th.full((3, 2, 4), v)], dim=1)
    out = diffusion.p_mean_variance(FixedOutput(output), x, t)
    frac = (v + 1) / 2
    expected = frac * np.log(SHORT_BETAS[t]) + (1 - frac) * diffusion.posterior_log_variance_clipped[t]
    np.testing.assert_allclose(out["log_variance"][:, 0, 0].detach().numpy(), expected, rtol=1e-6)
    assert th.allclose(out["variance"], out["log_variance"].exp())
    # the mean channels are the eps prediction, exactly as without a learned variance
    fixed = make_diffusion().p_mean_variance(FixedOutput(output[:, :2]), x, t)
    assert th.equal(out["mean"], fixed["mean"])


def test_learned_variance_is_the_log_variance_output():
    diffusion = make_diffusion(var=ModelVarType.LEARNED)
    logvar = th.randn(2, 3, 4)
    model = FixedOutput(th.cat([th.zeros(2, 3, 4), logvar], 1))
    out = diffusion.p_mean_variance(model, th.randn(2, 3, 4), th.tensor([1, 2]))
    assert th.equal(out["log_variance"], logvar) and th.equal(out["variance"], logvar.exp())


def test_learned_sigma_with_wrong_channel_count_explains_the_flag():
    diffusion = make_diffusion(var=ModelVarType.LEARNED_RANGE)
    with pytest.raises(ValueError, match="learn_sigma"):
        diffusion.p_mean_variance(zeros_model(), th.zeros(2, 3, 4), th.tensor([1, 2]))


def test_rescale_timesteps_scales_what_the_model_sees():
    diffusion = make_diffusion(rescale_timesteps=True)
    model = FixedOutput(th.zeros(2, 1))
    diffusion.p_mean_variance(model, th.zeros(2, 1), th.tensor([0, 9]))
    assert model.timesteps[0].dtype == th.float32
    assert model.timesteps[0].tolist() == [0.0, 900.0]


# ----------------------------------------------------------------------------------------------
# Samplers


def test_p_sample_step_formula_and_no_noise_at_t0():
    diffusion = make_diffusion()
    x = th.randn(2, 3, 4)
    z = th.randn(2, 3, 4)
    t = th.tensor([0, 5])
    model = gaussian_eps_model(diffusion)
    out = diffusion.p_sample(model, x, t, noise_fn=lambda like: z)
    pmv = diffusion.p_mean_variance(model, x, t)
    assert th.equal(out["sample"][0], pmv["mean"][0])
    assert th.equal(out["sample"][1], pmv["mean"][1] + th.exp(0.5 * pmv["log_variance"][1]) * z[1])


def test_default_noise_reproduces_the_release_random_stream():
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    shape = (2, 3, 4, 4)
    th.manual_seed(7)
    sample = diffusion.p_sample_loop(model, shape, device="cpu")
    th.manual_seed(7)
    img = th.randn(*shape)
    for i in reversed(range(diffusion.num_timesteps)):
        t = th.tensor([i] * shape[0])
        out = diffusion.p_mean_variance(model, img, t)
        noise = th.randn_like(img)
        img = out["mean"] + (t != 0).float().view(-1, 1, 1, 1) * th.exp(0.5 * out["log_variance"]) * noise
    assert th.equal(sample, img)


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_noise_fn_makes_sampling_reproducible_and_draws_everything(loop):
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    shape = (2, 1, 4, 4)
    kwargs = dict(device="cpu", eta=1.0) if loop == "ddim_sample_loop" else dict(device="cpu")
    calls = []

    def counting(seed):
        fn = seeded_noise_fn(seed)
        return lambda x: calls.append(1) or fn(x)

    a = getattr(diffusion, loop)(model, shape, noise_fn=counting(1), **kwargs)
    th.manual_seed(123)  # the global RNG must not matter
    b = getattr(diffusion, loop)(model, shape, noise_fn=counting(1), **kwargs)
    c = getattr(diffusion, loop)(model, shape, noise_fn=counting(2), **kwargs)
    assert th.equal(a, b) and not th.allclose(a, c)
    assert len(calls) == 3 * (diffusion.num_timesteps + 1)  # the initial x_T and one draw per step


def test_progressive_loop_yields_every_step_and_shows_progress():
    diffusion = make_diffusion()
    steps = list(diffusion.ddim_sample_loop_progressive(
        gaussian_eps_model(diffusion), (1, 2), device="cpu", progress=True, noise_fn=seeded_noise_fn(0)
    ))
    assert len(steps) == diffusion.num_timesteps
    assert all(set(s) == {"sample", "pred_xstart"} for s in steps)
    final = diffusion.ddim_sample_loop(gaussian_eps_model(diffusion), (1, 2), device="cpu", noise_fn=seeded_noise_fn(0))
    assert th.equal(steps[-1]["sample"], final)


def test_sample_loop_default_device_comes_from_the_model():
    diffusion = make_diffusion(mean=ModelMeanType.START_X)
    sample = diffusion.p_sample_loop(FixedOutput(th.full((2, 3), 0.25)), (2, 3))
    assert sample.device.type == "cpu"
    assert th.allclose(sample, th.full((2, 3), 0.25))  # at t = 0 the mean is x_0


def test_ddim_eta0_is_deterministic_and_follows_the_formula():
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    xT = th.randn(2, 3, 4)
    a = diffusion.ddim_sample_loop(model, xT.shape, noise=xT, noise_fn=seeded_noise_fn(0))
    b = diffusion.ddim_sample_loop(model, xT.shape, noise=xT, noise_fn=seeded_noise_fn(1))
    assert th.equal(a, b)

    x, t = th.randn(2, 3, 4), th.tensor([3, 8])
    out = diffusion.ddim_sample(model, x, t, clip_denoised=False)
    eps = model(x, t)
    ab = col(diffusion.alphas_cumprod[t.numpy()], x)
    ab_prev = col(diffusion.alphas_cumprod_prev[t.numpy()], x)
    x0 = (x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    expected = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps.double()
    assert th.allclose(out["sample"].double(), expected, atol=1e-5)


def test_ddim_eta1_is_the_ddpm_step_with_fixed_small_variance():
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    x, z = th.randn(4, 3, 4), th.randn(4, 3, 4)
    t = th.tensor([0, 1, 5, 9])
    ddim = diffusion.ddim_sample(model, x, t, eta=1.0, noise_fn=lambda like: z)
    ddpm = diffusion.p_sample(model, x, t, noise_fn=lambda like: z)
    assert th.allclose(ddim["sample"], ddpm["sample"], atol=1e-5)


def test_ddim_reverse_sample_is_exact_for_a_constant_eps_model():
    diffusion = make_diffusion()
    model = FixedOutput(th.randn(2, 3, 4, dtype=th.float64) * 0.1)
    x = th.randn(2, 3, 4, dtype=th.float64) * 0.3
    for i in range(1, diffusion.num_timesteps):
        t = th.full((2,), i)
        prev = diffusion.ddim_sample(model, x, t, clip_denoised=False)["sample"]
        back = diffusion.ddim_reverse_sample(model, prev, t - 1, clip_denoised=False)["sample"]
        assert th.allclose(back, x, atol=1e-6)


def ddim_round_trip_error(steps):
    """Max |x_0 - decode(encode(x_0))| with DDIM over a linear schedule of `steps` steps."""
    diffusion = make_diffusion(betas=get_named_beta_schedule("linear", steps))
    model = gaussian_eps_model(diffusion)
    x0 = th.randn(2, 3, 4, 4, generator=th.Generator().manual_seed(0), dtype=th.float64) * 0.5
    x = x0
    for i in range(diffusion.num_timesteps):  # encode: x_0 -> x_T along the ODE
        x = diffusion.ddim_reverse_sample(model, x, th.full((2,), i), clip_denoised=False)["sample"]
    assert x.std() > 0.9  # really noised
    decoded = diffusion.ddim_sample_loop(model, x0.shape, noise=x, clip_denoised=False)
    return (decoded - x0).abs().max().item()


def test_ddim_reverse_loop_inverts_ddim_sampling():
    # Both directions are Euler steps of the same ODE: the round trip is exact up to a first-order
    # discretization error, so 4x more steps give ~4x less error.
    coarse, fine = ddim_round_trip_error(250), ddim_round_trip_error(1000)
    assert fine < 0.015
    assert 3 < coarse / fine < 5


def test_ddim_reverse_sample_needs_eta0():
    diffusion = make_diffusion()
    with pytest.raises(ValueError, match="eta=0.0"):
        diffusion.ddim_reverse_sample(zeros_model(), th.zeros(2, 3), th.full((2,), 1), eta=0.5)


def test_sampling_without_a_device_or_parameters_asks_for_one():
    with pytest.raises(ValueError, match="device="):
        make_diffusion().p_sample_loop(zeros_model(), (2, 3))


# ----------------------------------------------------------------------------------------------
# Guidance


def test_condition_mean_shifts_the_mean_by_variance_times_gradient():
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    x, t = th.randn(2, 3, 4), th.tensor([2, 7])
    pmv = diffusion.p_mean_variance(model, x, t)
    assert th.equal(diffusion.condition_mean(lambda x, t: th.zeros_like(x), pmv, x, t), pmv["mean"])
    g = th.full_like(x, 0.3)
    seen = {}

    def cond_fn(x, t, y=None):
        seen["y"] = y
        return g

    shifted = diffusion.condition_mean(cond_fn, pmv, x, t, model_kwargs={"y": "label"})
    assert th.allclose(shifted, pmv["mean"] + pmv["variance"] * 0.3)
    assert seen["y"] == "label"


def test_condition_score_shifts_eps_by_sqrt_one_minus_alpha_bar_times_gradient():
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    x, t = th.randn(2, 3, 4), th.tensor([2, 7])
    pmv = diffusion.p_mean_variance(model, x, t, clip_denoised=False)
    same = diffusion.condition_score(lambda x, t: th.zeros_like(x), pmv, x, t)
    assert th.allclose(same["pred_xstart"], pmv["pred_xstart"], atol=1e-5)
    assert th.allclose(same["mean"], pmv["mean"], atol=1e-5)
    assert th.equal(same["variance"], pmv["variance"])

    guided = diffusion.condition_score(lambda x, t: th.full_like(x, 0.3), pmv, x, t)
    ab = col(diffusion.alphas_cumprod[t.numpy()], x)
    # eps' = eps - sqrt(1 - ab) g  =>  x0' = x0 + (1 - ab) / sqrt(ab) g, mean' = mean + coef1 (x0' - x0)
    dx0 = (1 - ab) / ab.sqrt() * 0.3
    coef1 = col(diffusion.posterior_mean_coef1[t.numpy()], x)
    assert th.allclose(guided["pred_xstart"].double(), pmv["pred_xstart"].double() + dx0, atol=1e-5)
    assert th.allclose(guided["mean"].double(), pmv["mean"].double() + coef1 * dx0, atol=1e-5)


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_zero_gradient_guidance_leaves_samples_unchanged(loop):
    diffusion = make_diffusion()
    model = gaussian_eps_model(diffusion)
    sample = getattr(diffusion, loop)
    plain = sample(model, (2, 3, 4), device="cpu", noise_fn=seeded_noise_fn(3))
    guided = sample(model, (2, 3, 4), device="cpu", noise_fn=seeded_noise_fn(3),
                    cond_fn=lambda x, t: th.zeros_like(x))
    assert th.allclose(plain, guided, atol=1e-5)
    pushed = sample(model, (2, 3, 4), device="cpu", noise_fn=seeded_noise_fn(3),
                    cond_fn=lambda x, t: th.ones_like(x))
    assert (pushed - plain).mean() > 0.05


# ----------------------------------------------------------------------------------------------
# Training losses and the variational bound


def reference_vb_bits(diffusion, x0, xt, t, pred_x0, logvar_p):
    """float64 reference of one bound term: KL to the posterior (t > 0) or the decoder NLL (t = 0)."""
    x0, xt, pred_x0 = x0.double(), xt.double(), pred_x0.double()
    tn = t.numpy()
    c1, c2 = col(diffusion.posterior_mean_coef1[tn], x0), col(diffusion.posterior_mean_coef2[tn], x0)
    mean_q, logvar_q = c1 * x0 + c2 * xt, col(diffusion.posterior_log_variance_clipped[tn], x0)
    mean_p = c1 * pred_x0 + c2 * xt
    logvar_p = logvar_p.expand_as(x0)
    kl = kl_bits(mean_q, logvar_q.expand_as(x0), mean_p, logvar_p)
    nll = -discretized_gaussian_log_likelihood(x0, means=mean_p, log_scales=0.5 * logvar_p)
    return th.where(t == 0, nll.flatten(1).mean(1) / math.log(2), kl)


def batch(seed=0):
    g = th.Generator().manual_seed(seed)
    x0 = (th.randint(0, 256, (4, 2, 3, 3), generator=g).float() / 127.5 - 1)
    noise = th.randn(4, 2, 3, 3, generator=g)
    return x0, noise, th.tensor([0, 1, 5, 9])


@pytest.mark.parametrize("mean_type", list(ModelMeanType))
def test_mse_loss_targets(mean_type):
    diffusion = make_diffusion(mean=mean_type)
    x0, noise, t = batch()
    terms = diffusion.training_losses(zeros_model(), x0, t, noise=noise)
    xt = diffusion.q_sample(x0, t, noise=noise)
    if mean_type == ModelMeanType.EPSILON:
        target = noise
    elif mean_type == ModelMeanType.START_X:
        target = x0
    else:
        target = (col(diffusion.posterior_mean_coef1[t.numpy()], x0) * x0.double()
                  + col(diffusion.posterior_mean_coef2[t.numpy()], x0) * xt.double())
    expected = (target.double() ** 2).flatten(1).mean(1)
    assert set(terms) == {"loss", "mse"}
    assert th.allclose(terms["mse"].double(), expected, rtol=1e-5)
    assert th.equal(terms["loss"], terms["mse"])


@pytest.mark.parametrize("loss_type", [LossType.MSE, LossType.RESCALED_MSE])
@pytest.mark.parametrize("var_type", [ModelVarType.LEARNED_RANGE, ModelVarType.LEARNED])
def test_hybrid_loss_with_a_zero_output(loss_type, var_type):
    diffusion = make_diffusion(var=var_type, loss=loss_type)
    x0, noise, t = batch(1)
    terms = diffusion.training_losses(zeros_model(2), x0, t, noise=noise)
    xt = diffusion.q_sample(x0, t, noise=noise)
    # eps = 0 => x0_pred = x_t / sqrt(ab); v = 0 => log var = mean of log beta and log beta~ (or 0)
    pred_x0 = xt.double() / col(diffusion.alphas_cumprod[t.numpy()], x0).sqrt()
    if var_type == ModelVarType.LEARNED_RANGE:
        logvar = col(0.5 * np.log(SHORT_BETAS[t]) + 0.5 * diffusion.posterior_log_variance_clipped[t], x0)
    else:
        logvar = col(np.zeros(4), x0)
    vb = reference_vb_bits(diffusion, x0, xt, t, pred_x0, logvar)
    if loss_type == LossType.RESCALED_MSE:
        vb = vb * diffusion.num_timesteps / 1000
    assert th.allclose(terms["vb"].double(), vb, rtol=1e-4, atol=1e-5)
    assert th.allclose(terms["mse"].double(), (noise.double() ** 2).flatten(1).mean(1), rtol=1e-5)
    assert th.allclose(terms["loss"], terms["mse"] + terms["vb"])


def test_hybrid_loss_vb_gradient_reaches_only_the_variance_channels():
    diffusion = make_diffusion(var=ModelVarType.LEARNED_RANGE)
    x0, noise, t = batch(2)
    model = FixedOutput(th.randn(4, 4, 3, 3) * 0.1)
    terms = diffusion.training_losses(model, x0, t, noise=noise)
    terms["vb"].sum().backward()
    assert (model.out.grad[:, :2] == 0).all() and (model.out.grad[:, 2:] != 0).any()
    model.out.grad = None
    diffusion.training_losses(model, x0, t, noise=noise)["mse"].sum().backward()
    assert (model.out.grad[:, 2:] == 0).all() and (model.out.grad[:, :2] != 0).any()


@pytest.mark.parametrize("loss_type", [LossType.KL, LossType.RESCALED_KL])
@pytest.mark.parametrize("var_type", [ModelVarType.FIXED_SMALL, ModelVarType.FIXED_LARGE])
def test_kl_losses_with_a_zero_output(loss_type, var_type):
    diffusion = make_diffusion(var=var_type, loss=loss_type)
    x0, noise, t = batch(3)
    terms = diffusion.training_losses(zeros_model(), x0, t, noise=noise)
    xt = diffusion.q_sample(x0, t, noise=noise)
    pred_x0 = xt.double() / col(diffusion.alphas_cumprod[t.numpy()], x0).sqrt()  # not clipped in training
    _, log_variance = diffusion._fixed_variance()
    vb = reference_vb_bits(diffusion, x0, xt, t, pred_x0, col(log_variance[t.numpy()], x0))
    if loss_type == LossType.RESCALED_KL:
        vb = vb * diffusion.num_timesteps
    assert set(terms) == {"loss"}
    assert th.allclose(terms["loss"].double(), vb, rtol=1e-4, atol=1e-5)


def test_prior_bpd_is_the_analytic_kl():
    diffusion = make_diffusion()
    x0, _, _ = batch(4)
    ab = diffusion.alphas_cumprod[-1]
    m, v = math.sqrt(ab) * x0.double(), 1 - ab
    expected = (0.5 * (-1 - math.log(v) + v + m**2)).flatten(1).mean(1) / math.log(2)
    assert th.allclose(diffusion._prior_bpd(x0).double(), expected, rtol=1e-5)


def test_calc_bpd_loop_terms():
    diffusion = make_diffusion(var=ModelVarType.FIXED_LARGE)
    model = gaussian_eps_model(diffusion)
    x0, _, _ = batch(5)
    T, N = diffusion.num_timesteps, x0.shape[0]
    th.manual_seed(11)
    out = diffusion.calc_bpd_loop(model, x0, clip_denoised=True)
    assert out["vb"].shape == out["mse"].shape == out["xstart_mse"].shape == (N, T)
    assert th.allclose(out["total_bpd"], out["prior_bpd"] + out["vb"].sum(1))
    assert th.equal(out["prior_bpd"], diffusion._prior_bpd(x0))

    th.manual_seed(11)  # replay the loop's noise, t = T-1 .. 0, and recompute every term
    _, log_variance = diffusion._fixed_variance()
    for column, i in enumerate(reversed(range(T))):  # columns run from t = T-1 down to 0
        t = th.full((N,), i)
        noise = th.randn_like(x0)
        xt = diffusion.q_sample(x0, t, noise=noise)
        ab = col(diffusion.alphas_cumprod[t.numpy()], x0)
        pred_x0 = ((xt.double() - (1 - ab).sqrt() * model(xt, t).double()) / ab.sqrt()).clamp(-1, 1)
        vb = reference_vb_bits(diffusion, x0, xt, t, pred_x0, col(log_variance[t.numpy()], x0))
        assert th.allclose(out["vb"][:, column].double(), vb, rtol=1e-4, atol=1e-5)
        xstart_mse = ((pred_x0 - x0.double()) ** 2).flatten(1).mean(1)
        assert th.allclose(out["xstart_mse"][:, column].double(), xstart_mse, rtol=1e-4, atol=1e-6)
        eps = (xt.double() / ab.sqrt() - pred_x0) / (1 / ab - 1).sqrt()
        eps_mse = ((eps - noise.double()) ** 2).flatten(1).mean(1)
        assert th.allclose(out["mse"][:, column].double(), eps_mse, rtol=1e-3, atol=1e-5)


def test_schedule_tables_are_float64_attributes():
    diffusion = make_diffusion()
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance", "posterior_mean_coef2"):
        table = getattr(diffusion, name)
        assert isinstance(table, np.ndarray) and table.dtype == np.float64 and table.shape == (10,)
    with pytest.raises(AttributeError, match="no attribute 'not_a_table'"):
        diffusion.not_a_table
