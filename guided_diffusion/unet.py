"""The ADM networks: the diffusion UNet, the super-resolution UNet and the noisy-image classifier.

Module names and parameter shapes follow the released checkpoints exactly, so that
`model.load_state_dict(torch.load(released_file), strict=True)` works. Every network is built
from one family of blocks (`ResBlock`, `AttentionBlock`, resampling) whose shared settings live in
a `BlockSpec`; the UNet and the classifier share the same downsampling torso (`_UNetTorso`).
"""

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from .nn import avg_pool_nd, checkpoint, conv_nd, linear, normalization, timestep_embedding, zero_module

ATTENTION_IMPLS = ("math", "sdpa")
POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x, emb):
        """x: [N, C, ...]; emb: [N, E]."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential container that hands the timestep embedding to the children that take it, and the
    text encoding (encoder_out [N, W, L], or None) to the attention blocks."""

    def forward(self, x, emb, encoder_out=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, encoder_out)
            else:
                x = layer(x)
        return x


def _spatial_factor(dims):
    """The 2x resampling factor per signal dim: 3D signals (video) keep their first (time) axis."""
    return (1, 2, 2) if dims == 3 else 2


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling of the spatial dims, then a 3x3 conv when use_conv.

    x: [N, channels, *spatial] -> [N, out_channels, *2 spatial] (out_channels = channels without conv).
    """

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels, self.dims, self.use_conv = channels, dims, use_conv
        self.out_channels = out_channels or channels
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        bigger = F.interpolate(x, scale_factor=_spatial_factor(self.dims), mode="nearest")
        return self.conv(bigger) if self.use_conv else bigger


class Downsample(nn.Module):
    """2x downsampling of the spatial dims: a strided 3x3 conv, or an average pool (same channels).

    x: [N, channels, *spatial] -> [N, out_channels, *spatial / 2].
    """

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels, self.out_channels = channels, out_channels or channels
        factor = _spatial_factor(dims)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=factor, padding=1)
        elif self.out_channels != channels:
            raise ValueError(f"average-pool downsampling keeps the channel count ({channels}), not {out_channels}")
        else:
            self.op = avg_pool_nd(dims, kernel_size=factor, stride=factor)

    def forward(self, x):
        return self.op(x)


def _norm_act_conv(dims, channels, out_channels, dropout=None, zero=False):
    """GroupNorm, SiLU, [dropout,] 3x3 conv: the layout of every pre-activation conv layer.

    zero=True zero-initialises the conv (the last layer of a residual branch and of the UNet).
    """
    layers = [normalization(channels), nn.SiLU()]
    if dropout is not None:
        layers.append(nn.Dropout(p=dropout))
    conv = conv_nd(dims, channels, out_channels, 3, padding=1)
    return nn.Sequential(*layers, zero_module(conv) if zero else conv)


class ResBlock(TimestepBlock):
    """The ADM residual block, conditioned on the timestep (and class) embedding e.

    h = conv(SiLU(norm(x))); then h += W e (plain), or with AdaGN (use_scale_shift_norm)
    norm(h) * (1 + scale) + shift with [scale, shift] = W e; then conv(dropout(SiLU(.))).
    With up/down, both the branch and the skip path are resampled, between the first
    norm/SiLU and the first conv (BigGAN style). With rescale (the paper's ablation, off in
    every released model) the sum skip + h is divided by sqrt(2).
    """

    def __init__(
        self,
        channels,                       # input channels
        emb_channels,                   # timestep embedding width E
        dropout,                        # dropout probability before the last conv
        out_channels=None,              # output channels (default: channels)
        use_conv=False,                 # skip path: 3x3 conv instead of 1x1 when channels change
        use_scale_shift_norm=False,     # AdaGN conditioning instead of adding the embedding
        dims=2,                         # 1D, 2D or 3D signal
        use_checkpoint=False,           # recompute activations in backward to save memory
        up=False,                       # 2x nearest upsampling inside the block
        down=False,                     # 2x average-pool downsampling inside the block
        rescale=False,                  # divide the residual sum by sqrt(2)
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.output_scale = 1 / math.sqrt(2) if rescale else 1.0

        self.in_layers = _norm_act_conv(dims, channels, out_channels)
        if up:
            self.resample = Upsample(channels, False, dims)
        elif down:
            self.resample = Downsample(channels, False, dims)
        else:
            self.resample = nn.Identity()
        cond_width = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), linear(emb_channels, cond_width))
        self.out_layers = _norm_act_conv(dims, out_channels, out_channels, dropout=dropout, zero=True)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            kernel = 3 if use_conv else 1
            self.skip_connection = conv_nd(dims, channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x, emb):
        """x: [N, C, ...]; emb: [N, E] -> [N, C_out, ...] (spatial size x2 or /2 with up/down)."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x, emb):
        norm, act, conv = self.in_layers
        h = conv(self.resample(act(norm(x))))
        cond = self.emb_layers(emb).type(h.dtype)
        cond = cond[(...,) + (None,) * (h.dim() - 2)]  # [N, C'] -> [N, C', 1, ...]
        norm, act, dropout, conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + cond)
        h = conv(dropout(act(h)))
        return (self.skip_connection(self.resample(x)) + h) * self.output_scale


class QKVAttention(nn.Module):
    """Multi-head attention over a packed qkv tensor [N, 3 * H * C, T] -> [N, H * C, T].

    order="legacy" splits the channels into heads first, then each head into q, k, v (the
    release's QKVAttentionLegacy); order="new" splits into q, k, v first, then heads
    (use_new_attention_order). q and k are each scaled by C^(-1/4); the softmax runs in float32.
    impl="sdpa" computes the same attention with torch's fused scaled_dot_product_attention.
    With encoder_kv [N, 2 * H * C, L] (GLIDE's cross-attention, legacy order only: each head's
    [k | v]), every head's text keys and values come first: one softmax over L + T keys.
    """

    def __init__(self, n_heads, order="legacy", impl="math"):
        super().__init__()
        if order not in ("legacy", "new"):
            raise ValueError(f"attention order must be 'legacy' or 'new', got {order!r}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.n_heads = n_heads
        self.order = order
        self.impl = impl

    def split_heads(self, qkv):
        """[N, 3 * H * C, T] -> q, k, v each [N * H, C, T]."""
        bs, width, length = qkv.shape
        assert width % (3 * self.n_heads) == 0
        ch = width // (3 * self.n_heads)
        if self.order == "legacy":
            return qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        return tuple(t.reshape(bs * self.n_heads, ch, length) for t in qkv.chunk(3, dim=1))

    def forward(self, qkv, encoder_kv=None):
        bs, _, length = qkv.shape
        q, k, v = self.split_heads(qkv)
        if encoder_kv is not None:
            if self.order != "legacy":
                raise ValueError("cross-attention to a text encoding needs the legacy attention order (GLIDE's)")
            text_k, text_v = encoder_kv.reshape(bs * self.n_heads, 2 * q.shape[1], -1).split(q.shape[1], dim=1)
            k, v = th.cat([text_k, k], dim=-1), th.cat([text_v, v], dim=-1)
        if self.impl == "sdpa":
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return a.transpose(1, 2).reshape(bs, -1, length)
        scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
        weight = th.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = th.softmax(weight.float(), dim=-1).type(weight.dtype)
        return th.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: x + proj_out(attention(qkv(norm(x)))); with
    encoder_channels (a text model), also cross-attention to the text encoding through encoder_kv."""

    def __init__(
        self,
        channels,                       # input and output channels
        num_heads=1,                    # number of heads, used when num_head_channels == -1
        num_head_channels=-1,           # channels per head (overrides num_heads)
        use_checkpoint=False,           # recompute activations in backward to save memory
        use_new_attention_order=False,  # split qkv before heads (the 64x64 model's order)
        attention_impl="math",          # "math" (the release's einsums) or "sdpa" (fused kernel)
        encoder_channels=None,          # width W of a text encoding to attend to (GLIDE), or None
    ):
        super().__init__()
        if encoder_channels is not None and use_new_attention_order:
            raise ValueError("use_new_attention_order cannot be combined with a text encoder: GLIDE's "
                             "cross-attention splits heads the legacy way; leave --use_new_attention_order False")
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        self.channels = channels
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        order = "new" if use_new_attention_order else "legacy"
        self.attention = QKVAttention(num_heads, order, attention_impl)
        if encoder_channels is not None:
            self.encoder_kv = conv_nd(1, encoder_channels, 2 * channels, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x, encoder_out=None):
        """x: [N, C, *spatial]; encoder_out: [N, W, L] text encoding (text models only) -> x's shape."""
        return checkpoint(self._forward, (x, encoder_out), self.parameters(), self.use_checkpoint)

    def _forward(self, x, encoder_out):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        encoder_kv = None if encoder_out is None else self.encoder_kv(encoder_out)
        h = self.proj_out(self.attention(self.qkv(self.norm(x)), encoder_kv))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over (spatial + 1) tokens."""

    def __init__(self, spacial_dim, embed_dim, num_heads_channels, output_dim=None, attention_impl="math"):
        super().__init__()
        self.positional_embedding = nn.Parameter(th.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads, "new", attention_impl)

    def forward(self, x):
        """x: [N, C, H, W] with H * W == spacial_dim**2 -> [N, output_dim]."""
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = th.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


def _cast_if_conv(module, dtype):
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        for param in module.parameters(recurse=False):
            param.data = param.data.to(dtype)


def convert_module_to_f16(module):
    """Cast a convolution's parameters to float16 (any other module is left alone)."""
    _cast_if_conv(module, th.float16)


def convert_module_to_f32(module):
    """Undo convert_module_to_f16."""
    _cast_if_conv(module, th.float32)


@dataclass(frozen=True)
class BlockSpec:
    """The settings all blocks of one network share, and the factories that apply them."""

    dims: int                       # 1D, 2D or 3D signal
    emb_channels: int               # timestep embedding width E (4 * model_channels)
    dropout: float                  # dropout probability in every resblock
    conv_resample: bool             # learned 3x3 convs in Upsample / Downsample
    resblock_updown: bool           # resample inside resblocks instead (BigGAN style)
    use_scale_shift_norm: bool      # AdaGN conditioning in resblocks
    resblock_rescale: bool          # divide every residual sum by sqrt(2)
    use_checkpoint: bool            # gradient checkpointing in every block
    num_head_channels: int          # fixed channels per attention head, or -1 for a head count
    use_new_attention_order: bool   # split qkv before heads
    attention_impl: str             # "math" or "sdpa"
    encoder_channels: int = None    # width of a text encoding the attention blocks attend to (GLIDE), or None

    def resblock(self, channels, out_channels, up=False, down=False):
        """A ResBlock from `channels` to `out_channels`."""
        return ResBlock(
            channels, self.emb_channels, self.dropout, out_channels=out_channels, up=up, down=down, dims=self.dims,
            use_scale_shift_norm=self.use_scale_shift_norm, use_checkpoint=self.use_checkpoint,
            rescale=self.resblock_rescale,
        )  # fmt: skip

    def attention(self, channels, num_heads):
        """An AttentionBlock over `channels` (num_heads is used when num_head_channels is -1)."""
        return AttentionBlock(
            channels, num_heads=num_heads, num_head_channels=self.num_head_channels,
            use_checkpoint=self.use_checkpoint, use_new_attention_order=self.use_new_attention_order,
            attention_impl=self.attention_impl, encoder_channels=self.encoder_channels,
        )  # fmt: skip

    def downsample(self, channels):
        """Halve the resolution, keeping `channels`."""
        if self.resblock_updown:
            return self.resblock(channels, channels, down=True)
        return Downsample(channels, self.conv_resample, self.dims, out_channels=channels)

    def upsample(self, channels):
        """Double the resolution, keeping `channels`."""
        if self.resblock_updown:
            return self.resblock(channels, channels, up=True)
        return Upsample(channels, self.conv_resample, self.dims, out_channels=channels)


class _UNetTorso(nn.Module):
    """What the UNet and the classifier share: the timestep (and class) embedding, the
    downsampling path `input_blocks` and the `middle_block`, and the precision switch.

    attention_ds are downsample rates: a block at resolution image_size / ds gets attention
    when ds is in it. The command line's --attention_resolutions are pixels; the model factories
    convert them (ds = image_size // pixels) and pass them as the `attention_resolutions` keyword.
    """

    def __init__(
        self, *, blocks, image_size, in_channels, model_channels, channel_mult, num_res_blocks, attention_ds,
        num_heads, label_rows=None,
    ):  # fmt: skip
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult needs one multiplier per resolution level, e.g. (1, 2, 4, 8)")
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.channel_mult, self.attention_ds = tuple(channel_mult), tuple(attention_ds)
        self.time_embed = nn.Sequential(
            linear(model_channels, blocks.emb_channels), nn.SiLU(), linear(blocks.emb_channels, blocks.emb_channels)
        )
        if label_rows is not None:
            self.label_emb = nn.Embedding(label_rows, blocks.emb_channels)

        ch = self.width(0)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(blocks.dims, in_channels, ch, 3, padding=1))])
        self.skip_channels = [ch]  # channels of each input block's output, read by the decoder
        ds = 1
        for level in range(len(channel_mult)):
            for _ in range(num_res_blocks):
                layers = [blocks.resblock(ch, self.width(level))]
                ch = self.width(level)
                if ds in self.attention_ds:
                    layers.append(blocks.attention(ch, num_heads))
                self._add_input_block(layers, ch)
            if level < len(channel_mult) - 1:
                self._add_input_block([blocks.downsample(ch)], ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            blocks.resblock(ch, ch), blocks.attention(ch, num_heads), blocks.resblock(ch, ch)
        )
        self.torso_channels, self.torso_ds = ch, ds  # at the middle block

    def width(self, level):
        """Channels of the blocks at resolution level `level`: channel_mult[level] * model_channels."""
        return int(self.channel_mult[level] * self.model_channels)

    def _add_input_block(self, layers, out_channels):
        self.input_blocks.append(TimestepEmbedSequential(*layers))
        self.skip_channels.append(out_channels)

    def _half_precision_blocks(self):
        """The blocks use_fp16 runs in float16 (their convolutions; norms and linears stay float32)."""
        return [self.input_blocks, self.middle_block]

    def convert_to_fp16(self):
        """Run the torso in float16 (as the released fp16 models do). Idempotent; use_fp16=True
        in the constructor already does this."""
        for blocks in self._half_precision_blocks():
            blocks.apply(convert_module_to_f16)
        self.dtype = th.float16

    def convert_to_fp32(self):
        """Run the whole network in float32 again."""
        for blocks in self._half_precision_blocks():
            blocks.apply(convert_module_to_f32)
        self.dtype = th.float32

    def _set_precision(self, use_fp16):
        if use_fp16:
            self.convert_to_fp16()
        else:
            self.convert_to_fp32()

    def _embed(self, timesteps, y=None):
        """timesteps: [N], y: [N] labels or None -> embedding [N, 4 * model_channels]."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        return emb if y is None else emb + self.label_emb(y)

    def _torso_outputs(self, x, emb, encoder_out=None):
        """Run the downsampling path and middle block in the torso's precision.

        x: [N, C, H, W]; encoder_out: [N, W, L] text encoding or None; yields each input block's output,
        then the middle block's.
        """
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb, encoder_out)
            yield h
        yield self.middle_block(h, emb, encoder_out)


GUIDANCE_FEATURE_SCALE = 1000.0  # W - 1 in [0, 10] spreads over the timesteps' range of sinusoidal features


def null_class_of(num_classes, class_dropout_prob):
    """The label a model trained with label dropout keeps for "no class" (num_classes), or None."""
    return num_classes if class_dropout_prob else None


class UNetModel(_UNetTorso):
    """The ADM diffusion UNet. forward(x [N, C, H, W], timesteps [N], y [N] or None) -> [N, out_channels, H, W]."""

    def __init__(
        self,
        image_size,                     # input resolution H == W (pixels)
        in_channels,                    # image channels (3 RGB, 1 greyscale); SuperResModel takes twice that
        model_channels,                 # base width C
        out_channels,                   # image channels, twice that with learned sigma
        num_res_blocks,                 # resblocks per resolution level
        attention_resolutions,          # downsample rates (1, 2, 4, ...) whose blocks get attention (not pixels)
        dropout=0,                      # dropout probability in every resblock
        channel_mult=(1, 2, 4, 8),      # width multiplier per level (fractions allowed)
        conv_resample=True,             # learned 3x3 convs in Upsample / Downsample
        dims=2,                         # 1D, 2D or 3D signal
        num_classes=None,               # class-conditional with this many classes when set
        use_checkpoint=False,           # gradient checkpointing in every block
        use_fp16=False,                 # run the torso in float16 (its convs are cast at construction)
        num_heads=1,                    # attention heads (when num_head_channels == -1)
        num_head_channels=-1,           # fixed channels per head instead of a head count
        num_heads_upsample=-1,          # heads on the upsampling path (-1: num_heads)
        use_scale_shift_norm=False,     # AdaGN conditioning in resblocks
        resblock_updown=False,          # BigGAN-style resampling resblocks
        use_new_attention_order=False,  # split qkv before heads
        resblock_rescale=False,         # paper's 1/sqrt(2) residual rescaling ablation
        attention_impl="math",          # "math" (exact release einsums) or "sdpa" (fused)
        class_dropout_prob=0.0,         # > 0: a null class (label num_classes) that replaces training labels
                                        #   with this probability (classifier-free guidance); 0: as released
        encoder_channels=None,          # width of a text encoding every attention block attends to (GLIDE)
        guidance_embed=False,           # take the guidance scale W as an input (a consistency student distilled
                                        #   with --guidance_scale_max): its embedding's last layer zero at init
    ):
        if not 0 <= class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if class_dropout_prob and num_classes is None:
            raise ValueError("class_dropout_prob > 0 needs a class-conditional model: set --class_cond True")
        blocks = BlockSpec(
            dims=dims, emb_channels=4 * model_channels, dropout=dropout, conv_resample=conv_resample,
            resblock_updown=resblock_updown, use_scale_shift_norm=use_scale_shift_norm,
            resblock_rescale=resblock_rescale, use_checkpoint=use_checkpoint, num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order, attention_impl=attention_impl,
            encoder_channels=encoder_channels,
        )  # fmt: skip
        label_rows = None if num_classes is None else num_classes + (1 if class_dropout_prob else 0)
        super().__init__(
            blocks=blocks, image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_ds=attention_resolutions,
            num_heads=num_heads, label_rows=label_rows,
        )  # fmt: skip
        self.out_channels, self.num_classes, self.class_dropout_prob = out_channels, num_classes, class_dropout_prob

        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample
        skips, ch, ds = list(self.skip_channels), self.torso_channels, self.torso_ds
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [blocks.resblock(ch + skips.pop(), self.width(level))]
                ch = self.width(level)
                if ds in self.attention_ds:
                    layers.append(blocks.attention(ch, up_heads))
                if level > 0 and i == num_res_blocks:
                    layers.append(blocks.upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = _norm_act_conv(dims, ch, out_channels, zero=True)
        emb_channels = blocks.emb_channels  # built last: the other weights draw the same numbers as without it
        self.guidance_embed = nn.Sequential(
            linear(model_channels, emb_channels), nn.SiLU(), zero_module(linear(emb_channels, emb_channels))
        ) if guidance_embed else None
        self._set_precision(use_fp16)

    @property
    def null_class(self):
        """The label of the unconditional branch (classifier-free guidance), or None without one."""
        return null_class_of(self.num_classes, self.class_dropout_prob)

    def _half_precision_blocks(self):
        return super()._half_precision_blocks() + [self.output_blocks]

    def _drop_labels(self, y):
        """Replace each label by the null class with probability class_dropout_prob (torch's global RNG)."""
        dropped = th.rand(y.shape, device=y.device) < self.class_dropout_prob
        return th.where(dropped, th.full_like(y, self.null_class), y)

    def forward(self, x, timesteps, y=None, guidance_scale=None):
        """x: [N, C, H, W]; timesteps: [N]; y: [N] class labels (class-conditional models only;
        label num_classes is the null class when the model has one); guidance_scale: W, [N] or a number,
        for a model built with guidance_embed only (None: W = 1, unguided)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "class labels y must be given if and only if the model is class-conditional "
                f"(num_classes={self.num_classes}, y {'given' if y is not None else 'missing'})"
            )
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(f"y must hold one label per image: shape [{x.shape[0]}], got {list(y.shape)}")
        if guidance_scale is not None and self.guidance_embed is None:
            raise ValueError("guidance_scale is an input of a model built with guidance_embed only (a consistency "
                             "student distilled with --guidance_scale_max): guide this model with a guide instead")
        if y is not None and self.training and self.class_dropout_prob:
            y = self._drop_labels(y)
        emb = self._embed(timesteps, y)
        if self.guidance_embed is not None:
            emb = emb + self._guidance_embedding(guidance_scale, x)
        return self._denoise(x, emb)

    def _guidance_embedding(self, guidance_scale, x):
        """The embedding [N, 4 * model_channels] of W (None: 1): the MLP of the sinusoidal features of
        GUIDANCE_FEATURE_SCALE (W - 1), as LCM embeds its w = W - 1; zero at init for every W."""
        scale = th.as_tensor(1.0 if guidance_scale is None else guidance_scale, dtype=th.float32, device=x.device)
        features = timestep_embedding(GUIDANCE_FEATURE_SCALE * (scale.expand(x.shape[0]) - 1), self.model_channels)
        return self.guidance_embed(features)

    def _denoise(self, x, emb, encoder_out=None):
        """The UNet proper: x [N, C, H, W] and the embedding emb [N, 4 * model_channels] (and a text encoding
        encoder_out [N, W, L]) -> [N, out_channels, H, W]."""
        *skips, h = self._torso_outputs(x, emb, encoder_out)
        for block in self.output_blocks:
            h = block(th.cat([h, skips.pop()], dim=1), emb, encoder_out)
        return self.out(h.type(x.dtype))


class SuperResModel(UNetModel):
    """A UNet that also sees a low-resolution image, bilinearly upsampled and concatenated to x.

    forward(x [N, C, H, W], timesteps [N], low_res [N, C, h, w], y=None) -> [N, out_channels, H, W].
    """

    def __init__(self, image_size, in_channels, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x, timesteps, low_res=None, **kwargs):
        if low_res is None:
            raise ValueError("SuperResModel needs the low-resolution image: pass low_res=[N, C, h, w]")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(th.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(_UNetTorso):
    """The noisy-image classifier: the UNet's downsampling half and middle block, then a pooling head.

    forward(x [N, C, H, W], timesteps [N]) -> logits [N, out_channels].
    pool: "adaptive" (global average), "attention" (attention pooling, num_head_channels a head),
    "spatial" / "spatial_v2" (concatenated spatial means of every block -> MLP).
    """

    def __init__(
        self,
        image_size,                     # input resolution H == W (pixels)
        in_channels,                    # input channels
        model_channels,                 # base width C
        out_channels,                   # number of classes
        num_res_blocks,                 # resblocks per resolution level
        attention_resolutions,          # downsample rates whose blocks get attention (not pixels)
        dropout=0,                      # dropout probability in every resblock
        channel_mult=(1, 2, 4, 8),      # width multiplier per level
        conv_resample=True,             # learned convs in Downsample
        dims=2,                         # 1D, 2D or 3D signal
        use_checkpoint=False,           # gradient checkpointing
        use_fp16=False,                 # run the torso in float16 (its convs are cast at construction)
        num_heads=1,                    # attention heads (when num_head_channels == -1)
        num_head_channels=-1,           # fixed channels per head
        num_heads_upsample=-1,          # unused (no upsampling path); kept for the release's signature
        use_scale_shift_norm=False,     # AdaGN conditioning in resblocks
        resblock_updown=False,          # BigGAN-style downsampling resblocks
        use_new_attention_order=False,  # split qkv before heads
        pool="adaptive",                # pooling head, see the class docstring
        resblock_rescale=False,         # paper's 1/sqrt(2) residual rescaling ablation
        attention_impl="math",          # "math" or "sdpa"
    ):
        del num_heads_upsample
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("pool='attention' needs num_head_channels (the released classifiers use 64)")
        blocks = BlockSpec(
            dims=dims, emb_channels=4 * model_channels, dropout=dropout, conv_resample=conv_resample,
            resblock_updown=resblock_updown, use_scale_shift_norm=use_scale_shift_norm,
            resblock_rescale=resblock_rescale, use_checkpoint=use_checkpoint, num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order, attention_impl=attention_impl,
        )  # fmt: skip
        super().__init__(
            blocks=blocks, image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_ds=attention_resolutions,
            num_heads=num_heads,
        )  # fmt: skip
        self.out_channels, self.pool = out_channels, pool
        self.out = self._pool_head(dims, num_head_channels, attention_impl)
        self._set_precision(use_fp16)

    def _pool_head(self, dims, num_head_channels, attention_impl):
        """The layers from the middle block's output (or the spatial means) to the logits."""
        ch, classes = self.torso_channels, self.out_channels
        if self.pool == "adaptive":
            return nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), zero_module(conv_nd(dims, ch, classes, 1)),
                nn.Flatten(),
            )  # fmt: skip
        if self.pool == "attention":
            side = self.image_size // self.torso_ds
            return nn.Sequential(
                normalization(ch), nn.SiLU(), AttentionPool2d(side, ch, num_head_channels, classes, attention_impl)
            )
        hidden = 2048
        features = sum(self.skip_channels) + ch  # one spatial mean per input block, plus the middle block
        activation = [nn.ReLU()] if self.pool == "spatial" else [normalization(hidden), nn.SiLU()]
        return nn.Sequential(nn.Linear(features, hidden), *activation, nn.Linear(hidden, classes))

    def forward(self, x, timesteps):
        """x: [N, C, H, W]; timesteps: [N] -> logits [N, out_channels]."""
        outputs = self._torso_outputs(x, self._embed(timesteps))
        if self.pool.startswith("spatial"):
            return self.out(th.cat([h.type(x.dtype).mean(dim=(2, 3)) for h in outputs], dim=-1))
        *_, h = outputs
        return self.out(h.type(x.dtype))
