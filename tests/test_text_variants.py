"""Training GLIDE's inpainting and super-resolution text models with scripts/text_train.py: the random masks
(image_datasets.random_inpaint_mask, InpaintMasked: distribution, seeding by the batch's position, exact
resume), the low-resolution input, the refusals, and short runs of each variant whose checkpoints sample from
their train_config.json alone."""

import dataclasses
import importlib.util
import json
import re

import numpy as np
import pytest
import torch as th

from _train_helpers import REPO, run_script
from guided_diffusion import dist_util
from guided_diffusion.build import build_text_unet
from guided_diffusion.config import DiffusionConfig, TextModelConfig, TextTrainConfig, split_flags
from guided_diffusion.image_datasets import InpaintMasked, load_data, random_inpaint_mask
from guided_diffusion.run_flags import checkpoint_flags
from guided_diffusion.train_setup import run_config
from test_text_train import TEXT_CTX, TINY_TEXT, text_flags, write_captioned

SIZE = 16


def load_text_train():
    spec = importlib.util.spec_from_file_location("text_train", REPO / "scripts" / "text_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sampling_configs(path):
    """(TextModelConfig, DiffusionConfig) of a checkpoint from its train_config.json alone (run_flags)."""
    flags = checkpoint_flags(str(path), "model_path").flags
    names = {f.name for cls in (TextModelConfig, DiffusionConfig) for f in dataclasses.fields(cls)}
    return split_flags({k: v for k, v in flags.items() if k in names}, TextModelConfig, DiffusionConfig)


def rectangle(region):
    """Whether the True pixels of a 2-D bool array fill their bounding box (and there are some)."""
    rows, cols = np.nonzero(region)
    return len(rows) > 0 and region[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_masks_follow_the_documented_distribution():
    rng = np.random.default_rng(0)
    height, width = 24, 32
    masks = np.stack([random_inpaint_mask(rng, height, width) for _ in range(2000)])  # defaults: 0.25, 0.1, 0.75
    unknown = 1 - masks.mean(axis=(1, 2))
    whole = unknown == 1
    assert 0.21 < whole.mean() < 0.29, whole.mean()
    rounding = max(height, width) / 2 / (height * width)  # one side rounded to whole pixels, the other fitted
    drawn = unknown[~whole]
    assert drawn.min() >= 0.1 - rounding and drawn.max() <= 0.75 + rounding, (drawn.min(), drawn.max())
    assert np.histogram(drawn, bins=4, range=(0.1, 0.75))[0].min() > 250  # spread over the range
    holes = [rectangle(~m) for m in masks[~whole]]  # an unknown rectangle (inpainting) ...
    frames = [rectangle(m) for m in masks[~whole]]  # ... or a known one (outpainting)
    assert all(h or f for h, f in zip(holes, frames))
    assert 0.4 < np.mean(frames) < 0.6, np.mean(frames)
    tall = [(~m).any(axis=1).all() for m, h in zip(masks[~whole], holes) if h]  # e.g. a half of the image
    wide = [(~m).any(axis=0).all() for m, h in zip(masks[~whole], holes) if h]
    assert 0.05 < np.mean(tall) < 0.5 and 0.05 < np.mean(wide) < 0.5, (np.mean(tall), np.mean(wide))

    never = [random_inpaint_mask(rng, 8, 8, unknown_prob=0) for _ in range(200)]
    assert not any((~m).all() for m in never)
    assert all((~random_inpaint_mask(rng, 8, 8, unknown_prob=1)).all() for _ in range(20))
    half = 1 - np.mean([random_inpaint_mask(rng, 64, 64, 0, 0.5, 0.5).mean() for _ in range(50)], axis=0)
    assert abs(half - 0.5) < 0.01


def masked_stream(data_dir, seed=0, **options):
    return InpaintMasked(load_data(data_dir=str(data_dir), batch_size=2, image_size=SIZE, text_ctx=TEXT_CTX,
                                   seed=seed, num_workers=0), **options)


def read_masks(stream, n):
    masks = []
    for _ in range(n):
        images, cond = next(stream)
        assert set(cond) == {"tokens", "mask", "inpaint_image", "inpaint_mask"}
        known = cond["inpaint_mask"]
        assert known.shape == (2, 1, SIZE, SIZE) and known.dtype == images.dtype
        assert set(known.unique().tolist()) <= {0.0, 1.0}
        assert th.equal(cond["inpaint_image"], images * known)  # the erased pixels are not given
        masks.append(known)
    return th.cat(masks)


def test_inpaint_masks_are_seeded_by_the_batch_position_and_resume_exactly(tmp_path, monkeypatch):
    data = write_captioned(tmp_path / "data", images=6)  # 3 batches an epoch
    first = read_masks(masked_stream(data), 7)
    assert len({tuple(m.flatten().tolist()) for m in first}) > 7  # a new draw for each image and epoch
    resumed = masked_stream(data)
    read_masks(resumed, 2)
    fresh = masked_stream(data)
    fresh.load_state_dict(resumed.state_dict())  # the wrapper passes the stream's position through
    assert th.equal(read_masks(fresh, 5), first[4:])
    assert th.equal(read_masks(masked_stream(data), 7), first)
    assert not th.equal(read_masks(masked_stream(data, seed=1), 7), first)
    monkeypatch.setattr(dist_util, "get_rank", lambda: 1)  # another rank (of one): other masks
    assert not th.equal(read_masks(masked_stream(data), 7), first)
    known = first.sum(dim=(1, 2, 3)) / SIZE ** 2
    assert ((known == 0) | ((known > 0.25 - 1 / SIZE) & (known < 0.9 + 1 / SIZE))).all(), known
    other = read_masks(masked_stream(data, unknown_prob=1.0), 3)
    assert not other.any()


def test_each_variant_gets_its_inputs(tmp_path):
    data = write_captioned(tmp_path / "data")
    text_train = load_text_train()
    train = TextTrainConfig(batch_size=2, data_dir=str(data), num_workers=0)
    keys = {}
    for variant in ({}, {"super_res": True}, {"inpaint": True}, {"inpaint": True, "super_res": True}):
        model_config = TextModelConfig(image_size=SIZE, text_ctx=TEXT_CTX, small_size=4, **variant)
        stream = load_data(data_dir=str(data), batch_size=2, image_size=SIZE, text_ctx=TEXT_CTX, num_workers=0)
        images, cond = next(text_train.model_inputs(stream, model_config, train))
        keys[tuple(variant)] = set(cond) - {"tokens", "mask"}
        if "super_res" in variant:
            assert cond["low_res"].shape == (2, 3, 4, 4)
            blocks = images.reshape(2, 3, 4, 4, 4, 4).mean(dim=(3, 5))  # 4x4 blocks averaged: area downsampling
            assert th.allclose(cond["low_res"], blocks, atol=1e-6)
    assert keys == {(): set(), ("super_res",): {"low_res"}, ("inpaint",): {"inpaint_image", "inpaint_mask"},
                    ("inpaint", "super_res"): {"low_res", "inpaint_image", "inpaint_mask"}}


@pytest.mark.parametrize("flags, expected", [
    (dict(super_res=True, small_size=6), r"--small_size 6 with --image_size 16: .* smaller than the image size and "
                                         r"divide it"),
    (dict(super_res=True), r"--small_size 64 with --image_size 16"),
    (dict(super_res=True, small_size=16), r"--small_size 16 with --image_size 16"),
    (dict(inpaint=True, inpaint_unknown_prob=1.5), r"--inpaint_unknown_prob 1.5: a probability, in \[0, 1\]"),
    (dict(inpaint=True, inpaint_min_area=0.8), r"--inpaint_min_area 0.8, --inpaint_max_area 0.75: .* 0 < min <= max"),
    (dict(inpaint=True, inpaint_min_area=0), r"--inpaint_min_area 0.0, --inpaint_max_area 0.75"),
], ids=["small_not_dividing", "small_default_too_big", "small_equal", "unknown_prob", "min_over_max", "min_zero"])
def test_bad_variant_flags_fail_in_one_line_and_write_nothing(tmp_path, flags, expected):
    data = write_captioned(tmp_path / "data")
    result = run_script("text_train", text_flags(data, max_steps=1, **flags), tmp_path / "log", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch("text_train.py: error: " + expected + ".*", lines[0]), lines[0]
    assert not (tmp_path / "log").exists()


VARIANTS = {"super_res": dict(super_res=True, small_size=8), "inpaint": dict(inpaint=True),
            "both": dict(inpaint=True, super_res=True, small_size=4)}


def variant_flags(data, variant, **more):
    return text_flags(data, **dict(VARIANTS[variant], **more))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{variant: (its data, the log dir of 4 steps with checkpoint sets at 2 and 4)}."""
    root = tmp_path_factory.mktemp("variants")
    data = write_captioned(root / "data", images=6)  # 3 batches an epoch: a resume at step 2 is mid-epoch
    runs = {}
    for variant in VARIANTS:
        run_script("text_train", variant_flags(data, variant, max_steps=4), root / variant)
        runs[variant] = data, root / variant
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_and_records_its_flags(trained, variant):
    _, log_dir = trained[variant]
    saved = json.loads((log_dir / "train_config.json").read_text())
    for name, value in VARIANTS[variant].items():
        assert saved["model_flags"][name] == value and saved["train_flags"][name] == value
    assert {"inpaint", "super_res", "small_size"} <= set(saved["model_flags"])  # what --model_path alone needs
    assert saved["train_flags"]["inpaint_unknown_prob"] == 0.25
    weights = th.load(log_dir / "ema_0.9_000004.pt", weights_only=True)
    extra = {"super_res": 3, "inpaint": 4, "both": 7}[variant]  # low_res 3; known image 3 and mask 1
    assert weights["input_blocks.0.0.weight"].shape[1] == 3 + extra
    model_config, diffusion_config = sampling_configs(log_dir / "model000004.pt")
    assert (model_config.inpaint, model_config.super_res) == ("inpaint" in variant or variant == "both",
                                                              "super_res" in variant or variant == "both")
    build_text_unet(model_config, diffusion_config.learn_sigma).load_state_dict(weights)  # strict


@pytest.mark.slow
def test_the_inpainting_upsampler_resumes_exactly(trained, tmp_path):
    data, straight = trained["both"]
    run_script("text_train", variant_flags(data, "both", max_steps=2), tmp_path / "split")
    resume = variant_flags(data, "both", max_steps=4, resume_checkpoint=tmp_path / "split" / "model000002.pt")
    run_script("text_train", resume, tmp_path / "split")
    for name in ["model000004.pt", "ema_0.9_000004.pt"]:
        first = th.load(straight / name, weights_only=True)
        second = th.load(tmp_path / "split" / name, weights_only=True)
        assert all(th.equal(first[k], second[k]) for k in first), name
    changed = variant_flags(data, "both", max_steps=4, small_size=8,
                            resume_checkpoint=tmp_path / "split" / "model000004.pt")
    refused = run_script("text_train", changed, tmp_path / "split", check=False)
    assert refused.returncode == 2 and "--small_size 8 contradicts the checkpoint (4" in refused.stderr


def save_base(run_dir, image_size, **variant):
    """An untrained tiny base text model of image_size (or the variant's: inpaint=True, ...) with its
    train_config.json (as text_train.py writes it)."""
    flags = dict(TINY_TEXT, image_size=image_size, attention_resolutions=str(image_size // 2), **variant)
    model_config, diffusion_config, train = split_flags(dict(flags, learn_sigma=True), TextModelConfig,
                                                        DiffusionConfig, TextTrainConfig)
    run_dir.mkdir()
    th.save(build_text_unet(model_config).state_dict(), run_dir / "model000000.pt")
    (run_dir / "train_config.json").write_text(json.dumps(run_config((model_config, diffusion_config), train, [])))
    return run_dir / "model000000.pt"


@pytest.mark.slow
def test_trained_upsamplers_upsample_the_base_samples_of_their_small_size(trained, tmp_path):
    def argv(base_size, variant):
        upsampler = trained[variant][1] / "ema_0.9_000004.pt"
        return ["--model_path", save_base(tmp_path / f"base{base_size}_{variant}", base_size), "--prompt", "photo 1",
                "--upsample_model_path", upsampler, "--upsample_respacing", 2, "--timestep_respacing", 2,
                "--num_samples", 2, "--batch_size", 2, "--seed", 0]

    for variant, small_size in [("super_res", 8), ("both", 4)]:  # both: no known image, all unknown
        run_script("text_sample", argv(small_size, variant), tmp_path / variant)
        with np.load(tmp_path / variant / "samples_2x16x16x3.npz") as samples:
            assert samples["arr_0"].shape == (2, SIZE, SIZE, 3)
    refused = run_script("text_sample", argv(4, "super_res"), tmp_path / "log", check=False)
    assert refused.returncode == 2 and re.search(r"upsamples 8 px images \(its small_size\) but the base model "
                                                 r"samples 4 px ones", refused.stderr), refused.stderr[-2000:]


@pytest.mark.slow
def test_a_trained_inpainting_model_reads_the_known_pixels(trained):
    log_dir = trained["inpaint"][1]
    model_config, diffusion_config = sampling_configs(log_dir / "model000004.pt")
    model = build_text_unet(model_config, diffusion_config.learn_sigma)
    model.load_state_dict(th.load(log_dir / "model000004.pt", weights_only=True))
    model.eval()
    gen = th.Generator().manual_seed(0)
    x, image = th.randn(2, 3, SIZE, SIZE, generator=gen), th.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1
    known = th.ones(2, 1, SIZE, SIZE)
    known[..., 4:12, 4:12] = 0
    tokens, mask = th.zeros(2, TEXT_CTX, dtype=th.long), th.ones(2, TEXT_CTX, dtype=th.bool)
    with th.no_grad():
        out = model(x, th.tensor([5, 5]), tokens=tokens, mask=mask, inpaint_image=image * known, inpaint_mask=known)
        blank = model(x, th.tensor([5, 5]), tokens=tokens, mask=mask)
    assert out.shape == (2, 6, SIZE, SIZE) and not th.allclose(out, blank)
