"""
End-to-end tests of scripts/image_sample.py, classifier_sample.py, super_res_sample.py and
image_nll.py on tiny models (CPU, `mpiexec -n 2` where ranks matter), plus the samplers'
determinism and the classifier guidance the paper describes.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch as th
from PIL import Image

from guided_diffusion import sample_io, sample_seeds, samplers, script_util
from guided_diffusion.guidance import ClassifierGuidance

from _train_helpers import assert_same_uint8_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 16x16 UNet (0.75M parameters), a 16x16 classifier and a 16 -> 64 upsampler.
MODEL = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8")
CLASSIFIER = dict(
    image_size=16, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
    classifier_channel_mult="1,2", num_classes=2,
)
UPSAMPLER = dict(large_size=64, small_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="")


def flags(**values):
    return [token for k, v in values.items() for token in (f"--{k}", str(v))]


def load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def perturbed(model, seed):
    """A fresh model with every parameter jittered, so that its zero-initialised layers matter."""
    generator = th.Generator().manual_seed(seed)
    with th.no_grad():
        for p in model.parameters():
            p.add_(0.05 * th.randn(p.shape, generator=generator))
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build_model(**extra):
    """(UNet, diffusion) from image_sample's defaults with MODEL and `extra` applied."""
    return script_util.create_model_and_diffusion(
        **dict(script_util.model_and_diffusion_defaults(), **MODEL, **extra)
    )


def write_two_class_images(data_dir, per_class=32):
    """
    Synthetic two-class 16x16 PNGs: class "bottom" (label 0) has a bright bottom half and a dark top
    half, class "top" (label 1) the reverse; plus a little noise. (Horizontal flips and crops,
    the training scripts' augmentations, keep the class.)
    """
    data_dir.mkdir()
    rng = np.random.RandomState(0)
    bright_top = np.arange(16)[:, None, None] < 8  # [16 rows, 1, 1]
    for label, name in enumerate(("bottom", "top")):
        for i in range(per_class):
            image = np.where(bright_top == bool(label), 230.0, 25.0) + rng.normal(0, 12, (16, 16, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(data_dir / f"{name}_{i}.png")


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("two_class") / "data"
    write_two_class_images(data_dir)
    return data_dir


def train_flags(data_dir):
    return flags(data_dir=data_dir, batch_size=16, log_interval=50, save_interval=10000)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, two_class_data, run_script):
    """A class-conditional UNet trained for 30 steps by scripts/image_train.py; fresh tiny classifier
    and class-conditional upsampler (training is not the point where they are used)."""
    root = tmp_path_factory.mktemp("checkpoints")
    run_script("image_train", train_flags(two_class_data) + flags(**MODEL, class_cond=True, num_classes=2,
                                                                  class_dropout_prob=0.2, lr=2e-3, max_steps=30),
               root / "train")
    th.manual_seed(0)
    paths = {name: str(root / f"{name}.pt") for name in ("classifier", "upsampler")}
    paths["model"] = str(root / "train" / "model000030.pt")
    classifier = script_util.create_classifier(**dict(script_util.classifier_defaults(), **CLASSIFIER))
    th.save(perturbed(classifier, 2).state_dict(), paths["classifier"])
    upsampler, _ = script_util.sr_create_model_and_diffusion(
        **dict(script_util.sr_model_and_diffusion_defaults(), **UPSAMPLER, class_cond=True, num_classes=2)
    )
    th.save(perturbed(upsampler, 3).state_dict(), paths["upsampler"])
    return paths


def model_flags(checkpoints, **extra):
    values = dict(MODEL, class_cond=True, num_classes=2, class_dropout_prob=0.2, model_path=checkpoints["model"])
    values.update(extra)
    return flags(**values)


# ----------------------------------------------------------------------------- flags

RELEASE_FLAGS = json.loads(open(os.path.join(REPO, "tests", "fixtures", "reference", "script_flags.json")).read())
ADDED_FLAGS = {  # this project's additions: model options, sampling options, presets
    "num_classes", "resblock_rescale", "attention_impl", "classifier_attention_impl", "classifier_channel_mult",
    "seed", "progress", "class_labels", "preset", "image_channels", "class_dropout_prob", "sampler", "guidance_scale",
    "guidance_embed",  # a consistency student that takes W as an input
    "channel_mult",  # super_res_sample's
    "eta", "churn", "s_tmin", "s_tmax", "s_noise", "lower_order_final", "dynamic_threshold", "reclip_guided",
    "debug",  # every script: show the traceback of an error
    "prompt", "prompts_file", "clip_model_path", "clip_text_path", "clip_scale", "clip_guidance", "clip_cutouts",
    "clip_augment", "clip_quickgelu",  # CLIP guidance toward prompts
}


@pytest.mark.parametrize("name", ["image_sample", "classifier_sample", "super_res_sample", "image_nll"])
def test_script_flags_and_defaults_are_the_release(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = vars(script_util.parse_args(module.create_argparser(), []))
    release = {f["flag"][2:]: f for f in RELEASE_FLAGS["scripts"][name]}
    for flag, entry in release.items():
        assert args[flag] == entry["default"] and type(args[flag]) is type(entry["default"]), flag
    assert set(args) - set(release) <= ADDED_FLAGS
    assert args["seed"] == -1 and args["progress"] is True


# ----------------------------------------------------------------------------- image_sample


@pytest.mark.slow
def test_image_sample_layout_and_seed_independent_of_ranks_and_batch(checkpoints, tmp_path, run_script):
    common = model_flags(checkpoints, timestep_respacing=10, num_samples=5, seed=3)
    run_script("image_sample", common + flags(batch_size=2), tmp_path / "two_ranks", ranks=2)
    two_ranks = load_npz(tmp_path / "two_ranks" / "samples_5x16x16x3.npz")
    assert two_ranks["arr_0"].shape == (5, 16, 16, 3) and two_ranks["arr_0"].dtype == np.uint8
    assert two_ranks["arr_1"].shape == (5,) and two_ranks["arr_1"].dtype == np.int64
    assert set(two_ranks["arr_1"]) <= {0, 1}
    assert (tmp_path / "two_ranks" / "samples_grid.png").exists()
    assert len(np.unique(two_ranks["arr_0"].reshape(5, -1), axis=0)) == 5
    for batch_size in (1, 4):
        run_script("image_sample", common + flags(batch_size=batch_size), tmp_path / f"b{batch_size}")
        one_rank = load_npz(tmp_path / f"b{batch_size}" / "samples_5x16x16x3.npz")
        assert_same_uint8_images(one_rank["arr_0"], two_ranks["arr_0"])
        assert np.array_equal(one_rank["arr_1"], two_ranks["arr_1"])
    run_script("image_sample", model_flags(checkpoints, timestep_respacing=10, num_samples=5, seed=4),
               tmp_path / "other_seed")
    other = load_npz(tmp_path / "other_seed" / "samples_5x16x16x3.npz")
    assert not np.array_equal(other["arr_0"], two_ranks["arr_0"])


def test_image_sample_ddim25_with_requested_labels(checkpoints, tmp_path, run_script):
    run_script(
        "image_sample",
        model_flags(checkpoints, timestep_respacing="ddim25", use_ddim=True, num_samples=3, batch_size=3,
                    class_labels="1"),
        tmp_path,
    )
    samples = load_npz(tmp_path / "samples_3x16x16x3.npz")
    assert samples["arr_1"].tolist() == [1, 1, 1]
    assert len(np.unique(samples["arr_0"].reshape(3, -1), axis=0)) == 3


@pytest.mark.slow
def test_image_sample_respacing_250_unconditional_greyscale(tmp_path, run_script):
    path = tmp_path / "uncond.pt"
    th.save(perturbed(build_model(image_channels=1)[0], 4).state_dict(), path)
    run_script("image_sample", flags(**MODEL, model_path=path, timestep_respacing=250, num_samples=2,
                                     batch_size=2, image_channels=1), tmp_path)
    samples = load_npz(tmp_path / "samples_2x16x16x3.npz")
    assert list(samples) == ["arr_0"]
    grey = samples["arr_0"][..., :1]
    assert (samples["arr_0"] == grey).all() and grey.std() > 0  # one grey image repeated in 3 channels


def explicit_free_guidance(model, scale, null_class):
    """The model with classifier-free guidance written out: eps_u + scale (eps_c - eps_u), both branches
    in one batched forward ([x; x], labels [y; null_class])."""
    def guided(x, t, y):
        eps_c, eps_u = model(th.cat([x, x]), th.cat([t, t]), y=th.cat([y, th.full_like(y, null_class)])).chunk(2)
        return eps_u + scale * (eps_c - eps_u)
    return guided


def test_classifier_free_guidance_with_dpm_solver(checkpoints, tmp_path, run_script):
    common = model_flags(checkpoints, timestep_respacing=10, num_samples=2, batch_size=2, seed=1, class_labels="0,1",
                         sampler="dpm++2m")
    model, diffusion = build_model(class_cond=True, num_classes=2, class_dropout_prob=0.2, timestep_respacing="10")
    model.load_state_dict(th.load(checkpoints["model"], weights_only=True))
    model.eval()
    x_T = sample_seeds.SeededBatch(1, range(2)).noise((2, 3, 16, 16))  # the script's x_T for samples 0 and 1
    samples = {}
    for scale in (1.0, 4.0):
        run_script("image_sample", common + flags(guidance_scale=scale), tmp_path / str(scale))
        samples[scale] = load_npz(tmp_path / str(scale) / "samples_2x16x16x3.npz")["arr_0"].astype(int)
        # the same deterministic run with the guided eps spelled out: equal up to float round-off
        with th.no_grad():
            x = samplers.sample(diffusion, explicit_free_guidance(model, scale, model.null_class), (2, 3, 16, 16),
                                sampler="dpm++2m", noise=x_T, model_kwargs={"y": th.tensor([0, 1])})
        expected = sample_io.to_uint8_nhwc(x).numpy().astype(int)
        assert np.abs(samples[scale] - expected).max() <= 1, scale
        assert (samples[scale] == expected).mean() > 0.99, scale
    assert np.abs(samples[1.0] - samples[4.0]).mean() > 5  # guidance moves the images well beyond round-off


def test_wrong_flags_for_checkpoint_are_a_clear_error(checkpoints, tmp_path, run_script):
    result = run_script("image_sample", model_flags(checkpoints, num_channels=64, num_samples=1),
                        tmp_path, check=False)
    assert result.returncode == 2
    assert "image_sample.py: error: --num_channels 64 contradicts the checkpoint (32" in result.stderr


# ----------------------------------------------------------------------------- samplers


def test_ddim_eta0_is_deterministic_given_initial_noise(checkpoints):
    model, diffusion = build_model(class_cond=True, num_classes=2, class_dropout_prob=0.2, timestep_respacing="ddim25")
    model.load_state_dict(th.load(checkpoints["model"]))
    model.eval()  # no label dropout
    assert diffusion.num_timesteps == 25
    x_T = th.randn(2, 3, 16, 16, generator=th.Generator().manual_seed(0))
    kwargs = dict(noise=x_T, model_kwargs={"y": th.tensor([0, 1])})

    def noise_fn(seed):
        generator = th.Generator().manual_seed(seed)
        return lambda x: th.randn(x.shape, generator=generator)

    first = diffusion.ddim_sample_loop(model, (2, 3, 16, 16), noise_fn=noise_fn(1), **kwargs)
    second = diffusion.ddim_sample_loop(model, (2, 3, 16, 16), noise_fn=noise_fn(2), **kwargs)
    assert th.equal(first, second)
    ancestral = [diffusion.p_sample_loop(model, (2, 3, 16, 16), noise_fn=noise_fn(s), **kwargs) for s in (1, 2)]
    assert not th.equal(*ancestral)  # DDPM steps do draw from noise_fn


def test_guidance_sees_original_timesteps_under_respacing():
    _, diffusion = build_model(timestep_respacing="ddim5")
    seen = []

    def classifier(x, t):
        seen.extend(t.tolist())
        return x.mean(dim=(1, 2, 3))[:, None] * th.tensor([1.0, -1.0])

    def model(x, t, **_):
        return th.zeros_like(x)

    guide = ClassifierGuidance(classifier, 1.0)
    for loop in (diffusion.p_sample_loop, diffusion.ddim_sample_loop):  # the release's cond_fn keyword
        seen.clear()
        loop(model, (1, 3, 16, 16), cond_fn=guide, model_kwargs={"y": th.tensor([1])}, device="cpu")
        assert seen == [800, 600, 400, 200, 0]
    seen.clear()
    samplers.sample(diffusion, model, (1, 3, 16, 16), sampler="dpm++2m", guidance=guide,
                    model_kwargs={"y": th.tensor([1])}, device="cpu")
    assert seen == [800, 600, 400, 200, 0]


# ----------------------------------------------------------------------------- other scripts


def release_cond_fn(classifier, scale):
    """The release's classifier_sample cond_fn, written out: scale * d/dx log softmax(classifier(x, t))[y]."""
    def cond_fn(x, t, y=None):
        with th.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = th.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return th.autograd.grad(selected.sum(), x_in)[0] * scale
    return cond_fn


@pytest.mark.slow
def test_classifier_sample_two_ranks(checkpoints, tmp_path, run_script):
    args = model_flags(checkpoints, timestep_respacing=10, num_samples=3, batch_size=1, seed=0)
    scale = 30.0  # the fresh classifier's gradients are small: this moves every sample by > 2 levels on average
    args += flags(**CLASSIFIER, classifier_path=checkpoints["classifier"], classifier_scale=scale)
    run_script("classifier_sample", args, tmp_path, ranks=2)
    samples = load_npz(tmp_path / "samples_3x16x16x3.npz")
    assert samples["arr_0"].shape == (3, 16, 16, 3) and samples["arr_1"].dtype == np.int64
    assert (tmp_path / "samples_grid.png").exists()
    # each sample again here, alone, with the release's cond_fn and its own seeded streams
    model, diffusion = build_model(class_cond=True, num_classes=2, class_dropout_prob=0.2, timestep_respacing="10")
    model.load_state_dict(th.load(checkpoints["model"], weights_only=True))
    classifier = script_util.create_classifier(**dict(script_util.classifier_defaults(), **CLASSIFIER))
    classifier.load_state_dict(th.load(checkpoints["classifier"], weights_only=True))
    model.eval(), classifier.eval()
    moved = []
    for i in range(3):
        expected = {}
        for s in (scale, 0.0):
            batch = sample_seeds.SeededBatch(0, range(i, i + 1))
            y = batch.labels(2)
            with th.no_grad():
                x = diffusion.p_sample_loop(model, (1, 3, 16, 16), noise=batch.noise((1, 3, 16, 16)),
                                            noise_fn=batch.noise_like, model_kwargs={"y": y},
                                            cond_fn=release_cond_fn(classifier, s))
            expected[s] = sample_io.to_uint8_nhwc(x)[0].numpy()
        assert samples["arr_1"][i] == int(y[0])
        assert np.array_equal(samples["arr_0"][i], expected[scale]), i
        moved.append(np.abs(expected[scale].astype(int) - expected[0.0]).mean())
    assert min(moved) > 2  # the classifier's gradient moved every sample


def write_base_samples(path, count, size=16, **extra):
    images = np.random.RandomState(0).randint(0, 256, size=(count, size, size, 3)).astype(np.uint8)
    np.savez(path, arr_0=images, **extra)
    return str(path)


def upsampler_flags(checkpoints, base_samples, **extra):
    values = dict(UPSAMPLER, class_cond=True, num_classes=2, model_path=checkpoints["upsampler"],
                  base_samples=base_samples, timestep_respacing=5)
    values.update(extra)
    return flags(**values)


@pytest.mark.slow
def test_super_res_sample_two_ranks(checkpoints, tmp_path, run_script):
    base = write_base_samples(tmp_path / "base.npz", 2, arr_1=np.array([1, 0]))
    run_script("super_res_sample", upsampler_flags(checkpoints, base, num_samples=3, batch_size=1, seed=0),
               tmp_path / "a", ranks=2)
    samples = load_npz(tmp_path / "a" / "samples_3x64x64x3.npz")
    assert samples["arr_0"].shape == (3, 64, 64, 3) and samples["arr_0"].dtype == np.uint8
    assert samples["arr_1"].tolist() == [1, 0, 1]  # sample 2 reuses base sample 0
    # the same run on one rank with base sample 1 replaced (labels kept): samples 0 and 2 (base sample 0)
    # are the same, sample 1 follows its new base sample
    with np.load(base) as data:
        images = data["arr_0"].copy()
    images[1] = 255 - images[1]
    other = tmp_path / "other_base.npz"
    np.savez(other, arr_0=images, arr_1=np.array([1, 0]))
    run_script("super_res_sample", upsampler_flags(checkpoints, str(other), num_samples=3, batch_size=1, seed=0),
               tmp_path / "b")
    changed = load_npz(tmp_path / "b" / "samples_3x64x64x3.npz")
    assert changed["arr_1"].tolist() == [1, 0, 1]
    assert np.array_equal(changed["arr_0"][[0, 2]], samples["arr_0"][[0, 2]])
    assert np.abs(changed["arr_0"][1].astype(int) - samples["arr_0"][1]).mean() > 5


@pytest.mark.parametrize(
    "arrays,message",
    [
        (dict(images=np.zeros((2, 16, 16, 3), np.uint8)), "has no arr_0"),
        (dict(arr_0=np.zeros((2, 32, 32, 3), np.uint8), arr_1=np.zeros(2, np.int64)), "expected uint8 [N, 16, 16, 3]"),
        (dict(arr_0=np.zeros((2, 16, 16, 3), np.uint8)), "has no arr_1 labels"),
    ],
)
def test_bad_base_samples_fail_clearly(checkpoints, tmp_path, arrays, message, run_script):
    np.savez(tmp_path / "base.npz", **arrays)
    result = run_script("super_res_sample", upsampler_flags(checkpoints, str(tmp_path / "base.npz"), num_samples=1),
                        tmp_path, check=False)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.slow
def test_image_nll_two_ranks(checkpoints, two_class_data, tmp_path, run_script):
    run_script("image_nll", model_flags(checkpoints, timestep_respacing=8, data_dir=two_class_data,
                                        num_samples=3, batch_size=1, seed=0), tmp_path, ranks=2)
    log = (tmp_path / "log.txt").read_text()
    assert "over 3 images" in log
    value = {name: float(log.split(f"{name}")[1].split()[0].strip(")=")) for name in ("bpd=", "prior", "vb")}
    vb = load_npz(tmp_path / "vb_terms.npz")["terms"]
    assert vb.shape == (3, 8) and np.isfinite(vb).all() and (vb >= 0).all()
    assert value["vb"] == pytest.approx(vb.sum(axis=1).mean(), abs=1e-4)
    assert value["bpd="] == pytest.approx(value["prior"] + value["vb"], abs=2e-4)
    for name in ("mse", "xstart_mse"):
        assert load_npz(tmp_path / f"{name}_terms.npz")["terms"].shape == (3, 8)


# ----------------------------------------------------------------------------- guidance


@pytest.fixture(scope="module")
def guidance_models(tmp_path_factory, two_class_data, run_script):
    """An unconditional tiny UNet and a noisy classifier, trained briefly on write_two_class_images
    by scripts/image_train.py and scripts/classifier_train.py."""
    root = tmp_path_factory.mktemp("guidance")
    common = train_flags(two_class_data)
    run_script("image_train", common + flags(**MODEL, lr=2e-3, max_steps=100), root / "model")
    run_script("classifier_train", common + flags(**CLASSIFIER, lr=1e-3, iterations=100), root / "classifier")
    classifier = script_util.create_classifier(**dict(script_util.classifier_defaults(), **CLASSIFIER))
    classifier.load_state_dict(th.load(root / "classifier" / "model000100.pt"))
    return root / "model" / "model000100.pt", root / "classifier" / "model000100.pt", classifier.eval()


@pytest.mark.slow
def test_classifier_guidance_steers_samples_to_the_requested_class(guidance_models, tmp_path, run_script):
    model_path, classifier_path, classifier = guidance_models
    accuracy = {}
    for scale in (0.0, 10.0):
        args = flags(**MODEL, model_path=model_path, timestep_respacing=25, num_samples=24, batch_size=12,
                     seed=0, class_labels="0,1")
        args += flags(**CLASSIFIER, classifier_path=classifier_path, classifier_scale=scale)
        run_script("classifier_sample", args, tmp_path / str(scale), ranks=2)
        samples = load_npz(tmp_path / str(scale) / "samples_24x16x16x3.npz")
        x = th.from_numpy(samples["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = th.from_numpy(samples["arr_1"])
        assert y.tolist() == [0, 1] * 12
        with th.no_grad():
            predicted = classifier(x, th.zeros(len(x), dtype=th.long)).argmax(dim=-1)
        # an independent reading of the class: which half of the image is brighter
        top_brighter = (x[:, :, :8].mean(dim=(1, 2, 3)) > x[:, :, 8:].mean(dim=(1, 2, 3))).long()
        accuracy[scale] = (float((predicted == y).float().mean()), float((top_brighter == y).float().mean()))
    print("accuracy (classifier, brighter half) at scale 0 and 10:", accuracy)
    for unguided, guided in zip(accuracy[0.0], accuracy[10.0]):
        # unguided samples do not depend on the requested labels: chance level
        assert unguided <= 0.75 and guided >= 0.9
