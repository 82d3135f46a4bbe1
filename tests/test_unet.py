"""The networks' outputs checked against explicit computations of the paper's blocks."""

import math

import pytest
import torch as th
import torch.nn.functional as F

from guided_diffusion import script_util as su
from guided_diffusion.nn import timestep_embedding
from guided_diffusion.unet import AttentionBlock, EncoderUNetModel, QKVAttention, ResBlock, SuperResModel, UNetModel

TINY = dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="8",
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
)


def randomize(module, seed=0):
    """Give every parameter random values (zero-initialised layers would hide bugs)."""
    g = th.Generator().manual_seed(seed)
    with th.no_grad():
        for p in module.parameters():
            p.copy_(th.randn(p.shape, generator=g) * 0.2)
    return module


def explicit_attention(x, block, heads, order):
    """x + proj_out(softmax(q^T k / sqrt(d)) v), written out head by head in float64."""
    b, c, hh, ww = x.shape
    xf = x.reshape(b, c, -1).double()
    normed = F.group_norm(xf, 32, block.norm.weight.double(), block.norm.bias.double(), eps=1e-5)
    qkv = th.einsum("oc,bct->bot", block.qkv.weight[:, :, 0].double(), normed) + block.qkv.bias.double()[:, None]
    d = c // heads
    out = []
    for head in range(heads):
        if order == "legacy":  # [head][q|k|v][d]
            base = head * 3 * d
            q, k, v = (qkv[:, base + i * d : base + (i + 1) * d] for i in range(3))
        else:  # [q|k|v][head][d]
            q, k, v = (qkv[:, i * c + head * d : i * c + (head + 1) * d] for i in range(3))
        w = th.softmax(th.einsum("bdt,bds->bts", q, k) / math.sqrt(d), dim=-1)
        out.append(th.einsum("bts,bds->bdt", w, v))
    a = th.cat(out, dim=1)
    h = th.einsum("oc,bct->bot", block.proj_out.weight[:, :, 0].double(), a) + block.proj_out.bias.double()[:, None]
    return (xf + h).reshape(b, c, hh, ww)


@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_attention_block_matches_explicit_form(new_order, impl):
    th.manual_seed(0)
    block = randomize(AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order, attention_impl=impl))
    x = th.randn(2, 64, 4, 4)
    expected = explicit_attention(x, block, heads=4, order="new" if new_order else "legacy")
    assert th.allclose(block(x).double(), expected, atol=1e-5)


def test_attention_orders_differ():
    """The orders change no key, so a wrong use_new_attention_order must at least change outputs."""
    legacy, new = QKVAttention(4, "legacy"), QKVAttention(4, "new")
    qkv = th.randn(2, 3 * 64, 10)
    assert not th.allclose(legacy(qkv), new(qkv), atol=1e-3)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_sdpa_equals_math(order):
    qkv = th.randn(3, 3 * 4 * 32, 50)
    assert th.allclose(QKVAttention(4, order, "sdpa")(qkv), QKVAttention(4, order, "math")(qkv), atol=1e-5)


def test_resblock_adagn_matches_explicit_form():
    block = randomize(ResBlock(32, 64, dropout=0.0, out_channels=64, use_scale_shift_norm=True))
    x, emb = th.randn(2, 32, 8, 8), th.randn(2, 64)
    norm = lambda t, layer: F.group_norm(t, 32, layer.weight, layer.bias)  # noqa: E731
    h = F.conv2d(F.silu(norm(x, block.in_layers[0])), block.in_layers[2].weight, block.in_layers[2].bias, padding=1)
    scale, shift = (F.silu(emb) @ block.emb_layers[1].weight.T + block.emb_layers[1].bias).chunk(2, dim=1)
    h = norm(h, block.out_layers[0]) * (1 + scale[..., None, None]) + shift[..., None, None]
    h = F.conv2d(F.silu(h), block.out_layers[3].weight, block.out_layers[3].bias, padding=1)
    skip = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias)
    assert th.allclose(block(x, emb), skip + h, atol=1e-5)


def test_resblock_rescale_divides_by_sqrt2():
    plain = randomize(ResBlock(32, 64, dropout=0.0, use_scale_shift_norm=False))
    rescaled = ResBlock(32, 64, dropout=0.0, use_scale_shift_norm=False, rescale=True)
    rescaled.load_state_dict(plain.state_dict())
    x, emb = th.randn(2, 32, 8, 8), th.randn(2, 64)
    assert th.allclose(rescaled(x, emb) * math.sqrt(2), plain(x, emb), atol=1e-5)


EMBED_T = th.cat([th.arange(0, 4000, 3).float(), th.tensor([0.25, 0.5, 1.5, 999.75, 3999.75])])


@pytest.mark.parametrize("max_period", [10000, 10])
@pytest.mark.parametrize("dim", [2, 3, 8, 33, 128, 257])
def test_timestep_embedding_is_the_float64_closed_form_up_to_float32_rounding(dim, max_period):
    """[cos(t f_j), sin(t f_j)] with f_j = P^(-j / k), k = dim // 2, (+ a zero column for odd dim) in
    float64. The float32 error bound: the exponent j * ln(P) / k is rounded (3 roundings, each <= u|.|),
    exp adds <= 2u, t * f one more u, so |angle error| <= u |angle| (3 ln P + 3); cos/sin add <= 2u."""
    u, k = 2.0 ** -24, dim // 2
    angles = EMBED_T.double()[:, None] * th.exp(-math.log(max_period) * th.arange(k, dtype=th.float64) / k)
    pad = th.zeros(len(EMBED_T), dim - 2 * k, dtype=th.float64)
    expected = th.cat([angles.cos(), angles.sin(), pad], dim=1)
    bound = u * (2 + angles.abs() * (3 * math.log(max_period) + 3))
    emb = timestep_embedding(EMBED_T, dim, max_period)
    assert emb.dtype == th.float32 and emb.shape == (len(EMBED_T), dim)
    assert ((emb.double() - expected).abs() <= th.cat([bound, bound, pad], dim=1)).all()


@pytest.mark.parametrize("dim", [2, 3, 8, 33, 128, 192, 257, 1024])
def test_timestep_embedding_follows_its_float_order_bit_for_bit(dim):
    """The documented float32 order (the release's, so released models see the same features):
    f_j = exp((j * -ln P) / k), then t * f_j; cosines, sines, and a zero column for odd dim."""
    k = dim // 2
    exponents = th.arange(k, dtype=th.float32) * -math.log(10000)
    freqs = th.exp(exponents / k)
    angles = EMBED_T[:, None] * freqs[None, :]
    expected = th.cat([th.cos(angles), th.sin(angles), th.zeros(len(EMBED_T), dim % 2)], dim=1)
    assert th.equal(timestep_embedding(EMBED_T, dim), expected)
    assert th.equal(timestep_embedding(EMBED_T.long(), dim), timestep_embedding(EMBED_T.long().float(), dim))


def tiny_unet(**overrides):
    flags = dict(TINY, class_cond=True, num_classes=10)
    flags.update(overrides)
    return randomize(su.create_model(**flags)).eval()


def test_unet_forward_is_deterministic_and_shaped():
    model = tiny_unet(dropout=0.1)
    x, t, y = th.randn(3, 3, 16, 16), th.tensor([1, 500, 999]), th.tensor([0, 3, 9])
    out = model(x, t, y=y)
    assert out.shape == (3, 6, 16, 16) and th.isfinite(out).all()
    assert th.equal(out, model(x, t, y=y))
    assert not th.allclose(out, model(x, t, y=th.tensor([1, 3, 9])))  # the label matters


def test_fresh_unet_outputs_zero():
    """The output conv is zero-initialised, as released."""
    model = su.create_model(**TINY)
    assert th.count_nonzero(model(th.randn(2, 3, 16, 16), th.tensor([3, 4]))) == 0


def test_class_labels_required_exactly_for_class_conditional():
    with pytest.raises(ValueError, match="class labels"):
        tiny_unet()(th.randn(1, 3, 16, 16), th.tensor([1]))
    with pytest.raises(ValueError, match="class labels"):
        tiny_unet(class_cond=False)(th.randn(1, 3, 16, 16), th.tensor([1]), y=th.tensor([0]))


def test_use_checkpoint_gives_same_gradients():
    x, t, y = th.randn(2, 3, 16, 16), th.tensor([5, 50]), th.tensor([1, 2])
    grads = []
    for flag in (False, True):
        model = tiny_unet(use_checkpoint=flag).train()
        model(x, t, y=y).square().mean().backward()
        grads.append(th.cat([p.grad.flatten() for p in model.parameters()]))
    assert th.allclose(grads[0], grads[1], atol=1e-6)


def test_fp16_conversion_matches_release_layout():
    model = tiny_unet(use_fp16=True)  # no convert_to_fp16() call needed
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == th.float16  # torso convs
    assert model.input_blocks[3][1].qkv.weight.dtype == th.float16  # attention 1x1 convs too
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == th.float32  # norms stay fp32
    assert model.input_blocks[1][0].emb_layers[1].weight.dtype == th.float32  # linears stay fp32
    assert model.out[2].weight.dtype == th.float32 and model.time_embed[0].weight.dtype == th.float32
    model.convert_to_fp32()
    assert all(p.dtype == th.float32 for p in model.parameters())


def test_fractional_channel_mult_and_missing_default():
    assert su.parse_channel_mult("0.5,1,1,2", 512) == (0.5, 1, 1, 2)
    assert su.parse_channel_mult("", 512) == (0.5, 1, 1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="--channel_mult"):
        su.create_model(image_size=48, num_channels=32, num_res_blocks=1)
    model = su.create_model(image_size=16, num_channels=64, num_res_blocks=1, channel_mult="0.5,1", attention_resolutions="")
    assert model.input_blocks[0][0].weight.shape[0] == 32


def test_super_res_model_uses_low_res():
    model = randomize(
        su.sr_model(
            large_size=64, small_size=32, num_channels=32, num_res_blocks=1, learn_sigma=False, class_cond=False,
            use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1,
            num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=False, use_fp16=False,
        )  # fmt: skip
    ).eval()
    x, t = th.randn(1, 3, 64, 64), th.tensor([10])
    low = th.randn(1, 3, 32, 32)
    out = model(x, t, low_res=low)
    assert out.shape == (1, 3, 64, 64)
    assert not th.allclose(out, model(x, t, low_res=low + 1))
    with pytest.raises(ValueError, match="low_res"):
        model(x, t)
    assert isinstance(model, SuperResModel)


def _group_norm(h, norm):
    return F.group_norm(h, 32, norm.weight.double(), norm.bias.double(), eps=norm.eps)


def _linear(h, layer):
    """A Linear or a 1x1 convolution over the channels of h [N, C] or [N, C, T]."""
    weight = layer.weight.double().reshape(layer.weight.shape[0], -1)
    out = th.einsum("oc,nc...->no...", weight, h)
    return out + layer.bias.double().reshape(-1, *[1] * (h.dim() - 2))


def explicit_pool_head(pool, head, outputs, head_channels):
    """The classifier's logits [N, classes] from its torso outputs (each input block's, then the middle
    block's), written out in float64 as the paper's appendix and the release describe the heads."""
    h = outputs[-1].double()
    if pool == "adaptive":  # GroupNorm, SiLU, global mean, 1x1 conv
        return _linear(F.silu(_group_norm(h, head[0])).mean(dim=(2, 3)), head[3])
    if pool == "attention":  # CLIP's pooling: the mean token attends over [mean; every position]
        attention = head[2]
        a = F.silu(_group_norm(h, head[0])).flatten(2)
        tokens = th.cat([a.mean(dim=-1, keepdim=True), a], dim=-1) + attention.positional_embedding.double()
        q, k, v = _linear(tokens, attention.qkv_proj).chunk(3, dim=1)  # q, k, v first, then heads
        n, c, t = q.shape
        q, k, v = (z.reshape(n, c // head_channels, head_channels, t) for z in (q, k, v))
        weights = th.softmax(th.einsum("nhd,nhdt->nht", q[..., 0], k) / math.sqrt(head_channels), dim=-1)
        pooled = th.einsum("nht,nhdt->nhd", weights, v).reshape(n, c)  # the mean token's output
        return _linear(pooled, attention.c_proj)
    features = th.cat([o.double().mean(dim=(2, 3)) for o in outputs], dim=-1)  # every block's spatial mean
    hidden = _linear(features, head[0])
    hidden = F.relu(hidden) if pool == "spatial" else F.silu(_group_norm(hidden, head[1]))
    return _linear(hidden, head[-1])


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_pools(pool):
    model = randomize(
        EncoderUNetModel(
            image_size=16, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1,
            attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
            use_scale_shift_norm=True, resblock_updown=True, pool=pool,
        )  # fmt: skip
    ).eval()
    outputs = []  # the torso's outputs, recorded in order
    for block in [*model.input_blocks, model.middle_block]:
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
    logits = model(th.randn(4, 3, 16, 16, generator=th.Generator().manual_seed(1)), th.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 5) and len(outputs) == len(model.input_blocks) + 1
    with th.no_grad():
        expected = explicit_pool_head(pool, model.out, outputs, head_channels=32)
    assert (logits.double() - expected).abs().max() < 1e-4 * expected.abs().max()
    assert expected.std(dim=0).min() > 1e-3 * expected.abs().max()  # the logits differ between inputs


def test_fp16_torso_output_close_to_fp32():
    """The release's fp16 mode (half torso, float32 norms / embeddings / output) on the same weights."""
    reference = tiny_unet()
    half = su.create_model(**dict(TINY, class_cond=True, num_classes=10, use_fp16=True))
    half.load_state_dict(reference.state_dict())  # cast to the half torso's dtypes on load
    x, t, y = th.randn(2, 3, 16, 16), th.tensor([3, 400]), th.tensor([1, 2])
    expected, out = reference(x, t, y=y), half(x, t, y=y)
    assert out.dtype == th.float32
    assert (out - expected).abs().max() < 1e-2 * expected.abs().max()
    assert not th.equal(out, expected)  # it really ran in half precision


def test_use_fp16_makes_the_model_half_precision_by_itself():
    """use_fp16 alone gives the release's fp16 layout; convert_to_fp16 is idempotent and
    convert_to_fp32 runs the same (rounded) weights entirely in float32."""
    half = tiny_unet(use_fp16=True)
    conv = half.input_blocks[1][0].in_layers[2]
    assert conv.weight.dtype == th.float16 and half.out[2].weight.dtype == th.float32
    x, t, y = th.randn(2, 3, 16, 16), th.tensor([3, 400]), th.tensor([1, 2])
    out = half(x, t, y=y)
    half.convert_to_fp16()
    assert th.equal(half(x, t, y=y), out)
    half.convert_to_fp32()
    single = su.create_model(**dict(TINY, class_cond=True, num_classes=10)).eval()
    single.load_state_dict(half.state_dict())
    assert all(p.dtype == th.float32 for p in half.parameters())
    assert th.equal(half(x, t, y=y), single(x, t, y=y))


def cfg_unet(p, num_classes=4):
    """A tiny class-conditional UNet (random weights, no dropout) with label dropout probability p."""
    th.manual_seed(0)
    model = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                      attention_resolutions=(), channel_mult=(1,), num_classes=num_classes, class_dropout_prob=p)  # fmt: skip
    return randomize(model)


def test_label_dropout_replaces_labels_by_the_null_class_in_training_only():
    model = cfg_unet(0.5)
    x, t, y = th.randn(16, 3, 8, 8), th.full((16,), 10), th.arange(16) % 4
    th.manual_seed(3)
    dropped = th.rand(16) < 0.5
    assert 0 < dropped.sum() < 16
    expected = model.eval()(x, t, y=th.where(dropped, 4, y))
    th.manual_seed(3)
    assert th.equal(model.train()(x, t, y=y), expected)
    assert th.equal(model.eval()(x, t, y=y), model(x, t, y=y))  # no dropout in eval mode
    assert not th.allclose(model(x, t, y=y), expected)


def test_label_dropout_rate():
    model = cfg_unet(0.3, num_classes=10)
    th.manual_seed(0)
    labels = model._drop_labels(th.zeros(20000, dtype=th.long))
    assert set(labels.unique().tolist()) == {0, 10}
    assert abs((labels == 10).float().mean().item() - 0.3) < 0.015  # 4.6 standard deviations


def test_null_class_label_and_property():
    model = cfg_unet(0.1).eval()
    assert model.null_class == 4 and model.label_emb.weight.shape[0] == 5
    x, t = th.randn(2, 3, 8, 8), th.tensor([5, 5])
    null = model(x, t, y=th.tensor([4, 4]))  # the unconditional branch, at any time
    assert th.isfinite(null).all() and not th.allclose(null, model(x, t, y=th.tensor([0, 0])))
    assert cfg_unet(0.0).null_class is None and tiny_unet(class_cond=False).null_class is None


def test_without_label_dropout_training_draws_no_random_numbers():
    """p = 0 (the release) leaves the global RNG alone, so training runs stay as released."""
    model = cfg_unet(0.0).train()
    th.manual_seed(7)
    model(th.randn(2, 3, 8, 8), th.tensor([1, 2]), y=th.tensor([0, 3]))
    after = th.rand(1)
    th.manual_seed(7)
    th.randn(2, 3, 8, 8)
    assert th.equal(th.rand(1), after)


def test_label_dropout_flag_errors():
    with pytest.raises(ValueError, match="--class_cond True"):
        UNetModel(8, 3, 32, 3, 1, (), channel_mult=(1,), class_dropout_prob=0.1)
    with pytest.raises(ValueError, match=r"class_dropout_prob must be in \[0, 1\)"):
        cfg_unet(1.0)


def test_super_res_model_takes_label_dropout():
    model = SuperResModel(8, 3, 32, 3, 1, (), channel_mult=(1,), num_classes=4, class_dropout_prob=0.2)
    assert model.null_class == 4 and model.label_emb.weight.shape[0] == 5
    assert model.input_blocks[0][0].weight.shape[1] == 6
