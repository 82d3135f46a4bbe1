"""The text-conditional UNet (guided_diffusion/text/model.py) beyond the glide-text2im fixtures: GLIDE's float16
conversion, the refused attention order, the fused kernel, the caption cache, the variants' inputs, and
classifier-free guidance with the empty caption as the unconditional branch."""

import pytest
import torch as th

from guided_diffusion import glide, samplers
from guided_diffusion.build import build_text_unet
from guided_diffusion.config import TextModelConfig
from guided_diffusion.guidance import ClassifierFreeGuidance
from guided_diffusion.text.model import TextUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(glide.model_and_diffusion_defaults(), image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
            num_head_channels=16, attention_resolutions="8", dropout=0.0, text_ctx=6, xf_width=32, xf_layers=1,
            xf_heads=2, use_fp16=False, diffusion_steps=20, timestep_respacing="5")


def built(**changes):
    """The TextUNet of TINY's model options (with flags the GLIDE face does not take), in eval mode."""
    options = {k: v for k, v in TINY.items() if k not in ("diffusion_steps", "noise_schedule", "timestep_respacing")}
    return build_text_unet(TextModelConfig(**{**options, **changes})).eval()


def tiny(**changes):
    model, diffusion = glide.create_model_and_diffusion(**dict(TINY, **changes))
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for param in model.parameters():
            param.copy_(th.randn(param.shape, generator=generator) * 0.05)
    return model.eval(), diffusion


def captions(model, texts):
    tokens, mask = zip(*(model.tokenizer.padded_tokens_and_mask(model.tokenizer.encode(t), TINY["text_ctx"])
                         for t in texts))
    return dict(tokens=th.tensor(tokens), mask=th.tensor(mask))


def test_float16_conversion_is_glides():
    model, _ = tiny()
    model.convert_to_fp16()
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["transformer.resblocks.0.attn.c_qkv.weight"] == th.float16
    assert dtypes["transformer.resblocks.0.mlp.c_fc.bias"] == th.float16
    assert dtypes["transformer_proj.weight"] == dtypes["token_embedding.weight"] == th.float16
    assert dtypes["input_blocks.3.1.encoder_kv.weight"] == th.float16  # a convolution of the torso
    # GLIDE's conversion leaves the LayerNorms, the embeddings it holds as parameters and the time embedding
    assert dtypes["transformer.resblocks.0.ln_1.weight"] == dtypes["final_ln.bias"] == th.float32
    assert dtypes["positional_embedding"] == dtypes["padding_embedding"] == dtypes["time_embed.0.weight"] == th.float32
    model.convert_to_fp32()
    assert {p.dtype for p in model.parameters()} == {th.float32}


def test_the_new_attention_order_is_refused_with_text():
    with pytest.raises(ValueError, match="legacy"):
        TextUNet(text_ctx=4, xf_width=32, xf_layers=1, xf_heads=2, xf_final_ln=True, xf_padding=True, n_vocab=10,
                 in_channels=3, image_size=16, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, use_new_attention_order=True)


def test_fused_attention_gives_the_same_outputs():
    math_model, _ = tiny()
    sdpa_model = built(attention_impl="sdpa")
    sdpa_model.load_state_dict(math_model.state_dict())
    x, t = th.randn(2, 3, 16, 16, generator=th.Generator().manual_seed(1)), th.tensor([2, 17])
    kwargs = captions(math_model, ["a red bag", ""])
    with th.no_grad():
        th.testing.assert_close(sdpa_model(x, t, **kwargs), math_model(x, t, **kwargs), rtol=1e-5, atol=1e-5)


def test_the_caption_cache_encodes_once_and_refuses_another_caption():
    model, _ = tiny(cache_text_emb=True)
    calls = []
    model.transformer.register_forward_hook(lambda *_: calls.append(1))
    x, t = th.zeros(2, 3, 16, 16), th.tensor([1, 1])
    kwargs = captions(model, ["a red bag", "a blue dress"])
    with th.no_grad():
        first = model(x, t, **kwargs)
        again = model(x, t, **kwargs)
        assert len(calls) == 1 and th.equal(first, again)
        with pytest.raises(ValueError, match="del_cache"):
            model(x, t, **captions(model, ["a green coat", "a blue dress"]))
        model.del_cache()
        model(x, t, **captions(model, ["a green coat", "a blue dress"]))
    assert len(calls) == 2


def test_the_variants_see_the_known_image_its_mask_and_the_upsampled_low_res():
    model, _ = tiny(inpaint=True, super_res=True)
    seen = []
    model.input_blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x, image = th.randn(1, 3, 16, 16), th.rand(1, 3, 16, 16)
    known = (th.rand(1, 1, 16, 16) > 0.5).float()
    low_res = th.rand(1, 3, 8, 8)
    with th.no_grad():
        model(x, th.tensor([3]), inpaint_image=image, inpaint_mask=known, low_res=low_res, **captions(model, ["a bag"]))
    inputs = seen[0]
    assert inputs.shape == (1, 10, 16, 16)
    assert th.equal(inputs[:, :3], x) and th.equal(inputs[:, 3:6], image * known) and th.equal(inputs[:, 6:7], known)
    th.testing.assert_close(inputs[:, 7:], th.nn.functional.interpolate(low_res, (16, 16), mode="bilinear"))
    with pytest.raises(ValueError, match="low_res"):
        model(x, th.tensor([3]), **captions(model, ["a bag"]))


def test_guidance_scale_1_is_plain_conditional_sampling_and_the_empty_caption_is_the_other_branch():
    model, diffusion = tiny()
    kwargs = captions(model, ["a red sandal on a blue background", "a bag"])
    empty = captions(model, [""])
    assert not empty["mask"].any() and (empty["tokens"] == model.tokenizer.end_token).all()
    unconditional = {"tokens": empty["tokens"][0], "mask": empty["mask"][0]}
    noise = th.randn(2, 3, 16, 16, generator=th.Generator().manual_seed(2))

    def run(guidance, model_kwargs=kwargs, sampler="ddpm"):
        generator = th.Generator().manual_seed(3)
        return samplers.sample(diffusion, model, (2, 3, 16, 16), sampler=sampler, guidance=guidance, noise=noise,
                               model_kwargs=model_kwargs,
                               noise_fn=lambda x: th.randn(x.shape, generator=generator))

    plain = run(())
    # the same up to the round-off of a doubled batch: W - 1 = 0 shifts nothing
    th.testing.assert_close(run(ClassifierFreeGuidance(1.0, unconditional=unconditional)), plain, rtol=0, atol=1e-5)
    # W = 0 is the unconditional model's eps: with DDIM (which reads no variance; DDPM takes the conditional
    # branch's learned variance) the same as sampling the empty caption without guidance
    empty_batch = {k: v.expand(2, -1) for k, v in empty.items()}
    th.testing.assert_close(run(ClassifierFreeGuidance(0.0, unconditional=unconditional), sampler="ddim"),
                            run((), empty_batch, sampler="ddim"), rtol=0, atol=1e-5)
    assert (run(ClassifierFreeGuidance(3.0, unconditional=unconditional)) - plain).abs().max() > 1e-3


def test_caption_dropout_trains_the_empty_caption():
    model, _ = tiny()
    dropped = built(caption_dropout_prob=0.5)
    dropped.load_state_dict(model.state_dict())
    x, t = th.randn(64, 3, 16, 16, generator=th.Generator().manual_seed(4)), th.full((64,), 7)
    kwargs = captions(model, ["a red sandal on a blue background"] * 64)
    empty = {k: v.expand(64, -1) for k, v in captions(model, [""]).items()}
    with th.no_grad():
        th.manual_seed(0)
        out = dropped.train()(x, t, **kwargs)
        conditional, unconditional = model(x, t, **kwargs), model(x, t, **empty)
    as_empty = ((out - unconditional).flatten(1).abs().amax(1) < 1e-5)
    as_caption = ((out - conditional).flatten(1).abs().amax(1) < 1e-5)
    assert bool((as_empty ^ as_caption).all()) and 16 < int(as_empty.sum()) < 48  # each row one or the other
    with th.no_grad():
        th.testing.assert_close(dropped.eval()(x, t, **kwargs), conditional)  # no dropout when sampling
    with pytest.raises(ValueError, match="xf_padding"):
        built(xf_padding=False, caption_dropout_prob=0.1)
