"""DALL-E 2's decoder (guided_diffusion/unclip/, scripts/unclip_*.py): the embedding's projection reaches every
attention block and the timestep embedding, its dropout, classifier-free guidance with the zero embedding, the slerp,
the embedding cache and its refusals, and a tiny end-to-end run (train, then sample from --model_path alone)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch as th
from PIL import Image

from _train_helpers import run_script
from guided_diffusion import samplers
from guided_diffusion.build import build_diffusion, build_unclip_unet
from guided_diffusion.clip.checkpoint import CLIP_FLAGS, build_clip
from guided_diffusion.config import ClipModelConfig, DiffusionConfig, UnCLIPModelConfig, as_flags
from guided_diffusion.errors import UsageError
from guided_diffusion.guidance import ClassifierFreeGuidance
from guided_diffusion.unclip import embeddings as emb
from guided_diffusion.unclip.data import EmbeddedImages
from guided_diffusion.unclip.model import ClipEmbeddingProjection
from guided_diffusion.unclip.sampling import decoder_guidance, interpolation, slerp, variations

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

D, K, W, STEPS = 16, 4, 32, 20
TINY_DECODER = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                    num_head_channels=-1, num_heads=2, xf_width=W, xf_layers=1, xf_heads=2, text_ctx=6,
                    dropout=0.0, clip_emb_tokens=K)
TINY_CLIP = dict(clip_image_size=8, clip_patch_size=4, clip_width=D, clip_head_channels=8, clip_image_heads=2,
                 clip_image_layers=1, clip_text_heads=2, clip_text_layers=1, clip_text_ctx=8)


def decoder(caption=False, dropout=0.0, seed=0, **flags):
    th.manual_seed(seed)
    config = UnCLIPModelConfig(**dict(TINY_DECODER, **flags), clip_emb_dim=D, clip_caption=caption,
                               clip_emb_dropout_prob=dropout, caption_dropout_prob=0.0)
    model = build_unclip_unet(config, learn_sigma=True).eval()
    with th.no_grad():  # the output layer and every proj_out start at zero: give them (and all) some weight
        for param in model.parameters():
            param.add_(0.05 * th.randn_like(param))
    return model


def tiny_clip(seed=0):
    th.manual_seed(seed)
    return build_clip(ClipModelConfig(**TINY_CLIP, clip_noise_aware=True), diffusion_steps=STEPS).eval()


def unit_rows(n, seed):
    e = th.randn(n, D, generator=th.Generator().manual_seed(seed))
    return e / e.norm(dim=1, keepdim=True)


def contexts_seen(model, run):
    """The encoder_out shapes every attention block received during run()."""
    seen, hooks = [], []
    for module in model.modules():
        if hasattr(module, "encoder_kv"):
            hooks.append(module.encoder_kv.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape)))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("caption", [False, True])
def test_the_k_tokens_reach_every_attention_block_and_the_embedding_moves_the_output(caption):
    model = decoder(caption)
    x, t = th.randn(2, 3, 8, 8), th.tensor([3, 11])
    kwargs = {}
    if caption:
        kwargs = dict(tokens=th.randint(0, 100, (2, 6)), mask=th.ones(2, 6, dtype=th.bool))
    e1, e2 = unit_rows(2, 0), unit_rows(2, 1)
    with th.no_grad():
        seen = contexts_seen(model, lambda: model(x, t, clip_emb=e1, **kwargs))
        out1, out2 = model(x, t, clip_emb=e1, **kwargs), model(x, t, clip_emb=e2, **kwargs)
    attention_blocks = sum(hasattr(m, "encoder_kv") for m in model.modules())
    assert attention_blocks >= 3 and len(seen) == attention_blocks
    assert set(seen) == {th.Size([2, W, (6 if caption else 0) + K])}
    assert (out1 - out2).abs().max() > 1e-4
    # forward is exactly: timestep embedding + time term, context = [caption encoding;] K tokens; each part matters
    (time1, tokens1), (time2, tokens2) = model.clip_proj(e1), model.clip_proj(e2)
    with th.no_grad():
        emb, context = model._embed(t), (lambda tokens: tokens)
        if caption:
            text = model.encode_text(kwargs["tokens"], kwargs["mask"])
            emb, context = emb + text["xf_proj"], (lambda tokens: th.cat([text["xf_out"], tokens], dim=2))
        rebuilt = model._denoise(x, emb + time1, context(tokens1))
        other_tokens = model._denoise(x, emb + time1, context(tokens2))
        other_time = model._denoise(x, emb + time2, context(tokens1))
    assert th.allclose(rebuilt, out1, atol=1e-6)
    assert (other_tokens - out1).abs().max() > 1e-4 and (other_time - out1).abs().max() > 1e-4


def test_projection_shapes():
    proj = ClipEmbeddingProjection(D, 128, W, K)
    time, tokens = proj(unit_rows(3, 0))
    assert time.shape == (3, 128) and tokens.shape == (3, W, K)
    zero_time, zero_tokens = proj(th.zeros(1, D))
    assert th.equal(zero_time[0], proj.to_time.bias) and th.equal(zero_tokens[0], proj.to_tokens.bias.view(W, K))


def test_dropout_one_in_training_ignores_the_embedding_and_equals_the_zero_embedding():
    model = decoder(dropout=1.0).train()
    x, t = th.randn(2, 3, 8, 8), th.tensor([3, 11])
    with th.no_grad():
        out1, out2 = model(x, t, clip_emb=unit_rows(2, 0)), model(x, t, clip_emb=unit_rows(2, 1))
        zero = model.eval()(x, t, clip_emb=th.zeros(2, D))
    assert th.equal(out1, out2) and th.allclose(out1, zero, atol=1e-6)
    half = decoder(dropout=0.5).train()
    th.manual_seed(0)
    dropped = [(half._clip_terms(unit_rows(64, 2), x.new_zeros(64, 1))[0] == half.clip_proj.to_time.bias).all(1)
               for _ in range(4)]
    share = th.cat(dropped).float().mean().item()
    assert 0.35 < share < 0.65


def sample(model, guidance, clip_emb):
    diffusion = build_diffusion(DiffusionConfig(learn_sigma=True, diffusion_steps=STEPS, noise_schedule="cosine",
                                                timestep_respacing="ddim4"))
    noise = th.randn(2, 3, 8, 8, generator=th.Generator().manual_seed(5))
    return samplers.sample(diffusion, model, (2, 3, 8, 8), sampler="ddim", noise=noise, guidance=guidance,
                           model_kwargs={"clip_emb": clip_emb}, progress=False)


def test_zero_embedding_is_the_unconditional_branch_and_w1_is_plain_conditional():
    model = decoder(seed=1)
    e = unit_rows(2, 3)
    with th.no_grad():
        plain = sample(model, (), e)
        unconditional = sample(model, (), th.zeros(2, D))
        w0 = sample(model, decoder_guidance(0.0, model), e)
        w1 = sample(model, (ClassifierFreeGuidance(1.0, unconditional=decoder_guidance(2.0, model)[0].unconditional),),
                    e)
        w3 = sample(model, decoder_guidance(3.0, model), e)
    assert th.allclose(w0, unconditional, atol=1e-5)
    assert th.allclose(w1, plain, atol=1e-5)
    assert (w3 - plain).abs().max() > 1e-3
    assert decoder_guidance(1.0, model) == ()


def test_slerp_ends_unit_norm_and_constant_angular_speed():
    a, b = unit_rows(2, 7)
    points = interpolation(a, b, 5)
    assert th.allclose(points[0], a, atol=1e-6) and th.allclose(points[-1], b, atol=1e-6)
    assert th.allclose(points.norm(dim=1), th.ones(5), atol=1e-6)
    w = th.arccos(a @ b)
    angles = th.arccos((points @ a).clamp(-1, 1))
    assert th.allclose(angles, th.linspace(0, 1, 5) * w, atol=1e-4)
    assert th.allclose(slerp(a, a, [0.0, 0.3, 1.0]), a.expand(3, D))


def test_variations_keep_the_inputs_order():
    e = unit_rows(3, 8)
    assert th.equal(variations(e, 2), e[[0, 0, 1, 1, 2, 2]])


def write_images(folder, n, size=8, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    return folder


def test_cache_round_trip_and_refusals(tmp_path, monkeypatch):
    data = write_images(tmp_path / "data", 5)
    clip, path = tiny_clip(), str(tmp_path / "cache.npz")
    table = emb.cached_embeddings(path, clip, str(data), batch_size=2)
    names = sorted(table)
    assert names == [f"img_{i}.png" for i in range(5)]
    direct = emb.embed_files(clip, [str(data / name) for name in names], batch_size=5)
    rows = np.stack([table[name] for name in names])
    assert rows.dtype == np.float32 and np.allclose(rows, direct, atol=1e-5)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    with th.no_grad():  # t = 0 for a noise-aware CLIP, the image as it reads it
        image = emb.read_clip_images([str(data / "img_3.png")], 8)
        expected = clip.encode_image(image, th.zeros(1, dtype=th.long), normalize=True)[0]
    assert np.allclose(table["img_3.png"], expected.numpy(), atol=1e-5)
    with np.load(path) as cache:
        assert cache["embeddings"].shape == (5, D) and str(cache["fingerprint"]) == emb.encoder_fingerprint(clip)

    monkeypatch.setattr(emb, "embed_files", lambda *args, **kwargs: pytest.fail("recomputed an existing cache"))
    again = emb.cached_embeddings(path, clip, str(data))
    assert all(np.array_equal(again[name], table[name]) for name in names)
    with pytest.raises(UsageError, match=r"computed by another CLIP image encoder.*delete .*cache.npz"):
        emb.cached_embeddings(path, tiny_clip(seed=1), str(data))
    write_images(tmp_path / "data_more", 6)
    with pytest.raises(UsageError, match=r"stale: 1 image\(s\) added since \(e.g. img_5.png\)"):
        emb.cached_embeddings(path, clip, str(tmp_path / "data_more"))
    (data / "img_0.png").unlink()
    with pytest.raises(UsageError, match=r"stale: 1 image\(s\) gone since \(e.g. img_0.png\)"):
        emb.cached_embeddings(path, clip, str(data))


def test_each_training_image_gets_its_own_embedding_even_past_an_unreadable_file(tmp_path):
    from guided_diffusion.image_datasets import ImageDataset, list_image_files

    data = write_images(tmp_path / "data", 4)
    (data / "img_1.png").write_bytes(b"not a png")
    files = list_image_files(str(data))
    table = {f"img_{i}.png": np.full(D, float(i), dtype=np.float32) for i in range(4)}
    dataset = EmbeddedImages(ImageDataset(8, files, random_flip=False), table, str(data))
    for index, expected in [(0, 0), (1, 2), (2, 2), (3, 3)]:
        image, cond, _ = dataset[(0, index)]
        assert cond["clip_emb"][0] == expected
        read = emb.read_clip_images([str(data / f"img_{expected}.png")], 8)[0].numpy()
        assert np.allclose(image, read, atol=1e-6)


def write_clip_run(folder, seed=0):
    """A tiny noise-aware CLIP saved as clip_train.py saves one: model000000.pt and its run's train_config.json."""
    folder.mkdir(parents=True)
    th.save(tiny_clip(seed).state_dict(), folder / "model000000.pt")
    flags = dict(as_flags(ClipModelConfig(**TINY_CLIP)), diffusion_steps=STEPS)
    assert set(CLIP_FLAGS) <= set(flags)
    (folder / "train_config.json").write_text(json.dumps({"train_flags": flags, "model_flags": flags}))
    return folder / "model000000.pt"


def test_train_then_sample_variations_and_an_interpolation_from_model_path_alone(tmp_path):
    data = write_images(tmp_path / "data", 4)
    clip_path = write_clip_run(tmp_path / "clip")
    run_dir = tmp_path / "run"
    flags = dict(TINY_DECODER, data_dir=data, clip_model_path=clip_path, batch_size=2, max_steps=2,
                 save_interval=2, diffusion_steps=STEPS, noise_schedule="cosine", num_workers=0, lr=1e-3)
    run_script("unclip_train", flags, run_dir)
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["train_flags"]["clip_emb_dim"] == D and saved["train_flags"]["clip_model_path"] == str(clip_path)
    assert saved["unclip"]["clip_fingerprint"] == emb.encoder_fingerprint(tiny_clip())
    assert (run_dir / "clip_embeddings.npz").exists()
    model_path = run_dir / "model000002.pt"

    common = dict(model_path=model_path, sampler="ddim", timestep_respacing="ddim3", guidance_scale=2.0, seed=0,
                  batch_size=3)
    run_script("unclip_sample", dict(common, image_variations=data, variations_per_image=2), tmp_path / "var")
    images = np.load(tmp_path / "var" / "samples_8x8x8x3.npz")["arr_0"]
    assert images.shape == (8, 8, 8, 3) and (tmp_path / "var" / "variations_grid.png").exists()
    grid = np.asarray(Image.open(tmp_path / "var" / "variations_grid.png"))
    assert grid.shape[:2] == (4 * 10 + 2, 3 * 10 + 2)  # a row per input: the input, then its 2 variations
    assert not np.array_equal(images[0], images[1])  # variations of one input: different noise

    a = str(data / "img_0.png")
    argv = [*sum(([f"--{k}", str(v)] for k, v in common.items()), []), "--interpolate", a, a, "--steps", "3"]
    run_script("unclip_sample", argv, tmp_path / "same")
    same = np.load(tmp_path / "same" / "samples_3x8x8x3.npz")["arr_0"]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[1], same[2])  # one noise, one embedding
    argv[argv.index(a) + 1] = str(data / "img_1.png")
    run_script("unclip_sample", argv, tmp_path / "interp")
    moved = np.load(tmp_path / "interp" / "samples_3x8x8x3.npz")["arr_0"]
    assert np.array_equal(moved[0], same[0])  # a = 0 is A's embedding, from the same noise
    assert (tmp_path / "interp" / "interpolation_grid.png").exists()

    other = write_clip_run(tmp_path / "other_clip", seed=1)
    refused = run_script("unclip_sample", dict(common, image_variations=data, clip_model_path=other),
                         tmp_path / "refused", check=False)
    assert refused.returncode != 0
    assert re.search(r"--clip_model_path .* is not the CLIP the decoder was trained with", refused.stderr)
    assert not (tmp_path / "refused" / "log.txt").exists()
    copy = tmp_path / "copy_clip"
    shutil.copytree(tmp_path / "clip", copy)
    out = run_script("unclip_sample", dict(common, image_variations=data, variations_per_image=1,
                                           clip_model_path=copy / "model000000.pt"), tmp_path / "copied")
    assert "the same image encoder (fingerprints match)" in out.stdout + out.stderr

    # --prompt: the zero embedding steered by CLIP guidance, by the decoder's (noise-aware) CLIP or any other
    prompted = dict(common, guidance_scale=1.0, num_samples=3, clip_scale=50.0)
    argv = [*sum(([f"--{k}", str(v)] for k, v in prompted.items()), []), "--prompt", "a red coat", "--prompt", "a dress"]
    out = run_script("unclip_sample", argv, tmp_path / "prompted")
    steered = np.load(tmp_path / "prompted" / "samples_3x8x8x3.npz")["arr_0"]
    assert (tmp_path / "prompted" / "prompts.txt").read_text() == "a red coat\na dress\na red coat\n"
    assert "noisy CLIP guidance" in out.stdout + out.stderr and (tmp_path / "prompted" / "prompts_grid.png").exists()
    run_script("unclip_sample", [*argv, "--clip_scale", "0"], tmp_path / "unsteered")
    plain = np.load(tmp_path / "unsteered" / "samples_3x8x8x3.npz")["arr_0"]
    assert not np.array_equal(steered, plain)  # the guide moved the zero-embedding samples
    refused = run_script("unclip_sample", [*argv, "--guidance_scale", "3"], tmp_path / "both", check=False)
    assert refused.returncode == 2 and "--guidance_scale 3.0 guides toward an embedding" in refused.stderr
    assert not (tmp_path / "both").exists()


def test_sampling_inputs_are_refused_in_one_line(tmp_path):
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("unclip_sample", REPO_SCRIPTS / "unclip_sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = write_images(tmp_path / "data", 2)
    a = str(data / "img_0.png")

    def refused(match, interpolate=None, **run):
        options = dict(image_variations="", variations_per_image=2, steps=3)
        with pytest.raises(UsageError, match=match):
            script.input_files(SimpleNamespace(**dict(options, **run)), interpolate)

    refused("give one of --image_variations FOLDER, --interpolate A B or --prompt TEXT")
    refused("give one of", [a, a], image_variations=str(data))
    refused("--interpolate: .*nope.png is not a file", [a, str(tmp_path / "nope.png")])
    refused("--steps 1: an interpolation needs both ends, pass --steps 2", [a, a], steps=1)
    refused("--image_variations .* is not a folder of images", image_variations=str(tmp_path / "empty"))
    refused("--variations_per_image 0: pass 1 or more", image_variations=str(data), variations_per_image=0)
    assert script.input_files(SimpleNamespace(image_variations=str(data), variations_per_image=1, steps=3), None) == [
        str(data / "img_0.png"), str(data / "img_1.png")]


@pytest.mark.parametrize("caption", [False, True])
def test_sdpa_checkpointing_and_fp16_keep_working(caption):
    x, t, e = th.randn(2, 3, 8, 8), th.tensor([3, 11]), unit_rows(2, 4)
    kwargs = dict(tokens=th.randint(0, 100, (2, 6)), mask=th.ones(2, 6, dtype=th.bool)) if caption else {}
    model = decoder(caption)
    with th.no_grad():
        reference = model(x, t, clip_emb=e, **kwargs)
    for name, value in (("attention_impl", "sdpa"), ("use_checkpoint", True)):
        other = decoder(caption, **{name: value}).train()
        out = other(x, t, clip_emb=e, **kwargs)
        out.square().mean().backward()
        assert th.allclose(out, reference, atol=1e-5) and other.clip_proj.to_tokens.weight.grad.abs().sum() > 0
    model.convert_to_fp16()
    assert model.clip_proj.to_time.weight.dtype == th.float32  # the projection stays float32
    with th.no_grad():
        half = model(x, t, clip_emb=e, **kwargs)
    assert half.dtype == th.float32 and (half - reference).abs().max() < 0.05


def test_captioned_decoder_trains_and_samples_and_a_wrong_width_is_refused(tmp_path):
    data = write_images(tmp_path / "data", 2)
    for i in range(2):
        (data / f"img_{i}.txt").write_text(f"a photo {i}\n")
    clip_path = write_clip_run(tmp_path / "clip")
    flags = dict(TINY_DECODER, data_dir=data, clip_model_path=clip_path, batch_size=2, max_steps=1, save_interval=1,
                 diffusion_steps=STEPS, noise_schedule="cosine", num_workers=0, clip_caption=True,
                 caption_dropout_prob=0.5)
    wrong = run_script("unclip_train", dict(flags, clip_emb_dim=7), tmp_path / "wrong", check=False)
    assert wrong.returncode != 0 and "--clip_emb_dim 7 but --clip_model_path" in wrong.stderr
    assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").iterdir())
    run_script("unclip_train", flags, tmp_path / "run")
    run_script("unclip_sample", dict(model_path=tmp_path / "run" / "model000001.pt", image_variations=data,
                                     variations_per_image=1, sampler="ddim", timestep_respacing="ddim2",
                                     guidance_scale=3.0, seed=0), tmp_path / "samples")
    assert np.load(tmp_path / "samples" / "samples_2x8x8x3.npz")["arr_0"].shape == (2, 8, 8, 3)
