"""This project's text models against numbers computed by glide-text2im's own code (tests/fixtures/glide/).

tests/fixtures/make_glide_fixtures.py built tiny configurations of GLIDE's four model classes with its
model_creation, filled their weights with fill_weights and pinned their text encodings and outputs, and the
classifier-free-guided DDPM loop of its text2im notebook with every random draw. Here each case is rebuilt
with guided_diffusion.glide (the face) from the same options and weights; the released configurations'
keys and shapes are checked against tests/fixtures/reference/glide (built on the meta device: no memory).
"""

import json
from pathlib import Path

import pytest
import torch as th

import fixture_compare
from guided_diffusion import glide, samplers
from guided_diffusion.guidance import ClassifierFreeGuidance

import make_release_fixtures as fx  # noqa: E402 (tests/fixtures is importable once fixture_compare is)

FIXTURES = Path(__file__).parent / "fixtures"
GLIDE = FIXTURES / "glide"

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXACT, WHY = fixture_compare.comparison(GLIDE / "provenance.json")
RELEASED = {"base": glide.model_and_diffusion_defaults(), "upsample": glide.model_and_diffusion_defaults_upsampler()}
RELEASED.update({f"{name}_inpaint": dict(options, inpaint=True) for name, options in RELEASED.items()})


pinned = fixture_compare.pins_in(GLIDE)


def glide_case(options, keys):
    """The model of GLIDE's options (via the face), its state-dict keys checked in order, filled as pinned."""
    model, diffusion = glide.create_model_and_diffusion(**options)
    assert list(model.state_dict()) == keys, "state-dict keys or their order differ from glide-text2im's"
    fx.fill_weights(model, keys)
    return model, diffusion


@pytest.mark.parametrize("name", list(fixture_compare.load_pins(GLIDE / "models.npz")["meta"]["cases"]))
def test_text_encoding_and_output_match_glide(name):
    data = pinned("models")
    case = data["meta"]["cases"][name]
    options = case["options"]
    model, _ = glide_case(options, case["keys"])
    assert model.tokenizer.n_vocab == data["meta"]["n_vocab"]
    tokens, mask = th.from_numpy(data["tokens"]), th.from_numpy(data["mask"])
    kwargs = dict(tokens=tokens, mask=mask)
    if options["inpaint"]:
        kwargs.update(inpaint_image=th.from_numpy(data["inpaint_image"]),
                      inpaint_mask=th.from_numpy(data["inpaint_mask"]))
    if options["super_res"]:
        kwargs["low_res"] = th.from_numpy(data["low_res"])
    x, t = th.from_numpy(data["x"]), th.from_numpy(data["t"])

    def compute(m):
        # the caption's encoding (as the attention blocks and the time embedding read it; no network error
        # bound of its own: the comparison floor), and the whole forward
        return {**model.encode_text(tokens, mask), "out": m(x, t, **kwargs)}

    with th.no_grad():
        fixture_compare.assert_pinned(compute, model, data, EXACT, prefix=f"{name}.")


def test_tokens_of_the_pinned_prompts_are_glides():
    data = pinned("models")
    model, _ = glide.create_model_and_diffusion(**data["meta"]["cases"]["base"]["options"])
    padded = [model.tokenizer.padded_tokens_and_mask(model.tokenizer.encode(p), 8) for p in data["meta"]["prompts"]]
    assert [p[0] for p in padded] == data["tokens"].tolist() and [p[1] for p in padded] == data["mask"].tolist()


def test_classifier_free_guided_ddpm_loop_matches_glides_notebook():
    """The notebook's loop runs [x; x] with [prompt; empty caption] and keeps the first half; here the guide
    API does the same with the empty caption as the unconditional branch, given the notebook's draws (the
    first half of each). The guide shifts eps by a score (eps - sqrt(1 - alpha_bar) * gradient) where the
    notebook mixes eps directly: the same number up to float round-off, so the loop is compared within
    the computation's bound, never bit for bit."""
    data = pinned("sampling")
    meta = data["meta"]
    model, diffusion = glide_case(meta["options"], pinned("models")["meta"]["cases"]["base"]["keys"])
    assert [int(i) for i in diffusion.timestep_map] == meta["timestep_map"]
    batch, models = meta["batch"], pinned("models")
    tokenizer = model.tokenizer
    empty_tokens, empty_mask = tokenizer.padded_tokens_and_mask([], meta["options"]["text_ctx"])
    guide = ClassifierFreeGuidance(meta["guidance_scale"], unconditional={"tokens": th.tensor(empty_tokens),
                                                                          "mask": th.tensor(empty_mask)})
    kwargs = dict(tokens=th.from_numpy(models["tokens"][:batch]), mask=th.from_numpy(models["mask"][:batch]))

    def compute(m):
        draws = iter(th.from_numpy(data["draws"][:, :batch]))
        sample = samplers.sample(diffusion, m, (batch, 3, 16, 16), sampler="ddpm", guidance=guide,
                                 noise=th.from_numpy(data["noise"][:batch]), model_kwargs=kwargs,
                                 noise_fn=lambda x: next(draws))
        return {"samples": sample}

    fixture_compare.assert_pinned(compute, model, data, exact=False)


def test_fast27_is_glides():
    kept = glide.create_gaussian_diffusion(1000, "linear", "fast27").timestep_map
    assert sorted(kept) == pinned("sampling")["meta"]["fast27"]


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configurations_have_glides_keys_and_shapes(name):
    reference = json.loads((FIXTURES / "reference" / "glide" / f"state_dict_glide_{name}.json").read_text())
    options = dict(RELEASED[name], use_fp16=False)
    assert {k: v for k, v in reference["options"].items()} == options
    with th.device("meta"):
        model, _ = glide.create_model_and_diffusion(**options)
    shapes = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert shapes == reference["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]
