"""Training a CLIP (clip/train.py, clip/checkpoint.py, scripts/clip_train.py): the contrastive loss against closed
forms and a hand computation, the features gathered over ranks, what the noise-aware encoder reads (x_t and t, the
captions clean) and where the gradient goes, the loss falling on a fixed batch, the learned logit scale clamped and
saved, load_clip's round trip and refusals, the script's exact resume and its refusals of bad folders."""

import json
import math
import re
from pathlib import Path

import pytest
import torch as th
from PIL import Image

from _train_helpers import read_progress, run_script
from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion
from guided_diffusion.clip import train as clip_train
from guided_diffusion.clip.checkpoint import build_clip, is_trained_clip, load_clip
from guided_diffusion.clip.tokenizer import get_tokenizer
from guided_diffusion.clip.train import ClipTrainLoop, clip_logits, clip_loss, gather_features
from guided_diffusion.config import ClipModelConfig, ClipTrainConfig, DiffusionConfig
from guided_diffusion.errors import UsageError
from guided_diffusion.glide import clip_model_defaults, create_clip_model
from guided_diffusion.train_setup import run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CLIP = dict(clip_image_size=16, clip_patch_size=4, clip_width=32, clip_head_channels=16, clip_image_heads=2,
                 clip_image_layers=1, clip_text_heads=2, clip_text_layers=1, clip_text_ctx=12)
STEPS = 20  # the diffusion's T in these tests


def tiny_clip(noise_aware=True, seed=0):
    th.manual_seed(seed)
    return build_clip(ClipModelConfig(**TINY_CLIP, clip_noise_aware=noise_aware), STEPS)


def write_captioned(folder, images=6):
    """images random 16x16 RGB PNGs (seeded), image i with the captions "a photo of thing i", "thing number i"."""
    folder.mkdir(parents=True)
    gen = th.Generator().manual_seed(0)
    for i in range(images):
        pixels = (th.rand(16, 16, 3, generator=gen) * 255).to(th.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text(f"a photo of thing {i}\nthing number {i}\n")
    return folder


class FixedBatch:
    """The same (images [4, 3, 16, 16], {"clip_tokens"}) every step: four captions of four distinct images."""

    def __init__(self, model):
        gen = th.Generator().manual_seed(1)
        self.images = th.rand(4, 3, 16, 16, generator=gen) * 2 - 1
        self.tokens = model.tokenizer([f"a photo of thing {i}" for i in range(4)], TINY_CLIP["clip_text_ctx"])

    def __iter__(self):
        return self

    def __next__(self):
        return self.images, {"clip_tokens": self.tokens}


def tiny_loop(log_dir, model, **fields):
    logger.configure(dir=str(log_dir), format_strs=["csv"])
    diffusion_config = DiffusionConfig(diffusion_steps=STEPS, noise_schedule="cosine")
    config = ClipTrainConfig(**dict(dict(batch_size=4, lr=3e-3, log_interval=1, save_interval=1000), **fields))
    model_config = ClipModelConfig(**TINY_CLIP, clip_noise_aware=model.noise_aware)
    return ClipTrainLoop(model=model, diffusion=build_diffusion(diffusion_config), data=FixedBatch(model),
                         config=config, run_config=run_config((model_config, diffusion_config), config, []))


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("n, scale", [(2, 1.0), (4, 1 / 0.07), (8, 100.0)])
def test_orthonormal_pairs_give_the_closed_form(n, scale):
    """z_img_i = z_txt_i = e_i: logits s on the diagonal, 0 elsewhere, so CE = log(1 + (n - 1) e^-s) both ways."""
    features = th.eye(n, 2 * n)[:, :n].repeat(1, 2) * 3.0  # any length: the loss reads unit features
    losses = clip_loss(clip_logits(features, features, th.tensor(scale)))
    assert th.allclose(losses, th.full((n,), math.log1p((n - 1) * math.exp(-scale))), rtol=1e-5, atol=1e-6)


def test_identical_features_give_log_n_and_the_loss_is_the_hand_computed_symmetric_cross_entropy():
    same = clip_loss(clip_logits(th.ones(5, 3), th.ones(5, 3), th.tensor(7.0)))
    assert th.allclose(same, th.full((5,), math.log(5)))
    gen = th.Generator().manual_seed(0)
    image, text, log_s = th.randn(3, 4, generator=gen), th.randn(3, 4, generator=gen), 0.7
    u = [[float(x) / math.sqrt(sum(float(y) ** 2 for y in row)) for x in row] for row in image.tolist()]
    v = [[float(x) / math.sqrt(sum(float(y) ** 2 for y in row)) for x in row] for row in text.tolist()]
    logit = [[math.exp(log_s) * sum(a * b for a, b in zip(ui, vj)) for vj in v] for ui in u]
    expected = []
    for i in range(3):
        row = -logit[i][i] + math.log(sum(math.exp(x) for x in logit[i]))
        column = -logit[i][i] + math.log(sum(math.exp(logit[k][i]) for k in range(3)))
        expected.append((row + column) / 2)
    scale = th.tensor(math.exp(log_s))
    got = clip_loss(clip_logits(image, text, scale))
    assert th.allclose(got, th.tensor(expected), atol=1e-6), (got, expected)
    # a rank's own rows of the gathered logits are those entries of the whole loss
    assert th.allclose(clip_loss(clip_logits(image, text, scale), th.tensor([2])), got[2:])


def test_gathered_features_keep_the_gradient_of_this_rank_only(monkeypatch):
    """Rank 1 of 2: rank 0's features arrive as copies (no gradient), rank 1's slot is its own tensor."""
    theirs = th.full((2, 3), 5.0)

    def all_gather(parts, tensor):
        assert not tensor.requires_grad
        parts[0].copy_(theirs)
        parts[1].copy_(tensor)

    monkeypatch.setattr(dist_util, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist_util, "get_rank", lambda: 1)
    monkeypatch.setattr(clip_train.dist, "all_gather", all_gather)
    mine = th.randn(2, 3, requires_grad=True)
    gathered = gather_features(mine)
    assert th.equal(gathered[:2], theirs) and th.equal(gathered[2:], mine.detach())
    (gathered * th.arange(12.0).reshape(4, 3)).sum().backward()
    assert th.equal(mine.grad, th.arange(6.0, 12.0).reshape(2, 3))


def test_the_data_gives_each_image_one_of_its_own_captions_in_clip_tokens(tmp_path):
    """clip_training_data: the caption line drawn for an image, as CLIP's tokenizer pads it at --clip_text_ctx."""
    data_dir = write_captioned(tmp_path / "data", images=4)
    for i in range(4):  # flat grey, value 60 i: the image's index is read back from its mean
        Image.new("RGB", (16, 16), (60 * i,) * 3).save(data_dir / f"img_{i}.png")
    logger.configure(dir=str(tmp_path / "log"), format_strs=["log"])
    train = ClipTrainConfig(data_dir=str(data_dir), batch_size=2, num_workers=0)
    stream = clip_train.clip_training_data(train, ClipModelConfig(**TINY_CLIP))
    tokenizer, seen = get_tokenizer(), set()
    for _ in range(6):
        images, cond = next(stream)
        assert set(cond) == {"clip_tokens"} and cond["clip_tokens"].shape == (2, TINY_CLIP["clip_text_ctx"])
        for image, tokens in zip(images, cond["clip_tokens"]):
            index = round(((image.mean().item() + 1) * 127.5) / 60)
            captions = (data_dir / f"img_{index}.txt").read_text().splitlines()
            assert any(th.equal(tokens, tokenizer(line, TINY_CLIP["clip_text_ctx"])[0]) for line in captions)
            seen.add((index, tokens[1].item()))
    assert len(seen) > 4 and hasattr(stream, "state_dict")  # both lines of several images


# ----------------------------------------------------------------------------- the model and the loop


def test_the_trained_logit_scale_is_a_saved_parameter_and_glides_stays_a_fixed_buffer():
    model = tiny_clip()
    assert isinstance(model.logit_scale, th.nn.Parameter) and "logit_scale" in model.state_dict()
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    assert (model.image_size, model.noise_aware, model.n_timesteps) == (16, True, STEPS)
    clean = tiny_clip(noise_aware=False)
    assert (clean.noise_aware, clean.n_timesteps) == (False, 0)
    glide = create_clip_model(dict(clip_model_defaults(), n_xf_blocks_text=1,
                                   n_xf_blocks_image=1, n_head_image=1, n_head_text=1, n_embd=8, n_vocab=49408))
    assert "logit_scale" not in glide.state_dict() and "logit_scale" not in dict(glide.named_parameters())
    assert glide.logit_scale.exp().item() == pytest.approx(100.0)
    assert (glide.image_size, glide.noise_aware) == (64, True)


def recorder(model):
    """Record (image on 0..255, t) of each call of model's image encoder and the tokens of its text encoder."""
    seen = {"image": [], "text": []}
    model.image_encoder.register_forward_hook(lambda m, args, out: seen["image"].append(args))
    model.text_encoder.register_forward_hook(lambda m, args, out: seen["text"].append(args[0]))
    return seen


def test_the_noise_aware_encoder_reads_x_t_of_the_batch_at_its_t_and_the_captions_stay_clean(tmp_path):
    model = tiny_clip()
    loop = tiny_loop(tmp_path, model)
    seen = recorder(model)
    data = FixedBatch(model)
    th.manual_seed(3)
    loop.forward_backward(*next(data))
    (image, t), = seen["image"]
    x_t = image / 127.5 - 1
    assert t.shape == (4,) and t.dtype == th.long and 0 <= t.min() and t.max() < STEPS
    abar = th.from_numpy(loop.diffusion.alphas_cumprod).float()[t][:, None, None, None]
    eps = (x_t - abar.sqrt() * data.images) / (1 - abar).sqrt()  # the noise q_sample drew, if x_t is q_sample's
    assert eps.mean().abs() < 0.15 and (eps.std() - 1).abs() < 0.15, (eps.mean(), eps.std())
    assert th.equal(seen["text"][0], data.tokens)
    # only the drawn timesteps' embeddings learn; every other parameter gets a gradient
    w_t = model.image_encoder.blocks["input"].w_t.grad
    assert set(th.nonzero(w_t.abs().sum(dim=1)).flatten().tolist()) == set(t.tolist())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in model.named_parameters()
               if name not in ("image_encoder.blocks.input.w_t", "text_encoder.blocks.input.w_voc"))
    used = set(data.tokens.flatten().tolist())
    rows = set(th.nonzero(model.text_encoder.blocks["input"].w_voc.grad.abs().sum(dim=1)).flatten().tolist())
    assert rows <= used and 49407 in rows


def test_a_clean_clip_reads_the_clean_images_without_t(tmp_path):
    model = tiny_clip(noise_aware=False)
    loop = tiny_loop(tmp_path, model)
    seen = recorder(model)
    data = FixedBatch(model)
    loop.forward_backward(*next(data))
    (image, t), = seen["image"]
    assert t is None and th.allclose(image, (data.images + 1) * 127.5)


@pytest.mark.parametrize("noise_aware", [False, True])
def test_the_loss_falls_on_a_fixed_batch_and_load_clip_gives_the_trained_embeddings(tmp_path, noise_aware,
                                                                                    monkeypatch):
    """25 steps on four pairs: from about chance (log 4 = 1.39) to under a third of it. A noise-aware CLIP at t = 0
    (x_t = q_sample(x_0, 0)): at random t a tiny one needs far more steps, as it must first learn to read t."""
    model = tiny_clip(noise_aware)
    loop = tiny_loop(tmp_path, model, lr=1e-3, max_steps=25, save_interval=25)
    if noise_aware:
        monkeypatch.setattr(loop.schedule_sampler, "sample", lambda n, device: (th.zeros(n, dtype=th.long),
                                                                                th.ones(n)))
    loop.run_loop()
    rows = read_progress(tmp_path)
    first, last = rows[0]["loss"], sum(row["loss"] for row in rows[-5:]) / 5
    assert first > 1.2 and last < 0.3 * math.log(4), (first, last)
    assert rows[-1]["acc@1"] == 1.0
    assert ("loss_q0" in rows[-1]) is noise_aware

    path = tmp_path / "model000025.pt"
    assert is_trained_clip(path) and not is_trained_clip(tmp_path / "opt000025.pt.missing")
    loaded = load_clip(path)
    assert not loaded.training and loaded.noise_aware is noise_aware
    assert loaded.logit_scale.item() == model.logit_scale.item() != pytest.approx(math.log(1 / 0.07))
    data, t = FixedBatch(model), th.arange(4) * 5 if noise_aware else None
    model.eval()
    with th.no_grad():
        assert th.equal(loaded.encode_image(data.images, t), model.encode_image(data.images, t))
        assert th.equal(loaded.encode_text(data.tokens), model.encode_text(data.tokens))


@pytest.mark.parametrize("start, clamped", [(7.0, math.log(100)), (-1.0, 0.0)])
def test_the_learned_scale_is_clamped_to_1_100_after_each_step(tmp_path, start, clamped):
    model = tiny_clip(noise_aware=False)
    with th.no_grad():
        model.logit_scale.fill_(start)
    tiny_loop(tmp_path, model, lr=1e-6, max_steps=1).run_loop()
    assert model.logit_scale.item() == pytest.approx(clamped)


# ----------------------------------------------------------------------------- refusals


def test_load_clip_refuses_a_checkpoint_without_its_runs_flags(tmp_path):
    model = tiny_clip()
    (tmp_path / "alone").mkdir()
    th.save(model.state_dict(), tmp_path / "alone" / "model000001.pt")
    with pytest.raises(UsageError, match=r"no train_config\.json beside it tells its flags: give a checkpoint of "
                                         r"clip_train\.py in its run's folder"):
        load_clip(tmp_path / "alone" / "model000001.pt")
    (tmp_path / "alone" / "train_config.json").write_text(json.dumps({"train_flags": {"image_size": 16}}))
    with pytest.raises(UsageError, match=r"another model's run, not clip_train\.py's"):
        load_clip(tmp_path / "alone" / "model000001.pt")
    assert not is_trained_clip(tmp_path / "alone" / "model000001.pt")
    with pytest.raises(UsageError, match="no such file"):
        load_clip(tmp_path / "none.pt")
    with pytest.raises(UsageError, match="--clip_patch_size 5 does not divide --clip_image_size 16"):
        build_clip(ClipModelConfig(**dict(TINY_CLIP, clip_patch_size=5)))


def script_flags(data_dir, **more):
    return dict(TINY_CLIP, data_dir=data_dir, diffusion_steps=STEPS, noise_schedule="cosine", batch_size=2,
                log_interval=1, save_interval=2,
                num_workers=0, **more)


@pytest.mark.parametrize("case", ["no_captions", "one_missing", "microbatch", "vocab"])
def test_the_script_refuses_bad_runs_in_one_line_and_writes_nothing(tmp_path, case):
    data = write_captioned(tmp_path / "data")
    flags = script_flags(data, max_steps=1)
    if case == "no_captions":
        for path in data.glob("*.txt"):
            path.unlink()
        expected = r"no caption files: .*img_0\.txt"
    elif case == "one_missing":
        (data / "img_3.txt").unlink()
        expected = r"'.*img_3\.png' has no caption file: write its captions, one per line, to '.*img_3\.txt'"
    elif case == "microbatch":
        flags["microbatch"] = 1
        expected = r"--microbatch 1: the contrastive loss compares the whole batch .* leave --microbatch -1"
    else:
        flags["clip_n_vocab"] = 1000
        expected = r"--clip_n_vocab 1000 has fewer rows than CLIP's tokenizer .* pass --clip_n_vocab 49408"
    result = run_script("clip_train", flags, tmp_path / "log", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch("clip_train.py: error: .*" + expected + ".*", lines[0]), lines[0]
    assert not (tmp_path / "log").exists()


def test_the_script_resumes_exactly_and_its_checkpoint_loads_from_the_path_alone(tmp_path):
    data = write_captioned(tmp_path / "data", images=6)  # 3 batches an epoch: the resume is mid-epoch
    run_script("clip_train", script_flags(data, max_steps=4), tmp_path / "straight")
    run_script("clip_train", script_flags(data, max_steps=2), tmp_path / "split")
    resume = script_flags(data, max_steps=4, resume_checkpoint=tmp_path / "split" / "model000002.pt")
    run_script("clip_train", resume, tmp_path / "split")
    straight = th.load(tmp_path / "straight" / "model000004.pt", weights_only=True)
    split = th.load(tmp_path / "split" / "model000004.pt", weights_only=True)
    assert straight.keys() == split.keys() and "logit_scale" in straight
    assert all(th.equal(straight[k], split[k]) for k in straight)
    saved = json.loads((tmp_path / "straight" / "train_config.json").read_text())
    assert {k: saved["model_flags"][k] for k in TINY_CLIP} == TINY_CLIP
    logged = set().union(*read_progress(tmp_path / "straight"))
    assert {"loss", "acc@1", "logit_scale"} <= logged and {"loss_q0", "loss_q3", "acc@1_q1"} & logged
    model = load_clip(tmp_path / "straight" / "model000004.pt")
    assert model.n_timesteps == STEPS and model.text_encoder.max_text_len == TINY_CLIP["clip_text_ctx"]
    assert model.logit_scale.item() == straight["logit_scale"].item()

    # resumed with another model flag: refused in one line naming it and the run's flags, nothing written
    wrong = dict(resume, clip_text_layers=2, max_steps=6)
    result = run_script("clip_train", wrong, tmp_path / "wrong", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert re.search(r"was trained with --clip_text_layers 1, this run has 2: repeat that run's flags \(.*"
                     r"--clip_text_layers 1 .*--diffusion_steps 20 --noise_schedule cosine\)", lines[0]), lines[0]
    assert not (tmp_path / "wrong").exists()
    # fine-tuned with another width: refused the same way (the schedule may change, T may not)
    tune = script_flags(data, max_steps=1, clip_width=64, init_checkpoint=tmp_path / "split" / "model000004.pt")
    result = run_script("clip_train", tune, tmp_path / "tune", check=False)
    assert result.returncode == 2 and re.search(r"--init_checkpoint .*model000004\.pt was trained with --clip_width "
                                                r"32, this run has 64: .*--diffusion_steps 20\)$", result.stderr)
    assert not (tmp_path / "tune").exists()
    # a CLIP given where a diffusion model belongs: named, with where it goes
    result = run_script("image_sample", dict(model_path=tmp_path / "straight" / "model000004.pt"), tmp_path / "s",
                        check=False)
    assert result.returncode == 2 and re.search(r"model000004\.pt holds a CLIP model \(clip_train.py's; used by the "
                                                r"sampling scripts' --clip_model_path\), not a diffusion model",
                                                result.stderr), result.stderr[-2000:]


def test_a_clean_clip_starts_a_noise_aware_one_that_reads_every_t_as_the_clean_one_reads_images(tmp_path):
    data = write_captioned(tmp_path / "data")
    run_script("clip_train", script_flags(data, max_steps=1, clip_noise_aware=False), tmp_path / "clean")
    start = tmp_path / "clean" / "model000001.pt"
    # lr 0: the fine-tuned model after a step is the one the clean CLIP's weights started
    tuned = run_script("clip_train", script_flags(data, max_steps=1, lr=0.0, init_checkpoint=start), tmp_path / "noisy")
    assert "a clean CLIP starts this noise-aware one" in tuned.stdout + tuned.stderr
    clean, noisy = load_clip(start), load_clip(tmp_path / "noisy" / "model000001.pt")
    assert not clean.noise_aware and noisy.noise_aware and noisy.n_timesteps == STEPS
    images = th.rand(3, 3, 16, 16, generator=th.Generator().manual_seed(0)) * 2 - 1
    with th.no_grad():
        expected = clean.encode_image(images)
        for t in (0, 7, STEPS - 1):
            assert th.allclose(noisy.encode_image(images, th.full((3,), t)), expected, atol=1e-6)
    # the other way, a noise-aware CLIP for a clean one, is refused as any other flag change
    back = script_flags(data, max_steps=1, clip_noise_aware=False, init_checkpoint=tmp_path / "noisy" / "model000001.pt")
    result = run_script("clip_train", back, tmp_path / "back", check=False)
    assert result.returncode == 2 and "was trained with --clip_noise_aware True, this run has False" in result.stderr


DDP_CHECK = '''
import sys
sys.path.insert(0, {tests!r})
import torch as th
from guided_diffusion import dist_util
import test_clip_train as T

dist_util.setup_dist()
rank, model = dist_util.get_rank(), T.tiny_clip(noise_aware=False)
full = T.FixedBatch(model)
loop = T.tiny_loop({log_dir!r} + str(rank), model)
loop.forward_backward(full.images[2 * rank:2 * rank + 2], {{"clip_tokens": full.tokens[2 * rank:2 * rank + 2]}})
if rank == 0:
    ref = T.tiny_clip(noise_aware=False)
    T.clip_loss(T.clip_logits(*ref(full.images, full.tokens))).mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert th.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), (name, p.grad.abs().max(), q.grad.abs().max())
    print("same gradients")
'''


def test_two_ranks_with_half_a_batch_each_get_the_whole_batchs_gradient(tmp_path, run_python):
    """mpiexec -n 2: the gathered features, the loss times the world size and the scale's shared gradient make
    DDP's mean the one-process gradient of the 4 pairs, the learned scale's included."""
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK.format(tests=str(Path(__file__).parent), log_dir=str(tmp_path / "log")))
    assert "same gradients" in run_python([script], ranks=2).stdout
