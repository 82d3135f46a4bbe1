"""GLIDE's noisy CLIP (guided_diffusion/clip/, glide.create_clip_model) against numbers computed by glide-text2im's
own code (tests/fixtures/glide_clip/, from make_glide_clip_fixtures.py), and its refusals.

Each pinned case is rebuilt through glide.create_clip_model from the same config and filled with the same
weights: the tokens, both encoders' features and unit embeddings, the cond_fn gradient and the clip_guided
notebook's loop equal GLIDE's bit for bit where the kernel canary matches (within the computation's bound
elsewhere); the tokenizer gives GLIDE's ids with CLIP's real vocabulary; the released configuration has GLIDE's
keys and shapes (built on the meta device).
"""

import contextlib
import gzip
import json
from pathlib import Path

import pytest
import torch as th
import torch.nn as nn

import fixture_compare
from guided_diffusion import glide
from guided_diffusion.clip import tokenizer as clip_tokenizer
from guided_diffusion.errors import UsageError

import make_release_fixtures as fx  # noqa: E402 (tests/fixtures is importable once fixture_compare is)

PINS = Path(__file__).parent / "fixtures" / "glide_clip"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXACT = fixture_compare.comparison(PINS / "provenance.json")[0]


pinned = fixture_compare.pins_in(PINS)


def case_model(name):
    """The NoisyCLIP of pinned case `name` (glide.create_clip_model of its config), keys checked in GLIDE's
    order, weights filled as pinned."""
    meta = pinned("clip")["meta"]
    case = meta["cases"][name]
    clip = glide.create_clip_model(case["config"])
    for side in ("text", "image"):
        encoder = getattr(clip, f"{side}_encoder")
        assert list(encoder.state_dict()) == case["keys"][side], f"{side} encoder keys differ from GLIDE's"
        fx.fill_weights(encoder, seed=meta["weight_seeds"][side])
    return clip


def case_inputs(name):
    """(prompts, x [4, 3, S, S], t [4] or None) of a pinned case."""
    data = pinned("clip")
    timesteps = data["meta"]["cases"][name]["timesteps"]
    t = None if timesteps is None else th.tensor(timesteps)
    return data["meta"]["prompts"], th.from_numpy(data[f"{name}.x"]), t


@contextlib.contextmanager
def moved_like(clip, network):
    """While open, clip's two encoders' outputs are moved as fixture_compare.OutputError `network` moves its
    model's (nothing when network is not one): the bound of a computation through both encoders."""
    if not isinstance(network, fixture_compare.OutputError):
        yield
        return
    hooks = []
    for encoder in (clip.text_encoder, clip.image_encoder):
        mover = fixture_compare.OutputError(nn.Identity(), network.size, random_signs=network.generator is not None)
        hooks.append(encoder.register_forward_hook(lambda module, args, out, mover=mover: mover(out)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", list(pinned("clip")["meta"]["cases"]))
def test_embeddings_and_guidance_gradient_match_glide(name):
    clip = case_model(name)
    prompts, x, t = case_inputs(name)
    tokens = clip.tokenizer(prompts, clip.text_encoder.max_text_len)
    assert tokens.tolist() == pinned("clip")[f"{name}.tokens"].tolist()

    def compute(network):
        with moved_like(clip, network):
            with th.no_grad():
                out = dict(text_features=clip.encode_text(tokens), text_embeddings=clip.text_embeddings(prompts),
                           image_features=clip.encode_image(x, t), image_embeddings=clip.image_embeddings(x, t))
            return dict(out, cond_fn=clip.cond_fn(prompts, pinned("clip")["meta"]["grad_scale"])(x, t))

    fixture_compare.assert_pinned(compute, clip, pinned("clip"), EXACT, prefix=f"{name}.")


def test_clip_guided_notebook_loop_matches_glide():
    """GLIDE's clip_guided notebook: p_sample_loop(model, ..., cond_fn=clip_model.cond_fn(prompts, scale)) on
    the tiny text model, given GLIDE's draws; only the imports differ."""
    data = pinned("guided")
    meta = data["meta"]
    model, diffusion = glide.create_model_and_diffusion(**meta["options"])
    assert list(model.state_dict()) == meta["keys"]
    fx.fill_weights(model)
    clip = case_model(meta["clip_case"])
    kwargs = dict(tokens=th.from_numpy(data["tokens"]), mask=th.from_numpy(data["mask"]))

    def compute(network):
        draws = iter(th.from_numpy(data["draws"]))
        with moved_like(clip, network):
            cond_fn = clip.cond_fn(meta["prompts"], meta["grad_scale"])
            return {"samples": diffusion.p_sample_loop(network, data["noise"].shape, noise=th.from_numpy(data["noise"]),
                                                       model_kwargs=kwargs, cond_fn=cond_fn,
                                                       noise_fn=lambda x: next(draws))}

    fixture_compare.assert_pinned(compute, model, data, EXACT)


def test_tokenizer_gives_glides_ids_for_tricky_texts():
    pins = json.loads((PINS / "tokens.json").read_text())
    tokenizer = clip_tokenizer.get_tokenizer()
    assert (tokenizer.n_vocab, tokenizer.start_token, tokenizer.end_token) == (
        pins["n_vocab"], pins["start_token"], pins["end_token"])
    for case in pins["cases"]:
        tokens = tokenizer.encode(case["text"])
        assert tokens == case["tokens"], case["covers"]
        assert tokenizer.decode(tokens) == case["decoded"], case["covers"]
        assert list(tokenizer.padded_tokens_and_len(tokens, pins["text_ctx"])) == [case["padded"], case["len"]]


def test_tokenizer_refuses_a_damaged_vocabulary(tmp_path):
    damaged = tmp_path / "bpe.txt.gz"
    damaged.write_bytes(gzip.compress(gzip.decompress(clip_tokenizer.VOCAB_PATH.read_bytes()) + b"x y\n"))
    with pytest.raises(UsageError, match="damaged") as error:
        clip_tokenizer.Tokenizer(damaged)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("side", ["image", "text"])
def test_released_configuration_has_glides_keys_and_shapes(side):
    reference = json.loads((PINS / f"state_dict_glide_clip_{side}_enc.json").read_text())
    with th.device("meta"):
        encoder = getattr(glide.create_clip_model(), f"{side}_encoder")
    assert [[key, list(value.shape)] for key, value in encoder.state_dict().items()] == reference["keys"]
    assert sum(p.numel() for p in encoder.parameters()) == reference["num_parameters"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """(config, {"image": path, "text": path}): a tiny case's encoders saved as GLIDE saves its files."""
    folder = tmp_path_factory.mktemp("clip_files")
    clip = case_model("tiny_16px")
    files = {side: folder / f"clip_{side}_enc.pt" for side in ("image", "text")}
    for side, path in files.items():
        th.save(getattr(clip, f"{side}_encoder").state_dict(), path)
    return pinned("clip")["meta"]["cases"]["tiny_16px"]["config"], files


def test_released_files_load_strictly(tiny_files):
    config, files = tiny_files
    clip = glide.create_clip_model(config, image_enc_path=files["image"], text_enc_path=files["text"])
    for side, path in files.items():
        saved = th.load(path, weights_only=True)
        loaded = getattr(clip, f"{side}_encoder").state_dict()
        assert list(loaded) == list(saved) and all(th.equal(loaded[k], saved[k]) for k in saved)


def one_line_error(kind, match, **create):
    with pytest.raises(kind, match=match) as error:
        glide.create_clip_model(**create)
    assert "\n" not in str(error.value)


def test_missing_or_wrong_files_are_refused_in_one_line(tiny_files, tmp_path):
    config, files = tiny_files
    one_line_error(FileNotFoundError, "no such file.*clip_image_enc.pt", config=config,
                   image_enc_path=tmp_path / "absent.pt")
    one_line_error(UsageError, "it is GLIDE's clip_text_enc.pt: give it as the text encoder's file", config=config,
                   image_enc_path=files["text"])
    one_line_error(UsageError, "it is GLIDE's clip_image_enc.pt", config=config, text_enc_path=files["image"])
    one_line_error(UsageError, "does not fit the image encoder .*of another shape", config=dict(config, patch_size=8),
                   image_enc_path=files["image"])
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    one_line_error(UsageError, "is not a torch file", config=config, text_enc_path=tmp_path / "notes.pt")
    th.save([1, 2], tmp_path / "list.pt")
    one_line_error(UsageError, "holds a list, not a state dict", config=config, text_enc_path=tmp_path / "list.pt")


def test_a_config_that_is_not_glides_is_refused():
    one_line_error(TypeError, "missing n_timesteps; unknown timesteps",
                   config={**{k: v for k, v in glide.clip_model_defaults().items() if k != "n_timesteps"},
                           "timesteps": 1000})
    one_line_error(TypeError, "not a str", config="clip/config.yaml")


def test_guidance_gradient_flows_through_the_image_input_only():
    """cond_fn encodes the prompts once, when it is made: the text encoder never runs again and no weight gets
    a gradient; the gradient is w.r.t. x, non-zero in every sample, and follows the prompt."""
    clip = case_model("tiny_16px")
    prompts, x, t = case_inputs("tiny_16px")
    calls = {"text": 0, "image": 0}
    for side in calls:
        encoder = getattr(clip, f"{side}_encoder")
        encoder.register_forward_hook(lambda *_, side=side: calls.update({side: calls[side] + 1}))
    cond_fn = clip.cond_fn(prompts, 3.0)
    assert calls == {"text": 1, "image": 0}
    gradient = cond_fn(x, t, tokens=None, mask=None)  # the sampler's model_kwargs are passed and ignored
    assert calls == {"text": 1, "image": 1}
    assert gradient.shape == x.shape and not gradient.requires_grad and not x.requires_grad
    assert (gradient.flatten(1).norm(dim=1) > 0).all()
    assert all(p.grad is None for p in clip.parameters())
    assert not th.allclose(clip.cond_fn(prompts[::-1], 3.0)(x, t), gradient)
    assert th.allclose(cond_fn(x, t, grad_scale=1.0) * 3, gradient)
    with pytest.raises(ValueError, match="4 prompts and x has 2 samples"):
        cond_fn(x[:2], t[:2])


def test_encoders_refuse_inputs_they_cannot_read():
    clip = case_model("tiny_16px")
    prompts, x, t = case_inputs("tiny_16px")
    with pytest.raises(ValueError, match=r"one timestep per image, t \[4\], got none"):
        clip.encode_image(x)
    with pytest.raises(ValueError, match=r"images \[N, 3, 16, 16\], got \[4, 3, 8, 8\]"):
        clip.encode_image(x[..., :8, :8], t)
    with pytest.raises(ValueError, match="needs the end token"):
        clip.encode_text(th.zeros(1, 32, dtype=th.long))
    with pytest.raises(ValueError, match=r"tokens \[N, 32\]"):
        clip.encode_text(clip.tokenizer(prompts, 77))
    with pytest.raises(ValueError, match="without timesteps"):
        case_model("clean").encode_image(x, t)


def test_open_clip_interface():
    clip = case_model("tiny_16px")
    prompts, x, t = case_inputs("tiny_16px")
    assert clip.tokenizer(prompts[0]).shape == (1, 77)
    assert th.allclose(clip.logit_scale.exp(), th.tensor(30.0))
    for z in (clip.encode_text(clip.tokenizer(prompts, 32), normalize=True), clip.encode_image(x, t, normalize=True)):
        assert z.shape == (4, 12) and th.allclose(z.norm(dim=-1), th.ones(4))
