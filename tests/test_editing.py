"""guided_diffusion.editing: RePaint's walk and its known pixels, SDEdit's two ends, DDIM inversion's
error against the steps, DPS under every sampler, and the loss check, on the exact eps of Gaussian data
(and a perturbed, non-linear version of it) from test_samplers."""

import math

import numpy as np
import pytest
import torch as th

from guided_diffusion import editing, samplers
from guided_diffusion.editing.operators import Inpainting, SuperResolution, box_mask
from test_samplers import DATA_STD, make_diffusion, perturbed_gaussian_model, x_T

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded_noise(seed):
    """A noise_fn drawing from its own generator (th.randn_like's signature)."""
    generator = th.Generator().manual_seed(seed)
    return lambda x: th.randn(x.shape, generator=generator).to(x.dtype)


def data(n=4, seed=3):
    """Images like the Gaussian model's data: N(0, DATA_STD^2) pixels, [n, 3, 8, 8]."""
    return DATA_STD * x_T((n, 3, 8, 8), seed)


# ----------------------------------------------------------------------------- RePaint


def test_repaint_walk_goes_back_up_a_jump_and_down_again_by_hand():
    assert editing.repaint_states(4, jump_length=2, resamplings=2) == [4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    assert editing.repaint_states(5, jump_length=2, resamplings=3) == [
        5, 4, 3, 2, 3, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert editing.repaint_states(4, jump_length=3, resamplings=1) == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="--jump_length >= 1 and --resamplings >= 1"):
        editing.repaint_states(4, jump_length=0)


def test_repaint_keeps_the_known_pixels_exactly_and_fills_the_hole():
    diffusion, model = make_diffusion("10"), perturbed_gaussian_model()
    known = data()
    mask = box_mask(8, 4)
    out = editing.repaint(diffusion, model, mask * known, mask, jump_length=3, resamplings=3,
                          noise_fn=seeded_noise(0))
    assert th.equal(out * mask, known * mask)
    hole = out[..., 2:6, 2:6]
    assert hole.abs().min() > 0 and hole.std() > 0.2  # filled by the model, not left at the measurement's 0


def test_repaint_with_nothing_known_and_no_noise_is_the_ddpm_mean_path():
    diffusion, model = make_diffusion("10"), perturbed_gaussian_model()
    x = x_T((2, 3, 8, 8))
    out = editing.repaint(diffusion, model, th.zeros_like(x), th.zeros(1, 1, 8, 8), resamplings=1, noise=x,
                          noise_fn=th.zeros_like)
    ddpm = samplers.sample(diffusion, model, x.shape, sampler="ddpm", noise=x, noise_fn=th.zeros_like)
    assert th.allclose(out, ddpm, atol=1e-6)


def written_out_repaint(diffusion, model, x, known, mask, states, draws):
    """RePaint (Lugmayr et al. 2022) in float64 from the schedule's alpha_bar table, unclipped: a down move
    to state i is DDPM's step at step i (eq. 11, fixed-small variance, no noise at i = 0) for the hole and
    the known image noised to alpha_bar_{i-1}; an up move from state s is q(x_{s+1} | x_s), beta =
    1 - alpha_bar_s / alpha_bar_{s-1}. draws: the noise, in the order the function draws it."""
    ab = list(diffusion.alphas_cumprod)
    draws = iter(draws)
    x, known = x.double(), known.double()
    for here, there in zip(states, states[1:]):
        if there < here:
            i = there
            ab_prev = ab[i - 1] if i > 0 else 1.0
            eps = model(x.float(), th.full((len(x),), diffusion.timestep_map[i])).double()
            x0 = (x - math.sqrt(1 - ab[i]) * eps) / math.sqrt(ab[i])
            beta = 1 - ab[i] / ab_prev
            mean = math.sqrt(ab_prev) * beta / (1 - ab[i]) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab[i]) * x
            hole = mean + math.sqrt(beta * (1 - ab_prev) / (1 - ab[i])) * next(draws).double() * (i > 0)
            noised_known = math.sqrt(ab_prev) * known + math.sqrt(1 - ab_prev) * next(draws).double()
            x = mask * noised_known + (1 - mask) * hole
        else:
            beta = 1 - ab[here] / (ab[here - 1] if here > 0 else 1.0)
            x = math.sqrt(1 - beta) * x + math.sqrt(beta) * next(draws).double()
    return x


def test_repaint_follows_the_written_out_moves():
    diffusion, model = make_diffusion("5"), perturbed_gaussian_model()
    known, mask = data(2), box_mask(8, 4)
    states = editing.repaint_states(5, jump_length=2, resamplings=2)
    draws = [x_T((2, 3, 8, 8), seed=100 + k) for k in range(3 * len(states))]
    remaining = iter(draws)
    x = x_T((2, 3, 8, 8), seed=99)
    out = editing.repaint(diffusion, model, known * mask, mask, jump_length=2, resamplings=2, noise=x,
                          noise_fn=lambda like: next(remaining), clip_denoised=False)
    expected = written_out_repaint(diffusion, model, x, known * mask, mask, states, draws)
    assert th.allclose(out.double(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- SDEdit


def test_sdedit_start_step_maps_strength_times_T_to_the_nearest_kept_step():
    diffusion = make_diffusion("10")  # kept original steps 0, 111, 222, ..., 999
    assert diffusion.timestep_map[editing.sdedit_start_step(diffusion, 1.0)] == 999
    assert diffusion.timestep_map[editing.sdedit_start_step(diffusion, 0.5)] == 444  # 499: 55 from 444, 56 from 555
    assert diffusion.timestep_map[editing.sdedit_start_step(diffusion, 0.1)] == 111
    assert editing.sdedit_start_step(diffusion, 0.0001) == 0
    assert editing.sdedit_start_step(diffusion, 0.0) is None
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"--strength .* is outside \[0, 1\]"):
            editing.sdedit_start_step(diffusion, bad)


def test_sdedit_strength_0_returns_the_input():
    x = data()
    assert th.equal(editing.sdedit(make_diffusion("10"), perturbed_gaussian_model(), x, 0.0), x)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sdedit_strength_1_is_sampling_from_the_same_noise_up_to_the_inputs_share(sampler):
    diffusion, model = make_diffusion("10"), perturbed_gaussian_model()
    x, z = data(), x_T((4, 3, 8, 8), seed=5)
    edited = editing.sdedit(diffusion, model, x, 1.0, noise=z, sampler=sampler, noise_fn=seeded_noise(7))
    last = diffusion.num_timesteps - 1
    share = math.sqrt(diffusion.alphas_cumprod[last])  # about 0.0064 on the linear schedule
    start = share * x + math.sqrt(1 - share**2) * z
    exact = samplers.sample(diffusion, model, x.shape, sampler=sampler, noise=start, noise_fn=seeded_noise(7))
    assert th.allclose(edited, exact, atol=1e-6)
    from_noise = samplers.sample(diffusion, model, x.shape, sampler=sampler, noise=z, noise_fn=seeded_noise(7))
    assert (edited - from_noise).abs().max() < 3 * share * x.abs().max()
    distances = [(editing.sdedit(diffusion, model, x, strength, noise=z, sampler=sampler, noise_fn=seeded_noise(7))
                  - x).abs().mean() for strength in (0.1, 0.5)]
    assert distances[0] < distances[1] < (edited - x).abs().mean()  # the lower the strength, the closer to x
    assert distances[0] < 0.6 * (from_noise - x).abs().mean()


# ----------------------------------------------------------------------------- inversion


def test_reconstruction_error_falls_as_the_steps_grow():
    model, x = perturbed_gaussian_model(), data()
    errors = []
    for steps in (5, 20, 100):
        back, _ = editing.reconstruct(make_diffusion(str(steps)), model, x, clip_denoised=False)
        errors.append((back - x).pow(2).mean().sqrt().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2 * errors[0]


# ----------------------------------------------------------------------------- DPS


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "heun"])
def test_dps_lowers_the_measurement_error_under_every_sampler(sampler):
    diffusion, model = make_diffusion("20"), perturbed_gaussian_model()
    operator = SuperResolution(2)
    x = data()
    y = operator.A(x)

    def error(x0):
        return (operator.A(x0) - y).pow(2).mean().sqrt().item()

    plain = samplers.sample(diffusion, model, x.shape, sampler=sampler, noise_fn=seeded_noise(0), device="cpu")
    restored = editing.dps(diffusion, model, x.shape, operator.A, y, 4.0, sampler=sampler, noise_fn=seeded_noise(0),
                           device="cpu")
    assert error(restored) < 0.25 * error(plain)


def test_dps_composes_with_other_guides():
    diffusion, model = make_diffusion("20"), perturbed_gaussian_model()
    operator = Inpainting(box_mask(8, 4))
    x = data()

    def brighter(x, t, prediction, **kwargs):  # a plain guide: pushes every pixel up
        return th.full_like(x, 3.0)

    dps = editing.dps(diffusion, model, x.shape, operator.A, operator.A(x), 0.5, sampler="ddim",
                      noise_fn=seeded_noise(0), device="cpu")
    both = editing.dps(diffusion, model, x.shape, operator.A, operator.A(x), 0.5, sampler="ddim",
                       noise_fn=seeded_noise(0), guidance=brighter, device="cpu")
    assert both.mean() > dps.mean() + 0.1


# ----------------------------------------------------------------------------- loss check, labels


def test_check_loss_raises_the_guides_error_for_a_loss_without_one_value_per_sample():
    editing.check_loss(lambda x0, **kw: x0.flatten(1).sum(1), (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"one value per sample, shape \(2,\), got \(2, 3, 8, 8\)"):
        editing.check_loss(lambda x0, **kw: x0 ** 2, (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"one value per sample, shape \(2,\), got \(\)"):
        editing.check_loss(lambda x0, **kw: x0.sum(), (2, 3, 8, 8))


def test_with_label_shows_the_model_one_class_whatever_the_guides_read():
    seen = []

    def model(x, t, y=None):
        seen.append(y)
        return x

    editing.with_label(model, 10)(th.zeros(3, 1, 2, 2), th.zeros(3), y=th.tensor([1, 2, 3]))
    assert seen[0].tolist() == [10, 10, 10]


def test_repaint_applies_guides_on_its_ddpm_steps():
    diffusion, model = make_diffusion("10"), perturbed_gaussian_model()
    mask = box_mask(8, 4)
    known = data()

    def brighter(x, t, prediction, **kwargs):
        return th.full_like(x, 3.0)

    plain = editing.repaint(diffusion, model, known * mask, mask, resamplings=2, jump_length=2,
                            noise_fn=seeded_noise(0))
    guided = editing.repaint(diffusion, model, known * mask, mask, resamplings=2, jump_length=2,
                             noise_fn=seeded_noise(0), guidance=brighter)
    hole = (1 - mask).bool().expand_as(known)
    assert guided[hole].mean() > plain[hole].mean() + 0.1
    assert th.equal(guided * mask, known * mask)
    assert np.isfinite(guided.numpy()).all()
