"""OpenAI-layout ViT CLIPs (guided_diffusion/clip/openai_vit.py) against numbers computed by open_clip's own
CLIP (tests/fixtures/open_clip/, from make_open_clip_fixtures.py), and their refusals.

The pinned tiny open_clip model's state dict is drawn again here from its seed (its sha256 checked), loaded
strictly with the architecture read from its shapes, and gives open_clip's features, unit embeddings and
similarity gradient within 1e-5 of their largest value, for QuickGELU and for exact GELU; open_clip's own
configurations (ViT-B-32 to ViT-bigG-14) are read back from their shapes alone (built on the meta device).
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

import fixture_compare  # noqa: F401 (puts tests/fixtures on the path)
from guided_diffusion.clip import openai_vit
from guided_diffusion.clip.openai_vit import (OpenAIClip, architecture_of, is_openai_clip_state,
                                              load_openai_clip_file, openai_clip_from_state)
from guided_diffusion.errors import UsageError

from make_open_clip_fixtures import ACTIVATIONS, seeded_state, state_sha256  # noqa: E402

PINS = Path(__file__).parent / "fixtures" / "open_clip"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
RTOL = 1e-5  # of the largest pinned value: float32 kernels of another torch build round differently
pinned = fixture_compare.pins_in(PINS)


@pytest.fixture(scope="module")
def state():
    """The pinned model's state dict in open_clip's key order, drawn from its seed."""
    meta = pinned("clip")["meta"]
    return seeded_state(dict(meta["shapes"]), meta["weight_seed"])


@pytest.fixture(scope="module")
def model(state):
    """The pinned state loaded with OpenAI's default activation (QuickGELU)."""
    return openai_clip_from_state(state)


def inputs():
    """(images [5, 3, 32, 32] in [-1, 1], open_clip's tokens [5, 77])."""
    data = pinned("clip")
    return th.from_numpy(data["images"]), th.from_numpy(data["tokens"])


def outputs(clip):
    """The pinned quantities computed by clip on the pinned inputs."""
    images, tokens = inputs()
    x = images.clone().requires_grad_(True)
    image_embeddings = clip.encode_image(x, normalize=True)
    text_embeddings = clip.encode_text(tokens, normalize=True)
    probe = pinned("clip")["meta"]["probe_text"]
    similarity = clip.logit_scale.exp() * (image_embeddings * text_embeddings[probe]).sum()
    grad = th.autograd.grad(similarity, x)[0]
    with th.no_grad():
        return dict(image_features=clip.encode_image(images), text_features=clip.encode_text(tokens),
                    image_embeddings=image_embeddings, text_embeddings=text_embeddings,
                    logit_scale=clip.logit_scale, grad=grad)


def assert_close(values, prefix):
    """Each of values {key: tensor} within RTOL of the largest pinned value of f"{prefix}.{key}"."""
    for key, value in values.items():
        desired = pinned("clip")[f"{prefix}.{key}"]
        error = np.abs(value.detach().numpy() - desired).max()
        assert error <= RTOL * np.abs(desired).max(), f"{prefix}.{key}: off by {error:.3g}"


def test_state_is_the_pinned_one(state):
    assert state_sha256(state) == pinned("clip")["meta"]["state_sha256"]
    assert is_openai_clip_state(state)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_outputs_match_open_clip(state, activation):
    clip = openai_clip_from_state(state, quickgelu=ACTIVATIONS[activation])
    assert_close(outputs(clip), activation)


def test_the_activation_choice_matters(state, model):
    """quickgelu=None is QuickGELU; the other activation on the same weights gives the other pinned numbers,
    far from these."""
    assert model.quickgelu is True
    assert_close(outputs(model), "quickgelu")
    gelu = outputs(openai_clip_from_state(state, quickgelu=False))
    for key in ("image_features", "text_features", "grad"):
        desired = pinned("clip")[f"quickgelu.{key}"]
        assert np.abs(gelu[key].numpy() - desired).max() > 100 * RTOL * np.abs(desired).max(), key


def test_tokenizer_matches_open_clip_but_for_the_special_tokens_text(model):
    """open_clip's tokenizer names its specials <start_of_text>, <end_of_text>: "<|endoftext|>" written in a text
    is plain text there, but the end token in OpenAI's CLIP (and GLIDE's), which model.tokenizer follows."""
    texts, (_, tokens) = pinned("clip")["meta"]["texts"], inputs()
    ours = model.tokenizer(texts, model.context_length)
    assert th.equal(ours[:-1], tokens[:-1])
    assert texts[-1] == "a cat <|endoftext|> on a mat"
    assert ours[-1, :5].tolist() == [49406, 320, 2368, 49407, 525] and tokens[-1, 3] != 49407


@pytest.mark.parametrize("name", json.loads((PINS / "architectures.json").read_text()))
def test_architecture_from_shapes(name):
    """open_clip's configuration `name`: heads, sizes and every key's shape read back from the shapes."""
    pin = json.loads((PINS / "architectures.json").read_text())[name]
    vision, text = pin["config"]["vision_cfg"], pin["config"]["text_cfg"]
    shapes = {}
    for key, shape in pin["shapes"].items():  # the first block of each tower stands for all of them
        layers = vision["layers"] if key.startswith("visual.") else text["layers"]
        keys = [key.replace(".0.", f".{i}.", 1) for i in range(layers)] if ".resblocks.0." in key else [key]
        shapes.update({k: shape for k in keys})
    assert len(shapes) == pin["n_keys"]
    arch = architecture_of({key: th.empty(shape, device="meta") for key, shape in shapes.items()})
    assert (arch.vision_heads, arch.text_heads) == (pin["vision_heads"], pin["text_heads"])
    assert (arch.embed_dim, arch.image_size, arch.patch_size) == (pin["config"]["embed_dim"], vision["image_size"],
                                                                  vision["patch_size"])
    assert (arch.vision_layers, arch.text_layers, arch.context_length) == (vision["layers"], text["layers"], 77)
    with th.device("meta"):
        clip = OpenAIClip(arch)
    assert {key: list(value.shape) for key, value in clip.state_dict().items()} == shapes
    assert sum(p.numel() for p in clip.parameters()) == pin["n_params"]


def test_openai_files_entries_half_precision_and_training_checkpoints(state, model):
    """OpenAI's hyperparameter entries are ignored, float16 weights load as float32, and open_clip's training
    checkpoint ({"state_dict": {"module." + key: ...}}) reads as its state dict."""
    _, tokens = inputs()
    half = {key: value.half() for key, value in state.items()}
    half.update(input_resolution=th.tensor(32), context_length=th.tensor(77), vocab_size=th.tensor(49408))
    clip = openai_clip_from_state(half)
    assert clip.logit_scale.dtype == th.float32
    assert th.equal(clip.visual.proj, state["visual.proj"].half().float())
    checkpoint = {"epoch": 3, "state_dict": {f"module.{key}": value for key, value in state.items()}}
    assert is_openai_clip_state(checkpoint)
    with th.no_grad():
        assert th.equal(openai_clip_from_state(checkpoint).encode_text(tokens), model.encode_text(tokens))


def test_heads_can_be_given(state, model):
    """heads=(vision, text) overrides the widths' rule; the weights are the same, the split into heads not."""
    images, _ = inputs()
    with th.no_grad():
        one_head = openai_clip_from_state(state, heads=(1, 1)).encode_image(images)
        assert (one_head - model.encode_image(images)).abs().max() > 1e-3
    with pytest.raises(UsageError, match="width 128 does not split into 3 heads"):
        openai_clip_from_state(state, heads=(3, 2))
    with pytest.raises(UsageError, match="quickgelu must be None, True or False, got 'False'"):
        openai_clip_from_state(state, quickgelu="False")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_files_torch_safetensors_and_torchscript(tmp_path, state, model):
    images, tokens = inputs()
    with th.no_grad():
        expected = model(images, tokens)[0]
    th.save(state, tmp_path / "open_clip_pytorch_model.bin")
    from safetensors.torch import save_file
    save_file(state, tmp_path / "open_clip_model.safetensors")
    # OpenAI's archives: a TorchScript module whose state_dict() holds the weights and hyperparameters (here two
    # of them: context_length is the model's property).
    scripted = openai_clip_from_state(state)
    for key, value in dict(input_resolution=32, vocab_size=49408).items():
        scripted.register_buffer(key, th.tensor(value))
    th.jit.save(th.jit.trace(scripted, (images, tokens), check_trace=False), tmp_path / "ViT-tiny.pt")
    for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "ViT-tiny.pt"):
        clip = load_openai_clip_file(tmp_path / name)
        with th.no_grad():
            assert th.equal(clip(images, tokens)[0], expected), name


def test_refusals(tmp_path, state):
    """Each bad file is refused in one line naming it and the fix."""
    garbage, listed, other, resnet, reshaped, scaled, vocab = (tmp_path / f"{n}.pt" for n in (
        "garbage", "listed", "other", "resnet", "reshaped", "scaled", "vocab"))
    garbage.write_text("not a checkpoint")
    th.save([th.zeros(3)], listed)
    th.save({"input_blocks.0.0.weight": th.zeros(4, 3, 3, 3)}, other)
    th.save({**{k: v for k, v in state.items() if not k.startswith("visual.")},
             "visual.layer1.0.conv1.weight": th.zeros(4, 4, 1, 1)}, resnet)
    th.save({**state, "text_projection": state["text_projection"].T.contiguous()}, reshaped)
    th.save({**state, "visual.transformer.resblocks.0.ls_1.gamma": th.ones(128)}, scaled)  # open_clip's LayerScale
    th.save({**state, "token_embedding.weight": th.zeros(32000, 128)}, vocab)
    cases = [(tmp_path / "missing.pt", "no such file: give the local path of a CLIP checkpoint"),
             (garbage, "is not a torch file of tensors (UnpicklingError): expected OpenAI's or open_clip's"),
             (listed, "holds a list, not a state dict"),
             (other, "not a CLIP of OpenAI's layout (no token_embedding.weight): give OpenAI's or open_clip's ViT"),
             (resnet, "ResNet image tower (visual.layer1...): only ViT CLIPs are supported; give a ViT checkpoint"),
             (reshaped, "does not fit the architecture read from its shapes (2 of another shape, first text_projection "
                        "[16, 128] vs [128, 128]): give OpenAI's or open_clip's plain ViT CLIP weights"),
             (scaled, "(1 unexpected, first visual.transformer.resblocks.0.ls_1.gamma)"),
             (vocab, "32000 token rows, not CLIP's 49408: its tokenizer is not CLIP's BPE")]
    for path, words in cases:
        with pytest.raises(UsageError) as error:
            load_openai_clip_file(path)
        assert str(path) in str(error.value) and words in str(error.value) and "\n" not in str(error.value), path


def test_interface(model, state):
    images, tokens = inputs()
    assert (model.image_size, model.context_length, model.noise_aware) == (32, 77, False)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.logit_scale.item() == state["logit_scale"].item()
    with th.no_grad():
        z = model.encode_image(images, normalize=True)
        assert th.allclose(z.norm(dim=-1), th.ones(len(z)))
        assert th.allclose(z, F.normalize(model.encode_image(images), dim=-1))
        texts = ["a photo of a corgi", "a red sandal"]
        assert th.equal(model.text_embeddings(texts), model.encode_text(model.tokenizer(texts, 77), normalize=True))
    with pytest.raises(UsageError, match=r"takes images \[N, 3, 32, 32\], got \[5, 3, 16, 16\]: resize"):
        model.encode_image(images[:, :, :16, :16])
    with pytest.raises(UsageError, match="clean, not noise-aware: call encode_image without t"):
        model.encode_image(images, th.zeros(5, dtype=th.long))
    with pytest.raises(UsageError, match=r"reads tokens \[N, 77\], got \[5, 32\]: pad texts"):
        model.encode_text(tokens[:, :32])


def test_loading_draws_nothing_from_the_global_rng(state):
    before = th.random.get_rng_state()
    openai_clip_from_state(state)
    assert th.equal(th.random.get_rng_state(), before)


def test_torchscript_detection_reads_the_archive(tmp_path):
    """A zip that is no TorchScript archive is read by torch.load (and refused there), not by torch.jit.load."""
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fake/data.txt", "x")
    assert not openai_vit._is_torchscript(path)
    with pytest.raises(UsageError, match="is not a torch file of tensors"):
        load_openai_clip_file(path)
