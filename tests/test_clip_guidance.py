"""CLIP guidance (clip/guides.py, clip/load.py, the sampling scripts' --clip_* flags): the noise-aware guide is
GLIDE's cond_fn and reads the original timesteps, the clean guide's gradient passes through the model's x0_hat and
its cutouts are the crops they say, both run under every sampler and with classifier-free guidance (equal to a
hand-written loop), the loader's dispatch and refusals, and image_sample.py / text_sample.py end to end."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch as th
import torch.nn as nn

import fixture_compare
from _train_helpers import run_script, write_run
from guided_diffusion import glide, samplers
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.clip.checkpoint import build_clip
from guided_diffusion.clip.guides import CleanCLIPGuidance, NoisyCLIPGuidance, OpenCLIPAdapter, spherical_distance
from guided_diffusion.clip.load import clip_prompts_of_flags, glide_config, load_clip_model
from guided_diffusion.clip.openai_vit import OpenAIClip
from guided_diffusion.config import ClipModelConfig, ClipSampleConfig, DiffusionConfig, ModelConfig, as_flags
from guided_diffusion.errors import UsageError
from guided_diffusion.guidance import ClassifierFreeGuidance, GuidedDenoiser
from guided_diffusion.sample_seeds import SeededBatch
from test_text_sample import save_run as save_text_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red dress", "a blue shirt"]
STEPS = 20


def tiny_clip(image_size=16, n_timesteps=STEPS, seed=0):
    """A GLIDE-layout CLIP of width 32 (one head), one block a side, 8 tokens, random weights."""
    th.manual_seed(seed)
    config = dict(glide.clip_model_defaults(), image_size=image_size, patch_size=4, n_timesteps=n_timesteps,
                  n_embd=16, n_vocab=49408, max_text_len=8, n_head_state_text=32, n_head_text=1, n_xf_blocks_text=1,
                  n_head_state_image=32, n_head_image=1, n_xf_blocks_image=1)
    return glide.create_clip_model(config), config


@pytest.fixture(scope="module")
def noisy_clip():
    return tiny_clip()[0]


@pytest.fixture(scope="module")
def clean_clip():
    return tiny_clip(image_size=8, n_timesteps=0, seed=1)[0]


def diffusion_of(respacing="5", **changes):
    return build_diffusion(DiffusionConfig(**dict(dict(diffusion_steps=STEPS, noise_schedule="cosine",
                                                       timestep_respacing=respacing), **changes)))


class TinyClassModel(nn.Module):
    """eps(x, t, y) of a 3-channel image: a convolution, a label embedding (labels 0, 1 and the null 2) and t."""

    def __init__(self):
        super().__init__()
        th.manual_seed(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.label = nn.Embedding(3, 3)
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append(t.clone())
        y = th.full((len(x),), 2) if y is None else y
        return th.tanh(self.conv(x)) + 0.3 * self.label(y)[:, :, None, None] + 0.01 * t.float().view(-1, 1, 1, 1)


def image_batch(n=2, size=16, seed=0):
    return th.randn(n, 3, size, size, generator=th.Generator().manual_seed(seed)).clamp(-1, 1)


# ----------------------------------------------------------------------------- the noise-aware guide


def test_noisy_guide_is_glides_cond_fn_exactly(noisy_clip):
    x, t = image_batch(), th.tensor([3, 17])
    for prompts in (PROMPTS, ["one prompt for all"]):
        guide = NoisyCLIPGuidance(noisy_clip, prompts, 3.0)
        expected = noisy_clip.cond_fn(prompts, 3.0)(x, t)
        assert th.equal(guide(x, t, {}), expected) and expected.abs().sum() > 0
    picked = NoisyCLIPGuidance(noisy_clip, PROMPTS, 2.0).of([5, 2, 7])  # sample i: prompt i % 2
    x3, t3 = image_batch(3), th.tensor([1, 2, 3])
    assert th.equal(picked(x3, t3, {}), noisy_clip.cond_fn([PROMPTS[1], PROMPTS[0], PROMPTS[1]], 2.0)(x3, t3))


def test_grey_samples_are_read_as_three_equal_channels(noisy_clip, clean_clip):
    """The gradient of a grey x is the sum of the RGB gradients of x repeated three times (the chain rule)."""
    grey, t = image_batch()[:, :1], th.tensor([3, 17])
    rgb_gradient = noisy_clip.cond_fn(PROMPTS, 3.0)(grey.repeat(1, 3, 1, 1), t)
    assert th.allclose(NoisyCLIPGuidance(noisy_clip, PROMPTS, 3.0)(grey, t), rgb_gradient.sum(1, keepdim=True),
                       atol=1e-6)
    clean = CleanCLIPGuidance(clean_clip, PROMPTS, 1.0)
    assert th.equal(clean.distance(grey), clean.distance(grey.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("rescale", [False, True])
def test_noisy_guide_reads_the_original_timesteps(noisy_clip, rescale):
    """Respaced to 5 of 20 steps, with or without --rescale_timesteps (the model then sees t * 1000 / 20): the
    CLIP reads the kept steps' original indices."""
    diffusion = diffusion_of("5", rescale_timesteps=rescale)
    seen = []
    hook = noisy_clip.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1].tolist()))
    try:
        guide = NoisyCLIPGuidance(noisy_clip, PROMPTS, 3.0, diffusion)
        samplers.sample(diffusion, TinyClassModel(), (2, 3, 16, 16), sampler="ddim", guidance=[guide],
                        noise=image_batch())
    finally:
        hook.remove()
    original = sorted(diffusion.timestep_map, reverse=True)
    assert seen == [[step, step] for step in original] and original != list(range(4, -1, -1))
    if rescale:
        with pytest.raises(ValueError, match="make NoisyCLIPGuidance with diffusion="):
            samplers.sample(diffusion, TinyClassModel(), (2, 3, 16, 16), sampler="ddim",
                            guidance=[NoisyCLIPGuidance(noisy_clip, PROMPTS, 3.0)], noise=image_batch())


def test_noisy_guide_refuses_a_clean_clip_and_other_timesteps(noisy_clip, clean_clip):
    with pytest.raises(UsageError, match="--clip_guidance clean"):
        NoisyCLIPGuidance(clean_clip, PROMPTS, 3.0)
    with pytest.raises(UsageError, match="reads timesteps of a 20-step diffusion but the model's has 40"):
        NoisyCLIPGuidance(noisy_clip, PROMPTS, 3.0, build_diffusion(DiffusionConfig(diffusion_steps=40)))


# ----------------------------------------------------------------------------- the clean guide



class HalfBlindModel(nn.Module):
    """x_0 (predict_xstart) that ignores x for sample 0 (a constant image) and is 0.9 tanh(w x) for the others."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(th.tensor(0.7))
        self.constant = image_batch(1, seed=9) * 0.5

    def forward(self, x, t):
        return th.cat([self.constant.expand(1, -1, -1, -1), 0.9 * th.tanh(self.w * x[1:])])


class RecordingClean(CleanCLIPGuidance):
    """The clean guide, keeping what it returns."""

    def __call__(self, *args, **kwargs):
        self.returned = super().__call__(*args, **kwargs)
        return self.returned


def test_clean_guide_differentiates_through_the_models_x0(clean_clip):
    diffusion = diffusion_of("", predict_xstart=True)
    x, t = image_batch(), th.tensor([10, 10])
    guide = RecordingClean(clean_clip, PROMPTS, 50.0)
    GuidedDenoiser(diffusion, HalfBlindModel(), [guide], on="score")(x, t)
    assert th.equal(guide.returned[0], th.zeros_like(x[0]))  # sample 0's x_0 does not depend on x_t
    x1 = x[1:].clone().requires_grad_(True)
    second = guide.of([1])
    by_hand = -50.0 * th.autograd.grad(second.distance(0.9 * th.tanh(0.7 * x1)).sum(), x1)[0]
    assert th.allclose(guide.returned[1:], by_hand, rtol=1e-4, atol=1e-6) and by_hand.abs().sum() > 0
    x_direct = x[1:].clone().requires_grad_(True)  # the loss read at x_t itself would give another gradient
    direct = -50.0 * th.autograd.grad(second.distance(x_direct).sum(), x_direct)[0]
    assert not th.allclose(direct, by_hand, atol=1e-4)


def test_spherical_distance_is_half_the_squared_angle():
    a, b = th.tensor([[1.0, 0.0]]), th.tensor([[math.cos(0.3), math.sin(0.3)]])
    assert th.allclose(spherical_distance(a, b), th.tensor([0.3 ** 2 / 2]))
    assert spherical_distance(a, a).item() == 0


def fixed_draws(guide, values):
    """guide.draws replaced by the given uniform draws [6] for every sample and cutout."""
    guide.draws = lambda n, views: th.tensor(values, dtype=th.float32).expand(n, views, 6)
    return guide


def test_cutouts_are_the_crops_they_say(clean_clip):
    x = image_batch(2, size=16)  # the CLIP reads 8 px
    whole = CleanCLIPGuidance(clean_clip, PROMPTS, 1.0)
    assert th.allclose(whole.views(x), th.nn.functional.interpolate(x, size=(8, 8), mode="bilinear",
                                                                     antialias=True))
    corner = fixed_draws(CleanCLIPGuidance(clean_clip, PROMPTS, 1.0, cutouts=3), [0.0, 0.0, 0.0, 0.9, 0.5, 0.5])
    views = corner.views(x)  # side 1/2 at the top-left corner: that 8 px quadrant, pixel for pixel
    assert views.shape == (6, 3, 8, 8) and th.allclose(views, x[:, :, :8, :8].repeat_interleave(3, 0), atol=1e-6)
    flipped = fixed_draws(CleanCLIPGuidance(clean_clip, PROMPTS, 1.0, cutouts=1, augment=True),
                          [0.0, 1.0, 1.0, 0.1, 0.5, 0.5])  # bottom-right quadrant, flipped left-right
    assert th.allclose(flipped.views(x), x[:, :, 8:, 8:].flip(-1), atol=1e-6)
    small = image_batch(2, size=8)
    kept = fixed_draws(CleanCLIPGuidance(clean_clip, PROMPTS, 1.0, augment=True), [0, 0.5, 0.5, 0.9, 0.5, 0.5])
    assert th.allclose(kept.views(small), small, atol=1e-6)  # no crop, no flip, no shift: the image itself
    moved = fixed_draws(CleanCLIPGuidance(clean_clip, PROMPTS, 1.0, augment=True), [0, 0.5, 0.5, 0.9, 1.0, 0.5])
    shifted = moved.views(small)  # shifted by 0.1 in [-1, 1] units: 0.4 px, bilinear
    assert th.allclose(shifted[..., :-1], 0.6 * small[..., :-1] + 0.4 * small[..., 1:], atol=1e-5)


def test_cutout_draws_repeat_and_follow_each_samples_generator(clean_clip):
    x = image_batch(3)
    guide = CleanCLIPGuidance(clean_clip, PROMPTS, 1.0, cutouts=4, augment=True)

    def views(indices, seeds):
        return guide.of(indices, [th.Generator().manual_seed(s) for s in seeds]).views(x[indices])

    assert th.equal(views([0, 1, 2], [5, 6, 7]), views([0, 1, 2], [5, 6, 7]))
    assert th.equal(views([0, 1, 2], [5, 6, 7])[4:8], views([1], [6]))  # sample 1's crops: its own stream only
    assert not th.allclose(views([0, 1, 2], [5, 6, 7]), views([0, 1, 2], [5, 6, 8]))


def test_a_noise_aware_clip_reads_x0_at_t_0(noisy_clip):
    seen = []
    hook = noisy_clip.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1].tolist()))
    try:
        CleanCLIPGuidance(noisy_clip, PROMPTS, 1.0, cutouts=2).distance(image_batch())
    finally:
        hook.remove()
    assert seen == [[0, 0, 0, 0]]


# ----------------------------------------------------------------------------- every sampler, with CFG


@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
def test_both_guides_work_with_every_sampler(noisy_clip, clean_clip, sampler):
    diffusion, model, noise = diffusion_of("4"), TinyClassModel(), image_batch()
    zeros = th.zeros_like  # the stochastic samplers' noise, so that only the guide differs

    plain = samplers.sample(diffusion, model, (2, 3, 16, 16), sampler=sampler, noise=noise, noise_fn=zeros)
    for guide in (NoisyCLIPGuidance(noisy_clip, PROMPTS, 30.0, diffusion),
                  CleanCLIPGuidance(clean_clip, PROMPTS, 300.0, cutouts=2, generator=th.Generator().manual_seed(0))):
        guided = samplers.sample(diffusion, model, (2, 3, 16, 16), sampler=sampler, guidance=[guide], noise=noise,
                                 noise_fn=zeros)
        assert th.isfinite(guided).all() and (guided - plain).abs().max() > 1e-3, (sampler, type(guide).__name__)


def test_noisy_guide_with_classifier_free_guidance_is_the_hand_written_loop(noisy_clip):
    """DDIM (eta 0) over 5 of 20 steps: eps = eps_u + W (eps_c - eps_u), x_0 clipped, then the release's score
    shift by GLIDE's cond_fn at the original timestep."""
    diffusion, model, noise, y = diffusion_of("5"), TinyClassModel(), image_batch(), th.tensor([0, 1])
    free = ClassifierFreeGuidance(3.0, null_class=2)
    guided = samplers.sample(diffusion, model, (2, 3, 16, 16), sampler="ddim", noise=noise, model_kwargs={"y": y},
                             guidance=[free, NoisyCLIPGuidance(noisy_clip, PROMPTS, 20.0, diffusion)])
    free_only = samplers.sample(diffusion, model, (2, 3, 16, 16), sampler="ddim", noise=noise,
                                model_kwargs={"y": y}, guidance=[free])
    cond_fn, x = noisy_clip.cond_fn(PROMPTS, 20.0), noise
    for i in reversed(range(5)):
        t = th.full((2,), int(diffusion.timestep_map[i]))
        ab, ab_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        with th.no_grad():
            eps_u, eps_c = model(x, t, th.tensor([2, 2])), model(x, t, y)
        eps = eps_u + 3.0 * (eps_c - eps_u)
        x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab) - math.sqrt(1 - ab) * cond_fn(x, t)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    assert th.allclose(guided, x, atol=1e-4), (guided - x).abs().max()
    assert (guided - free_only).abs().max() > 1e-2


# ----------------------------------------------------------------------------- open_clip objects


class FakeOpenCLIP(nn.Module):
    """An open_clip-like model: encode_image reads CLIP-normalised pixels [N, 3, 8, 8], encode_text tokens."""

    def __init__(self):
        super().__init__()
        th.manual_seed(4)
        self.image = nn.Linear(3 * 8 * 8, 16)
        self.text = nn.Embedding(49408, 16)
        self.logit_scale = nn.Parameter(th.tensor(math.log(100.0)))
        self.pixels = []

    def encode_image(self, pixels):
        self.pixels.append(pixels)
        return self.image(pixels.flatten(1))

    def encode_text(self, tokens):
        return self.text(tokens).mean(1)


def test_open_clip_adapter_normalises_pixels_and_guides():
    inner = FakeOpenCLIP()
    adapter = OpenCLIPAdapter(inner, image_size=8)
    x = image_batch(2, size=8)
    features = adapter.encode_image(x)
    mean = th.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = th.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert th.allclose(inner.pixels[-1], ((x + 1) / 2 - mean) / std, atol=1e-6)
    assert th.allclose(adapter.encode_image(x, normalize=True).norm(dim=1), th.ones(2))
    assert th.allclose(adapter.text_embeddings(PROMPTS).norm(dim=1), th.ones(2)) and features.shape == (2, 16)
    gradient = CleanCLIPGuidance(adapter, PROMPTS, 10.0)(x.requires_grad_(True), th.tensor([3, 3]),
                                                          {"pred_xstart": x * 0.5})
    assert gradient.shape == x.shape and gradient.abs().sum() > 0
    with pytest.raises(UsageError, match="--clip_guidance clean"):
        NoisyCLIPGuidance(adapter, PROMPTS, 3.0)


# ----------------------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def glide_folder(tmp_path_factory):
    """(NoisyCLIP, its GLIDE config, a folder with its clip_image_enc.pt and clip_text_enc.pt)."""
    clip, config = tiny_clip(seed=5)
    folder = tmp_path_factory.mktemp("glide_clip")
    th.save(clip.image_encoder.state_dict(), folder / "clip_image_enc.pt")
    th.save(clip.text_encoder.state_dict(), folder / "clip_text_enc.pt")
    return clip, config, folder


TINY_TRAINED = dict(clip_image_size=16, clip_patch_size=4, clip_width=16, clip_head_channels=16, clip_image_heads=1,
                    clip_image_layers=1, clip_text_heads=1, clip_text_layers=1, clip_text_ctx=8)


def save_trained_clip(folder, diffusion_steps=STEPS, **changes):
    """A CLIP as clip_train.py saves it: model000000.pt with the run's train_config.json. Returns (model, path)."""
    config = ClipModelConfig(**dict(TINY_TRAINED, **changes))
    diffusion = DiffusionConfig(diffusion_steps=diffusion_steps)
    th.manual_seed(6)
    model = build_clip(config, diffusion_steps).eval()
    folder.mkdir(parents=True)
    th.save(model.state_dict(), folder / "model000000.pt")
    (folder / "train_config.json").write_text(json.dumps({"train_flags": as_flags(config, diffusion)}))
    return model, folder / "model000000.pt"


def same_clip(a, b):
    x, t = image_batch(2, size=a.image_size), th.tensor([4, 9]) if a.noise_aware else None
    return th.equal(a.text_embeddings(PROMPTS), b.text_embeddings(PROMPTS)) and th.equal(a.encode_image(x, t),
                                                                                          b.encode_image(x, t))


def test_glide_files_load_from_the_image_file_or_the_folder(glide_folder, tmp_path):
    clip, config, folder = glide_folder
    assert glide_config(th.load(folder / "clip_image_enc.pt"), th.load(folder / "clip_text_enc.pt")) == config
    assert same_clip(load_clip_model(folder), clip) and same_clip(load_clip_model(folder / "clip_image_enc.pt"), clip)
    (tmp_path / "apart").mkdir()
    moved = tmp_path / "apart" / "image.pt"
    moved.write_bytes((folder / "clip_image_enc.pt").read_bytes())
    assert same_clip(load_clip_model(moved, text_path=folder / "clip_text_enc.pt"), clip)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_trained_and_openai_files_load(tmp_path):
    model, path = save_trained_clip(tmp_path / "run")
    assert same_clip(load_clip_model(path), model) and load_clip_model(path).noise_aware
    shapes = fixture_compare.pins_in(Path(__file__).parent / "fixtures" / "open_clip")("clip")["meta"]["shapes"]
    gen = th.Generator().manual_seed(0)  # a tiny ViT of the fixture's shapes
    state = {key: th.randn(shape, generator=gen) / math.sqrt(max(shape[-1:] or [1])) for key, shape in shapes}
    th.save(state, tmp_path / "vit.pt")
    quick, exact = load_clip_model(tmp_path / "vit.pt"), load_clip_model(tmp_path / "vit.pt", quickgelu=False)
    assert isinstance(quick, OpenAIClip) and not quick.noise_aware
    x = image_batch(1, size=quick.image_size)
    assert not th.allclose(quick.encode_image(x), exact.encode_image(x))  # quickgelu reaches the model
    tokens = quick.tokenizer(["a"], 77)
    th.jit.save(th.jit.trace(quick, (x, tokens), check_trace=False), tmp_path / "ViT-tiny.pt")  # OpenAI's archives
    assert th.equal(load_clip_model(tmp_path / "ViT-tiny.pt").encode_image(x), quick.encode_image(x))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    th.save(data, path) if not isinstance(data, bytes) else path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, words", ids=["missing", "empty folder", "image without text", "text as image",
                                             "not torch", "foreign state", "not a dict"], argvalues=[
    (lambda tmp, glide: tmp / "nowhere.pt", "nowhere.pt: no such file or folder: give a CLIP"),
    (lambda tmp, glide: write(tmp / "empty" / "x.txt", b"x").parent, "a folder without GLIDE's clip_image_enc.pt"),
    (lambda tmp, glide: write(tmp / "alone" / "clip_image_enc.pt", th.load(glide / "clip_image_enc.pt")),
     "its text encoder is not at .*alone/clip_text_enc.pt: pass its clip_text_enc.pt as --clip_text_path"),
    (lambda tmp, glide: glide / "clip_text_enc.pt", "is GLIDE's text encoder .*give it as --clip_text_path"),
    (lambda tmp, glide: write(tmp / "junk.pt", b"not a torch file"), "junk.pt is not a torch file of tensors"),
    (lambda tmp, glide: write(tmp / "other.pt", {"conv.weight": th.zeros(2)}), "other.pt is no CLIP this project "
     "reads .*first conv.weight"),
    (lambda tmp, glide: write(tmp / "list.pt", [th.zeros(2)]), "list.pt holds a list, not a state dict"),
])
def test_loader_refusals_name_the_file_and_the_fix(glide_folder, tmp_path, make, words):
    with pytest.raises(UsageError, match=words) as refusal:
        load_clip_model(make(tmp_path, glide_folder[2]))
    assert "\n" not in str(refusal.value)


# ----------------------------------------------------------------------------- the scripts


def save_unet(folder):
    """A tiny unconditional 16 px RGB UNet (20 cosine steps) with its run's train_config.json."""
    model_config = ModelConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                               attention_resolutions="8", num_heads=2)
    diffusion_config = DiffusionConfig(learn_sigma=True, diffusion_steps=STEPS, noise_schedule="cosine")
    th.manual_seed(7)
    model = build_unet(model_config, True)
    with th.no_grad():
        for param in model.parameters():
            param.add_(th.randn(param.shape) * 0.05)  # the zero-initialised output layer too
    return write_run(folder, model, model_config, diffusion_config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glide_folder):
    root = tmp_path_factory.mktemp("clip_scripts")
    return dict(unet=save_unet(root / "unet"), noisy=save_trained_clip(root / "noisy")[1], glide=glide_folder[2],
                clean=save_trained_clip(root / "clean", clip_image_size=8, clip_noise_aware=False)[1],
                steps40=save_trained_clip(root / "steps40", diffusion_steps=40)[1], root=root)


SAMPLE = ["--timestep_respacing", 4, "--num_samples", 3, "--seed", 2, "--sampler", "ddim"]


def samples(log_dir):
    with np.load(log_dir / "samples_3x16x16x3.npz") as data:
        return data["arr_0"]


def test_image_sample_with_clip_guidance(runs, tmp_path):
    base = ["--model_path", runs["unet"], *SAMPLE]
    prompts = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    run_script("image_sample", base, tmp_path / "plain")
    noisy = [*base, "--clip_model_path", runs["noisy"], *prompts, "--clip_scale", 300]
    run_script("image_sample", noisy, tmp_path / "noisy")
    assert (tmp_path / "noisy" / "prompts.txt").read_text().splitlines() == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    assert (tmp_path / "noisy" / "prompts_grid.png").is_file()
    assert np.abs(samples(tmp_path / "noisy").astype(int) - samples(tmp_path / "plain")).max() > 0
    clean = [*base, "--clip_model_path", runs["glide"], *prompts, "--clip_guidance", "clean", "--clip_cutouts", 2,
             "--clip_augment", True, "--clip_scale", 300]
    run_script("image_sample", [*clean, "--batch_size", 2], tmp_path / "clean2")
    run_script("image_sample", [*clean, "--batch_size", 1], tmp_path / "clean1")
    # each sample's crops from its own stream: the batch size changes float round-off only (amplified by the
    # guide past assert_same_uint8_images's 1% of pixels, but never past one level; other crops move whole pixels)
    assert np.abs(samples(tmp_path / "clean2").astype(int) - samples(tmp_path / "clean1")).max() <= 1
    assert np.abs(samples(tmp_path / "clean2").astype(int) - samples(tmp_path / "plain")).max() > 0


def test_clip_scale_0_is_plain_sampling_without_a_guide(runs):
    shape, diffusion_config = (3, 16, 16), DiffusionConfig(diffusion_steps=STEPS, noise_schedule="cosine")
    for scale, guides in ((0.0, 0), (1.0, 1)):
        config = ClipSampleConfig(clip_model_path=str(runs["noisy"]), clip_scale=scale)
        prompts = clip_prompts_of_flags(config, [PROMPTS[0]], shape, diffusion_config)
        batch = SeededBatch(0, [0, 1])
        assert len(prompts.guides(build_diffusion(diffusion_config), "cpu")(batch)) == guides


def test_text_sample_with_clip_and_classifier_free_guidance(runs, tmp_path):
    text_model = save_text_run(tmp_path / "text")
    argv = ["--model_path", text_model, "--prompt", PROMPTS[0], *SAMPLE, "--guidance_scale", 3]
    run_script("text_sample", argv, tmp_path / "free")
    run_script("text_sample", [*argv, "--clip_model_path", runs["noisy"], "--clip_scale", 300], tmp_path / "both")
    assert np.abs(samples(tmp_path / "both").astype(int) - samples(tmp_path / "free")).max() > 0


@pytest.mark.parametrize("flags, words", ids=["prompt without clip", "clip without prompt", "clean as noisy",
                                              "cutouts with noisy", "other timesteps", "missing clip"], argvalues=[
    (lambda r: ["--prompt", "a"], "--prompt / --prompts_file steer samples by CLIP guidance: pass --clip_model_path"),
    (lambda r: ["--clip_model_path", r["noisy"]], "guides toward prompts: pass --prompt"),
    (lambda r: ["--clip_model_path", r["clean"], "--prompt", "a", "--clip_guidance", "noisy"],
     "is a clean CLIP .*use --clip_guidance clean"),
    (lambda r: ["--clip_model_path", r["glide"], "--prompt", "a", "--clip_cutouts", 4],
     "--clip_cutouts and --clip_augment crop x0_hat for clean CLIP guidance"),
    (lambda r: ["--clip_model_path", r["steps40"], "--prompt", "a"], "reads timesteps of a 40-step diffusion"),
    (lambda r: ["--clip_model_path", r["root"] / "nowhere.pt", "--prompt", "a"], "nowhere.pt: no such file"),
])
def test_script_refusals_come_before_anything_is_written(runs, tmp_path, flags, words):
    result = run_script("image_sample", ["--model_path", runs["unet"], *flags(runs)], tmp_path / "log", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(words, result.stderr), result.stderr
    assert not (tmp_path / "log").exists()
