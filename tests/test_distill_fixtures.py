"""guided_diffusion.distill against numbers computed by consistency_models' own code (tests/fixtures/consistency/).

tests/fixtures/make_consistency_fixtures.py ran consistency_models' KarrasDenoiser (denoise, consistency_losses
for CD and CT), create_ema_and_scales_fn and karras_sample on a tiny network with dropout, and pinned what came
out with the indices and noise it drew. Here each case is rebuilt with distill's functions from the same
weights, inputs and seeds: the same index draw, the same dropout draws replayed for the target, the same
sampler draws.
"""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch as th

import fixture_compare
from guided_diffusion.distill.grid import karras_sigmas
from guided_diffusion.distill.losses import consistency_losses, draw_indices, loss_weight
from guided_diffusion.distill.parameterisation import EDMModel
from guided_diffusion.distill.sampling import cm_ts_sigmas, consistency_sample
from guided_diffusion.distill.schedules import TargetSchedule

import make_consistency_fixtures as cx  # noqa: E402 (tests/fixtures is importable once fixture_compare is)

CONSISTENCY = Path(__file__).parent / "fixtures" / "consistency"

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXACT, WHY = fixture_compare.comparison(CONSISTENCY / "provenance.json")


pinned = fixture_compare.pins_in(CONSISTENCY)


class Networks(th.nn.Module):
    """The student, target and teacher as one module, net(x, t, which, **kwargs), so that the fixture
    comparison's output perturbation (fixture_compare.OutputError) reaches all three."""

    def __init__(self):
        super().__init__()
        self.student, self.target, self.teacher = cx.networks()

    def forward(self, x, t, which, **kwargs):
        return getattr(self, which)(x, t, **kwargs)


def edm(nets, which):
    """EDMModel of one of the networks, at consistency_models' sigma_min."""
    return EDMModel(functools.partial(nets, which=which), sigma_min=cx.SIGMA_MIN)


def test_fixture_inputs_are_the_seeded_ones():
    seeded = {key: value for key, value in cx.inputs().items() if key != "y"}
    fixture_compare.assert_pinned(lambda _: seeded, None, pinned("losses"), EXACT)
    assert pinned("losses")["y"].tolist() == cx.LABELS


@pytest.mark.parametrize("name", list(cx.DENOISE_SIGMAS))
def test_denoiser_and_consistency_function_match(name):
    data = pinned("losses")
    x, sigma, y = th.from_numpy(data["noise"]), th.tensor(cx.DENOISE_SIGMAS[name]), th.from_numpy(data["y"])

    def compute(nets):
        return {f"denoise.denoiser.{name}": edm(nets, "teacher").denoise(x, sigma, y=y),
                f"denoise.consistency.{name}": edm(nets, "teacher").consistency(x, sigma, y=y)}

    with th.no_grad():
        fixture_compare.assert_pinned(compute, Networks(), data, EXACT)


def test_weightings_match():
    data = pinned("losses")
    sigma = th.from_numpy(data["weight.sigma"])
    for schedule in cx.WEIGHT_SCHEDULES:
        np.testing.assert_array_equal(loss_weight(schedule, sigma, None).numpy(), data[f"weight.{schedule}"], schedule)


@pytest.mark.parametrize("case", cx.LOSS_CASES, ids=lambda case: cx.loss_case_name(*case))
def test_consistency_loss_matches(case):
    """The same seed draws the same indices; the target replays the student's dropout draws."""
    mode, norm, weight, scales = case
    name = cx.loss_case_name(*case)
    data = pinned("losses")
    x_start, noise, y = (th.from_numpy(data[key]) for key in ("x_start", "noise", "y"))
    grid = karras_sigmas(scales, cx.SIGMA_MIN, cx.SIGMA_MAX)

    def compute(nets):
        th.manual_seed(cx.LOSS_SEED)
        indices = draw_indices(x_start.shape[0], scales)
        assert indices.tolist() == data[f"{name}.indices"].tolist()
        teacher = edm(nets, "teacher").denoise if mode == "cd" else None
        losses = consistency_losses(edm(nets, "student").consistency, edm(nets, "target").consistency, x_start,
                                    grid, indices, noise, teacher=teacher, loss_norm=norm, weight_schedule=weight,
                                    model_kwargs=dict(y=y))
        np.testing.assert_array_equal(losses["sigma"].numpy(), grid[indices].numpy())
        return {"loss": losses["loss"]}

    fixture_compare.assert_pinned(compute, Networks(), data, EXACT, prefix=f"{name}.")


@pytest.mark.parametrize("name", list(cx.SCHEDULE_CASES))
def test_ema_and_scales_match(name):
    """Integers equal everywhere; the floats bit for bit where the kernels are the fixtures' (numpy's exp and
    log may round differently elsewhere)."""
    data = pinned("schedules")
    keywords = cx.SCHEDULE_CASES[name][0]
    schedule = TargetSchedule(**keywords)
    values = [schedule(int(step)) for step in data[f"{name}.steps"]]
    assert all(isinstance(ema, float) and isinstance(scales, int) for ema, scales in values)
    np.testing.assert_array_equal([scales for _, scales in values], data[f"{name}.scales"])
    ema = np.array([ema for ema, _ in values])
    if EXACT:
        np.testing.assert_array_equal(ema, data[f"{name}.ema"])
    else:
        np.testing.assert_allclose(ema, data[f"{name}.ema"], rtol=1e-15)


@pytest.mark.parametrize("name", list(cx.SAMPLING_CASES))
def test_multistep_and_onestep_sampling_match(name):
    """consistency_models' `ts` through cm_ts_sigmas; its draws through noise_fn, each used once."""
    data = pinned("sampling")
    sampler, ts, steps = cx.SAMPLING_CASES[name]
    if sampler == "multistep":
        sigmas, sigma_end = cm_ts_sigmas(ts, steps, cx.SIGMA_MIN, cx.SIGMA_MAX)
    else:  # sample_onestep: the first level of get_sigmas_karras
        sigmas, sigma_end = karras_sigmas(steps, cx.SIGMA_MIN, cx.SIGMA_MAX)[:1], None
    draws = th.from_numpy(data[f"{name}.draws"])

    def compute(nets):
        student = edm(nets, "student")
        remaining = iter(draws)
        sample = consistency_sample(student.consistency, th.from_numpy(data[f"{name}.noise"]), sigmas, cx.SIGMA_MIN,
                                    sigma_max=cx.SIGMA_MAX, sigma_end=sigma_end, clip_denoised=True,
                                    noise_fn=lambda x: next(remaining), model_kwargs=dict(y=th.tensor(cx.LABELS)))
        assert next(remaining, None) is None, "consistency_models drew more noise than the sampler used"
        return {"sample": sample}

    nets = Networks().eval()
    fixture_compare.assert_pinned(compute, nets, data, EXACT, prefix=f"{name}.")
