"""--sampler consistency (issue 23): multistep consistency sampling of a distilled ADM model. The sampler
against distill.sampling.consistency_sample with VPModel's consistency function on the un-respaced
diffusion, the step forms it reads (--timestep_respacing N and at:T1,T2,...) and their default levels,
guidance in f, the run's seeded streams, and the scripts (image_sample, classifier_sample, image_edit's
SDEdit, sweep's middle-step search) end to end on tiny models."""

import math
import os
import re
import sys

import numpy as np
import pytest
import torch as th

from _train_helpers import assert_same_uint8_images, to_argv
from evaluations.evaluator import MIN_IMAGES
from guided_diffusion import samplers, script_util
from guided_diffusion.build import build_diffusion
from guided_diffusion.config import DiffusionConfig
from guided_diffusion.distill.parameterisation import VPModel
from guided_diffusion.distill.sampling import consistency_sample
from guided_diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from guided_diffusion.respace import consistency_respacing, consistency_timesteps, space_timesteps
from guided_diffusion.sample_io import to_uint8_nhwc
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.sampling import sampler_respacing
from guided_diffusion.schedules import get_named_beta_schedule

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import sweep  # noqa: E402 (scripts/ is not a package)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COSINE = np.cumprod(1 - get_named_beta_schedule("cosine", 1000))
SHAPE = (4, 3, 8, 8)
CLASS_MEANS = th.tensor([-0.4, 0.4, 0.0])  # class y: x_0 ~ N(CLASS_MEANS[y], STD^2 I); 2 is the null class
STD = 0.3


class GaussianModel(th.nn.Module):
    """The exact eps of x_0 ~ N(CLASS_MEANS[y], STD^2 I) at x_t, original timesteps t of the 1000-step cosine
    schedule, times `scale` (0: x0_hat = x_VE, far outside [-1, 1]), with zero learned-variance channels
    ([N, 2C]); counts the images it evaluates."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.evaluated = 0

    def forward(self, x, t, y):
        self.evaluated += len(x)
        alpha_bar = th.from_numpy(COSINE)[t].to(x.dtype).view(-1, 1, 1, 1)
        mean = CLASS_MEANS[y].view(-1, 1, 1, 1)
        eps = (1 - alpha_bar).sqrt() * (x - alpha_bar.sqrt() * mean) / (alpha_bar * STD**2 + 1 - alpha_bar)
        return th.cat([self.scale * eps, th.zeros_like(x)], dim=1)


def diffusion(respacing=""):
    """The 1000-step cosine diffusion of a learned-sigma model, respaced to `respacing`."""
    return build_diffusion(DiffusionConfig(noise_schedule="cosine", learn_sigma=True, timestep_respacing=respacing))


def stream(seed=5):
    """A noise_fn drawing from its own generator."""
    generator = th.Generator().manual_seed(seed)
    return lambda x: th.randn(x.shape, generator=generator)


Y = th.tensor([0, 1, 0, 1])
Z = th.randn(SHAPE, generator=th.Generator().manual_seed(1))
# x0_hat = x_VE - sigma eps_hat cancels in float32: at sigma 80 the same f from x_t computed two ways (the
# sampler's x_T, VPModel's sqrt(alpha_bar) x_VE) differs by 1.5e-5
TOLERANCE = 1e-4


def consistency(respacing, model, noise=Z, **keywords):
    return samplers.sample(diffusion(respacing), model, SHAPE, sampler="consistency", noise=noise,
                           model_kwargs={"y": Y}, **keywords)


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("timestep", [991, 597])
def test_one_step_is_the_vp_consistency_function_at_sigma_max_z_clipped(timestep):
    vp = VPModel(GaussianModel(), diffusion(), clip_denoised=True)  # the un-respaced diffusion
    sigma = vp.sigmas[timestep]
    model = GaussianModel()
    x_T = float(sigma) * math.sqrt(COSINE[timestep]) * Z  # x_t of x_VE = sigma z
    one_step = consistency(sampler_respacing("consistency", f"at:{timestep}"), model, x_T)
    assert model.evaluated == len(Z)  # one evaluation: t = 0 is kept as the boundary, never evaluated
    f = vp.consistency(sigma * Z, sigma.expand(len(Z)), y=Y)
    assert th.allclose(one_step, f.clamp(-1, 1), atol=TOLERANCE) and (f.abs() < 1).all()


@pytest.mark.parametrize("respacing, levels, scale", [
    ("consistency2", [991, 597], 1.0), ("at:0,991,597", [991, 597], 1.0),
    ("at:991,597", [991, 597], 1.0),  # t = 0 not kept: s_0 is still the original t = 0's
    ("consistency4", [991, 975, 908, 597], 1.0),
    ("consistency2", [991, 597], 0.0),  # every f clipped
])
def test_the_sampler_is_consistency_sample_of_the_vp_consistency_function(respacing, levels, scale):
    vp = VPModel(GaussianModel(scale), diffusion(), clip_denoised=True)
    model = GaussianModel(scale)
    sampled = consistency(respacing, model, noise_fn=stream())
    assert model.evaluated == len(levels) * len(Z)
    # from x_T = z: consistency_models' x = sigma_max z with sigma_max = 1 / sqrt(alpha_bar) of the first level
    expected = consistency_sample(vp.consistency, Z, vp.sigmas[levels], vp.sigma_min, noise_fn=stream(),
                                  sigma_max=1 / math.sqrt(COSINE[levels[0]]), model_kwargs={"y": Y})
    assert th.allclose(sampled, expected, atol=TOLERANCE)


def test_multistep_noise_comes_from_noise_fn_and_each_samples_own_stream():
    def seeded(indices, respacing="consistency2"):
        batch = SeededBatch(3, indices)
        return samplers.sample(diffusion(respacing), GaussianModel(), (len(batch), *SHAPE[1:]), sampler="consistency",
                               noise=batch.noise((len(batch), *SHAPE[1:])), noise_fn=batch.noise_like,
                               model_kwargs={"y": Y[list(indices)]})

    whole = seeded(range(4))
    assert th.allclose(whole, th.cat([seeded(range(0, 1)), seeded(range(1, 4))]), atol=1e-6)
    one, other = consistency("consistency2", GaussianModel(), noise_fn=stream(5)), consistency(
        "consistency2", GaussianModel(), noise_fn=stream(6))
    assert (one - other).abs().max() > 0.1  # the second level's noise is noise_fn's
    assert th.equal(consistency("consistency1", GaussianModel(), noise_fn=stream(5)),
                    consistency("consistency1", GaussianModel(), noise_fn=stream(6)))


def free_guided(x, t, y, scale=3.0):
    """GaussianModel under classifier-free guidance, written out: eps_u + W (eps_c - eps_u)."""
    conditional, unconditional = GaussianModel()(x, t, y), GaussianModel()(x, t, th.full_like(y, 2))
    return unconditional + scale * (conditional - unconditional)


def bright_classifier(x, t):
    """Logits [N, 2] of a toy noisy classifier: class 1 likes bright images."""
    brightness = x.flatten(1).mean(1)
    return th.stack([-brightness, brightness], dim=1)


def classifier_guided(x, t, y, scale=30.0):
    """GaussianModel under classifier guidance, written out: eps - sqrt(1 - alpha_bar_t) grad log p(y | x_t)."""
    alpha_bar = th.from_numpy(COSINE)[t].float().view(-1, 1, 1, 1)
    shift = (1 - alpha_bar).sqrt() * ClassifierGuidance(bright_classifier, scale)(x, t, y=y)
    return GaussianModel()(x, t, y) - th.cat([shift, th.zeros_like(shift)], dim=1)


@pytest.mark.parametrize("guide, guided", [(ClassifierFreeGuidance(3.0, 2), free_guided),
                                           (ClassifierGuidance(bright_classifier, 30.0), classifier_guided)])
def test_guidance_puts_the_guided_x0_into_f(guide, guided):
    vp = VPModel(guided, diffusion(), clip_denoised=True)
    sampled = consistency("consistency2", GaussianModel(), guidance=guide, noise_fn=stream())
    expected = consistency_sample(vp.consistency, Z, vp.sigmas[[991, 597]], vp.sigma_min, noise_fn=stream(),
                                  sigma_max=1 / math.sqrt(COSINE[991]), model_kwargs={"y": Y})
    assert th.allclose(sampled, expected, atol=TOLERANCE)
    assert (sampled - consistency("consistency2", GaussianModel(), noise_fn=stream())).abs().max() > 0.1


# ----------------------------------------------------------------------------- the step forms


def test_at_keeps_exactly_the_listed_timesteps_for_every_sampler():
    assert space_timesteps(1000, "at:991,597") == {991, 597} == space_timesteps(1000, "at:597,991")
    seen = []

    def model(x, t, **kwargs):
        seen.append(t[0].item())
        return th.zeros_like(x)

    samplers.sample(build_diffusion(DiffusionConfig(timestep_respacing="at:991,597,300")), model, (1, 3, 4, 4),
                    sampler="ddim", noise=th.zeros(1, 3, 4, 4))
    assert seen == [991, 597, 300]


@pytest.mark.parametrize("respacing, message", [
    ("at:991", "keeps 1 step(s): sampling needs at least 2 steps"),  # one step is --sampler consistency's alone
    ("at:991,597,991", "lists timestep 991 more than once"),
    ("at:1000,5", "timestep 1000 is not a step of the 1000-step diffusion: give timesteps in [0, 999]"),
    ("at:-1,5", "timestep -1 is not a step"),
    ("at:991;597", "at: takes comma-separated original timesteps"),
    ("consistency0", "keeps 1 step(s)"),
    ("consistency300", "fall on timesteps"),
])
def test_bad_step_lists_are_one_line_errors(respacing, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        space_timesteps(1000, respacing, alphas_cumprod=COSINE)


def test_the_consistency_sampler_reads_n_as_evaluations_and_keeps_t0():
    assert [sampler_respacing("consistency", text) for text in ("2", " 1", "consistency3", "at:991", "at:0,991")] == [
        "consistency2", "consistency1", "consistency3", "at:0,991", "at:0,991"]
    assert sampler_respacing("ddim", "2") == "2"  # the other samplers keep their reading
    assert space_timesteps(1000, "consistency1", alphas_cumprod=COSINE) == {0, 991}
    for text in ("", "ddim10", "karras4", "10,10"):
        with pytest.raises(ValueError, match=re.escape("takes --timestep_respacing N (N evaluations")):
            consistency_respacing(text)


@pytest.mark.parametrize("schedule, pairs", [("cosine", [991, 597]), ("linear", [930, 321])])
def test_default_levels_are_karras_from_80_to_1_38_rounded_in_log_sigma(schedule, pairs):
    alphas_cumprod = np.cumprod(1 - get_named_beta_schedule(schedule, 1000))
    log_sigma = 0.5 * np.log((1 - alphas_cumprod) / alphas_cumprod)
    assert consistency_timesteps(alphas_cumprod, 1) == pairs[:1] and consistency_timesteps(alphas_cumprod, 2) == pairs
    for count in (3, 4, 6):  # sigma_k = (80^(1/7) + k / (N - 1) (1.38^(1/7) - 80^(1/7)))^7, the nearest timestep
        sigmas = (80 ** (1 / 7) + np.arange(count) / (count - 1) * (1.38 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        nearest = [int(np.abs(log_sigma - math.log(sigma)).argmin()) for sigma in sigmas]
        assert consistency_timesteps(alphas_cumprod, count) == nearest
    assert consistency_timesteps(np.linspace(0.99, 0.01, 10), 1) == [9]  # sigma_9 = 9.95: the top, below 80


# ----------------------------------------------------------------------------- the scripts

UNET = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_heads=1, learn_sigma=True, noise_schedule="cosine")  # 16 pixels: image_edit's SSIM needs 11
CLASSIFIER = dict(image_size=16, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                  classifier_attention_resolutions="8", num_classes=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"model": a tiny random unconditional UNet (UNET's flags), "classifier", "input": MIN_IMAGES random
    images (an npz: SDEdit's inputs and the sweep's reference)}."""
    root = tmp_path_factory.mktemp("consistency")
    th.manual_seed(0)
    model, _ = script_util.create_model_and_diffusion(**dict(script_util.model_and_diffusion_defaults(), **UNET))
    with th.no_grad():  # small random weights everywhere (the output layer starts at zero)
        for param in model.parameters():
            param.add_(th.randn_like(param) * 0.02)
    classifier = script_util.create_classifier(**dict(script_util.classifier_defaults(), **CLASSIFIER))
    th.save(model.state_dict(), root / "model.pt")
    th.save(classifier.state_dict(), root / "classifier.pt")
    np.savez(root / "inputs.npz", np.random.RandomState(0).randint(0, 256, (MIN_IMAGES, 16, 16, 3)).astype(np.uint8))
    return {"model": root / "model.pt", "classifier": root / "classifier.pt", "input": root / "inputs.npz"}


def load_arr_0(path):
    with np.load(path) as data:
        return data["arr_0"]


def test_image_sample_takes_two_evaluations_from_the_runs_streams(checkpoints, tmp_path, run_script):
    run_script("image_sample", dict(UNET, model_path=checkpoints["model"], sampler="consistency", timestep_respacing=2,
                                    num_samples=3, batch_size=2, seed=4), tmp_path)
    model, spaced = script_util.create_model_and_diffusion(
        **dict(script_util.model_and_diffusion_defaults(), **UNET, timestep_respacing="consistency2"))
    model.load_state_dict(th.load(checkpoints["model"], weights_only=True))
    batch, shape = SeededBatch(4, range(3)), (3, 3, 16, 16)
    with th.no_grad():
        x = samplers.sample(spaced, model.eval(), shape, sampler="consistency", noise=batch.noise(shape),
                            noise_fn=batch.noise_like)
    assert_same_uint8_images(load_arr_0(tmp_path / "samples_3x16x16x3.npz"), to_uint8_nhwc(x).numpy())


def test_classifier_sample_and_sdedit_take_the_consistency_sampler(checkpoints, tmp_path, run_script):
    common = dict(UNET, model_path=checkpoints["model"], sampler="consistency", seed=1)
    run_script("classifier_sample", dict(common, **CLASSIFIER, classifier_path=checkpoints["classifier"],
                                         classifier_scale=2, timestep_respacing="at:991", num_samples=2),
               tmp_path / "guided")
    assert load_arr_0(tmp_path / "guided" / "samples_2x16x16x3.npz").shape == (2, 16, 16, 3)
    run_script("image_edit", dict(common, input=checkpoints["input"], task="sdedit", strength=0.6,
                                  timestep_respacing=2), tmp_path / "sdedit")
    assert load_arr_0(tmp_path / "sdedit" / f"edited_{MIN_IMAGES}x16x16x3.npz").shape == (MIN_IMAGES, 16, 16, 3)


def test_a_step_form_the_consistency_sampler_cannot_read_stops_the_script(checkpoints, tmp_path, run_script):
    result = run_script("image_sample", dict(UNET, model_path=checkpoints["model"], sampler="consistency",
                                             timestep_respacing="ddim10"), tmp_path / "out", check=False)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and "at:T1,T2,..." in errors[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_searches_the_middle_step_of_two(checkpoints, tmp_path):
    flags = dict(UNET, diffusion_steps=100, model_path=checkpoints["model"], ref_batch=checkpoints["input"],
                 features="pixels", num_samples=MIN_IMAGES, bootstrap=0, samplers="consistency", steps="1,2",
                 middle_steps="59,30", out_dir=tmp_path)
    rows = sweep.main(to_argv(flags))
    assert consistency_timesteps(np.cumprod(1 - get_named_beta_schedule("cosine", 100)), 2) == [98, 59]
    assert [(r["sweep"], r["spacing"], r["steps"], r["nfe"]) for r in rows] == [
        ("samplers", "even", 1, 1.0), ("samplers", "even", 2, 2.0),
        ("middle", "at:98,59", 2, 2.0), ("middle", "at:98,30", 2, 2.0)]
    assert rows[2]["fid"] == rows[1]["fid"] != rows[3]["fid"]  # the default's middle step is 59
    with pytest.raises(ValueError, match=re.escape("--middle_steps 98: a middle step lies between t = 0 and")):
        sweep.main(to_argv(dict(flags, middle_steps="98")))
