"""The release's extension points: research code subclasses GaussianDiffusion / SpacedDiffusion,
overrides p_mean_variance, condition_mean, condition_score, _scale_timesteps or p_sample, and imports
_extract_into_tensor, _WrappedModel and _wrap_model. Each override changes what the release's loops
(and the samplers behind samplers.sample) produce, as in the release."""

import numpy as np
import pytest
import torch as th

from guided_diffusion import samplers
from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    _extract_into_tensor,
    get_named_beta_schedule,
)
from guided_diffusion.guidance import ClassifierFreeGuidance
from guided_diffusion.respace import SpacedDiffusion, _WrappedModel, space_timesteps

STEPS = 40
SHAPE = (3, 2, 4, 4)


def diffusion_kwargs(**overrides):
    return dict(dict(betas=get_named_beta_schedule("linear", STEPS), model_mean_type=ModelMeanType.EPSILON,
                     model_var_type=ModelVarType.FIXED_LARGE, loss_type=LossType.MSE), **overrides)


def build(cls, respacing="8", **overrides):
    if issubclass(cls, SpacedDiffusion):
        return cls(use_timesteps=space_timesteps(STEPS, respacing), **diffusion_kwargs(**overrides))
    return cls(**diffusion_kwargs(**overrides))


def model(x, t, **kwargs):
    """A smooth stand-in for a trained eps model that depends on x and t."""
    return 0.3 * th.tanh(x) * (1 + t.float().view(-1, 1, 1, 1) / STEPS)


def cond_fn(x, t, **kwargs):
    return 0.2 * th.ones_like(x)


def loops(diffusion, **kwargs):
    """Final samples of both release loops from fixed noise and a seeded noise stream."""
    out = {}
    for loop in ("p_sample_loop", "ddim_sample_loop"):
        generator = th.Generator().manual_seed(1)
        out[loop] = getattr(diffusion, loop)(
            model, SHAPE, noise=th.randn(SHAPE, generator=th.Generator().manual_seed(0)), device="cpu",
            noise_fn=lambda x: th.randn(x.shape, generator=generator), **kwargs)
    return out


def differ(a, b):
    return {name: (a[name] - b[name]).abs().max().item() > 1e-3 for name in a}


@pytest.mark.parametrize("base", [GaussianDiffusion, SpacedDiffusion])
def test_overriding_p_mean_variance_changes_both_loops_and_the_samplers(base):
    class Shifted(base):
        def p_mean_variance(self, model, x, t, **kwargs):
            out = super().p_mean_variance(model, x, t, **kwargs)
            return dict(out, mean=out["mean"] + 0.1, pred_xstart=out["pred_xstart"] + 0.1)

    plain, shifted = build(base), build(Shifted)
    assert differ(loops(plain), loops(shifted)) == {"p_sample_loop": True, "ddim_sample_loop": True}
    for sampler in samplers.SAMPLERS:
        noise = th.randn(SHAPE, generator=th.Generator().manual_seed(0))
        a = samplers.sample(plain, model, SHAPE, sampler=sampler, noise=noise, noise_fn=th.zeros_like)
        b = samplers.sample(shifted, model, SHAPE, sampler=sampler, noise=noise, noise_fn=th.zeros_like)
        assert (a - b).abs().max() > 1e-3, sampler


@pytest.mark.parametrize("base", [GaussianDiffusion, SpacedDiffusion])
def test_overriding_condition_mean_changes_guided_ddpm_and_condition_score_changes_guided_ddim(base):
    class DoubledMean(base):
        def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
            return super().condition_mean(lambda *a, **k: 2 * cond_fn(*a, **k), p_mean_var, x, t, model_kwargs)

    class DoubledScore(base):
        def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
            return super().condition_score(lambda *a, **k: 2 * cond_fn(*a, **k), p_mean_var, x, t, model_kwargs)

    plain = loops(build(base), cond_fn=cond_fn)
    assert differ(plain, loops(build(DoubledMean), cond_fn=cond_fn)) == {"p_sample_loop": True, "ddim_sample_loop": False}
    assert differ(plain, loops(build(DoubledScore), cond_fn=cond_fn)) == {"p_sample_loop": False, "ddim_sample_loop": True}


@pytest.mark.parametrize("base", [GaussianDiffusion, SpacedDiffusion])
def test_overriding_scale_timesteps_changes_what_the_model_and_cond_fn_see(base):
    seen = []

    class Halved(base):
        def _scale_timesteps(self, t):
            return super()._scale_timesteps(t) // 2

    def recording_model(x, t, **kwargs):
        seen.append(t.clone())
        return model(x, t)

    diffusion = build(Halved)
    diffusion.p_sample_loop(recording_model, SHAPE, device="cpu", cond_fn=lambda x, t, **k: seen.append(t) or 0 * x)
    originals = diffusion.timestep_map if base is SpacedDiffusion else list(range(STEPS))
    # as in the release: the override acts on the respaced index, before _WrappedModel maps it
    first = originals[(diffusion.num_timesteps - 1) // 2]
    assert seen[0].tolist() == [first] * SHAPE[0] and seen[1].tolist() == [first] * SHAPE[0]
    assert len(seen) == 2 * diffusion.num_timesteps


def test_overriding_p_sample_changes_p_sample_loop():
    class Damped(SpacedDiffusion):
        def p_sample(self, model, x, t, **kwargs):
            out = super().p_sample(model, x, t, **kwargs)
            return dict(out, sample=0.5 * out["sample"])

    assert differ(loops(build(SpacedDiffusion)), loops(build(Damped)))["p_sample_loop"]


def test_the_release_private_names_keep_their_meaning():
    table = np.linspace(0.1, 1.0, 10)
    values = _extract_into_tensor(table, th.tensor([0, 9, 4]), (3, 2, 5))
    assert values.shape == (3, 2, 5) and values.dtype == th.float32
    assert th.equal(values[:, 1, 2], th.tensor([0.1, 1.0, 0.5], dtype=th.float32))

    diffusion = build(SpacedDiffusion, respacing="4", rescale_timesteps=True)
    seen = []
    wrapped = diffusion._wrap_model(lambda x, t, **kwargs: seen.append(t) or x)
    assert isinstance(wrapped, _WrappedModel) and diffusion._wrap_model(wrapped) is wrapped
    wrapped(th.zeros(2, 1), th.tensor([0, 3]))
    assert seen[0].tolist() == [0.0, diffusion.timestep_map[3] * 1000.0 / STEPS]
    direct = _WrappedModel(lambda x, t: t, [0, 13, 26, 39], False, STEPS)
    assert direct(None, th.tensor([1, 2])).tolist() == [13, 26]


def test_no_guidance_means_none():
    diffusion = build(SpacedDiffusion)
    noise = th.randn(SHAPE, generator=th.Generator().manual_seed(0))
    assert th.equal(samplers.sample(diffusion, model, SHAPE, guidance=None, noise=noise, noise_fn=th.zeros_like),
                    samplers.sample(diffusion, model, SHAPE, guidance=(), noise=noise, noise_fn=th.zeros_like))


def test_classifier_free_guidance_doubles_only_batch_shaped_kwargs():
    seen = {}

    def conditional_model(x, t, y=None, scale=None, low_res=None):
        seen.update(x=x.shape[0], y=y.shape, scale=scale.shape, low_res=low_res.shape)
        return model(x, t)

    kwargs = {"y": th.tensor([0, 1, 0]), "scale": th.tensor([0.5, 0.25]), "low_res": th.zeros(3, 2, 2, 2)}
    samplers.sample(build(SpacedDiffusion), conditional_model, SHAPE, guidance=ClassifierFreeGuidance(2.0, 5),
                    model_kwargs=kwargs, noise_fn=th.zeros_like, device="cpu")
    assert seen == {"x": 6, "y": (6,), "scale": (2,), "low_res": (6, 2, 2, 2)}


def test_a_custom_output_guide_reads_eps_uncond_when_it_declares_a_null_class():
    calls = []

    class Declared:
        on_model_output = True
        null_class = 7

        def __call__(self, x, t, prediction, **model_kwargs):
            calls.append(prediction["eps_uncond"].shape)
            return th.zeros_like(x)

    class Undeclared(Declared):
        null_class = None

    def conditional_model(x, t, y=None):
        return model(x, t)

    kwargs = dict(model_kwargs={"y": th.tensor([0, 1, 2])}, noise_fn=th.zeros_like, device="cpu")
    samplers.sample(build(SpacedDiffusion), conditional_model, SHAPE, guidance=Declared(), **kwargs)
    assert calls and calls[0] == SHAPE
    with pytest.raises(KeyError, match="declares null_class"):
        samplers.sample(build(SpacedDiffusion), conditional_model, SHAPE, guidance=Undeclared(), **kwargs)
