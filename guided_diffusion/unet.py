"""The ADM networks: the diffusion UNet, the super-resolution UNet and the noisy-image classifier.

Module names and parameter shapes follow the released checkpoints exactly, so that
`model.load_state_dict(torch.load(released_file), strict=True)` works.
"""

import math
from abc import abstractmethod

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from .nn import avg_pool_nd, checkpoint, conv_nd, linear, normalization, timestep_embedding, zero_module

ATTENTION_IMPLS = ("math", "sdpa")


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x, emb):
        """x: [N, C, ...]; emb: [N, E]."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential container that hands the timestep embedding to the children that take it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling (spatial dims only for 3D), optionally followed by a 3x3 conv."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 conv, or an average pool (which keeps the channel count)."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            assert self.channels == self.out_channels, "average-pool downsampling keeps the channel count"
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlock(TimestepBlock):
    """The ADM residual block, conditioned on the timestep (and class) embedding.

    h = conv(SiLU(norm(x))); then either h += W e (plain) or, with AdaGN
    (use_scale_shift_norm), norm(h) * (1 + scale) + shift with [scale, shift] = W e;
    then conv(dropout(SiLU(.))). With up/down, resampling happens on both the residual
    and the skip path, between the first norm/SiLU and the first conv (BigGAN style).
    With rescale (the paper's ablation, off in every released model) the sum is divided by sqrt(2).
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
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.output_scale = 1 / math.sqrt(2) if rescale else 1.0

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb):
        """x: [N, C, ...]; emb: [N, E] -> [N, C_out, ...] (spatial size x2 or /2 with up/down)."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return (self.skip_connection(x) + h) * self.output_scale


class QKVAttention(nn.Module):
    """Multi-head attention over a packed qkv tensor [N, 3 * H * C, T] -> [N, H * C, T].

    order="legacy" splits the channels into heads first, then each head into q, k, v (the
    release's QKVAttentionLegacy); order="new" splits into q, k, v first, then heads
    (use_new_attention_order). q and k are each scaled by C^(-1/4); the softmax runs in float32.
    impl="sdpa" computes the same attention with torch's fused scaled_dot_product_attention.
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

    def forward(self, qkv):
        bs, _, length = qkv.shape
        q, k, v = self.split_heads(qkv)
        if self.impl == "sdpa":
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return a.transpose(1, 2).reshape(bs, -1, length)
        scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
        weight = th.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = th.softmax(weight.float(), dim=-1).type(weight.dtype)
        return th.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: x + proj_out(attention(qkv(norm(x))))."""

    def __init__(
        self,
        channels,                       # input and output channels
        num_heads=1,                    # number of heads, used when num_head_channels == -1
        num_head_channels=-1,           # channels per head (overrides num_heads)
        use_checkpoint=False,           # recompute activations in backward to save memory
        use_new_attention_order=False,  # split qkv before heads (the 64x64 model's order)
        attention_impl="math",          # "math" (the release's einsums) or "sdpa" (fused kernel)
    ):
        super().__init__()
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
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x):
        """x: [N, C, *spatial] -> same shape."""
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
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


def convert_module_to_f16(module):
    """Cast a convolution's parameters to float16 (norms and linear layers stay float32)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module):
    """Undo convert_module_to_f16."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


class _UNetTorso(nn.Module):
    """Timestep embedding, the downsampling path and the middle block, shared by the UNet and
    the encoder (classifier). Builds `time_embed`, `input_blocks` and `middle_block`."""

    def _build_torso(
        self,
        image_size,
        in_channels,
        model_channels,
        num_res_blocks,
        attention_resolutions,
        dropout,
        channel_mult,
        conv_resample,
        dims,
        use_checkpoint,
        use_fp16,
        num_heads,
        num_head_channels,
        num_heads_upsample,
        use_scale_shift_norm,
        resblock_updown,
        use_new_attention_order,
        resblock_rescale,
        attention_impl,
        num_classes=None,
    ):
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.dtype = th.float16 if use_fp16 else th.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        self._resblock_kwargs = dict(
            emb_channels=model_channels * 4,
            dropout=dropout,
            dims=dims,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            rescale=resblock_rescale,
        )
        self._attention_kwargs = dict(
            num_head_channels=num_head_channels,
            use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order,
            attention_impl=attention_impl,
        )
        resblock, attention = self._resblock, self._attention

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        self._feature_size = ch
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    resblock(ch, ch, down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, dims=dims, out_channels=ch)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
                self._feature_size += ch

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), attention(ch, num_heads), resblock(ch, ch))
        self._feature_size += ch
        return ch, ds, input_block_chans, num_heads_upsample

    def _resblock(self, ch, out_ch, up=False, down=False):
        """A ResBlock from `ch` to `out_ch` channels with this network's settings."""
        return ResBlock(ch, out_channels=out_ch, up=up, down=down, **self._resblock_kwargs)

    def _attention(self, ch, heads):
        """An AttentionBlock over `ch` channels with this network's settings."""
        return AttentionBlock(ch, num_heads=heads, **self._attention_kwargs)

    def _embed(self, timesteps):
        """timesteps: [N] -> [N, 4 * model_channels]."""
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))


class UNetModel(_UNetTorso):
    """The ADM diffusion UNet. forward(x [N, C, H, W], timesteps [N], y [N] or None) -> [N, out_channels, H, W]."""

    def __init__(
        self,
        image_size,                     # input resolution H == W (pixels)
        in_channels,                    # input channels (3; 6 for the super-res model)
        model_channels,                 # base width C
        out_channels,                   # 3, or 6 with learned sigma
        num_res_blocks,                 # resblocks per resolution level
        attention_resolutions,          # downsample rates (1, 2, 4, ...) that get attention
        dropout=0,                      # dropout probability in every resblock
        channel_mult=(1, 2, 4, 8),      # width multiplier per level (fractions allowed)
        conv_resample=True,             # learned 3x3 convs in Upsample / Downsample
        dims=2,                         # 1D, 2D or 3D signal
        num_classes=None,               # class-conditional with this many classes when set
        use_checkpoint=False,           # gradient checkpointing in every block
        use_fp16=False,                 # run the torso in float16 (after convert_to_fp16())
        num_heads=1,                    # attention heads (when num_head_channels == -1)
        num_head_channels=-1,           # fixed channels per head instead of a head count
        num_heads_upsample=-1,          # heads on the upsampling path (-1: num_heads)
        use_scale_shift_norm=False,     # AdaGN conditioning in resblocks
        resblock_updown=False,          # BigGAN-style resampling resblocks
        use_new_attention_order=False,  # split qkv before heads
        resblock_rescale=False,         # paper's 1/sqrt(2) residual rescaling ablation
        attention_impl="math",          # "math" (exact release einsums) or "sdpa" (fused)
    ):
        super().__init__()
        self.out_channels = out_channels
        self.num_classes = num_classes
        ch, ds, input_block_chans, num_heads_upsample = self._build_torso(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads, num_head_channels,
            num_heads_upsample, use_scale_shift_norm, resblock_updown, use_new_attention_order,
            resblock_rescale, attention_impl, num_classes,
        )  # fmt: skip

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [self._resblock(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(self._attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(
                        self._resblock(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, int(channel_mult[0] * model_channels), out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self):
        """Cast the torso's convolutions to float16, as the released fp16 models run."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f16)

    def convert_to_fp32(self):
        """Undo convert_to_fp16."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f32)

    def forward(self, x, timesteps, y=None):
        """x: [N, C, H, W]; timesteps: [N]; y: [N] class labels (class-conditional models only)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "class labels y must be given if and only if the model is class-conditional "
                f"(num_classes={self.num_classes}, y {'given' if y is not None else 'missing'})"
            )
        emb = self._embed(timesteps)
        if self.num_classes is not None:
            assert y.shape == (x.shape[0],)
            emb = emb + self.label_emb(y)
        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(th.cat([h, hs.pop()], dim=1), emb)
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
    pool: "adaptive" (global average), "attention" (attention pooling, 64 channels a head),
    "spatial" / "spatial_v2" (concatenated spatial means of every block -> MLP).
    """

    def __init__(
        self,
        image_size,                     # input resolution H == W (pixels)
        in_channels,                    # input channels
        model_channels,                 # base width C
        out_channels,                   # number of classes
        num_res_blocks,                 # resblocks per resolution level
        attention_resolutions,          # downsample rates that get attention
        dropout=0,                      # dropout probability in every resblock
        channel_mult=(1, 2, 4, 8),      # width multiplier per level
        conv_resample=True,             # learned convs in Downsample
        dims=2,                         # 1D, 2D or 3D signal
        use_checkpoint=False,           # gradient checkpointing
        use_fp16=False,                 # run the torso in float16 (after convert_to_fp16())
        num_heads=1,                    # attention heads (when num_head_channels == -1)
        num_head_channels=-1,           # fixed channels per head
        num_heads_upsample=-1,          # unused (no upsampling path); kept for the signature
        use_scale_shift_norm=False,     # AdaGN conditioning in resblocks
        resblock_updown=False,          # BigGAN-style downsampling resblocks
        use_new_attention_order=False,  # split qkv before heads
        pool="adaptive",                # pooling head, see the class docstring
        resblock_rescale=False,         # paper's 1/sqrt(2) residual rescaling ablation
        attention_impl="math",          # "math" or "sdpa"
    ):
        super().__init__()
        self.out_channels = out_channels
        ch, ds, _, _ = self._build_torso(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads, num_head_channels,
            num_heads_upsample, use_scale_shift_norm, resblock_updown, use_new_attention_order,
            resblock_rescale, attention_impl,
        )  # fmt: skip
        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels (the released classifiers use 64)")
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels, attention_impl),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                nn.ReLU(),
                nn.Linear(2048, out_channels),
            )
        elif pool == "spatial_v2":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                normalization(2048),
                nn.SiLU(),
                nn.Linear(2048, out_channels),
            )
        else:
            raise ValueError(f"unknown pool {pool!r}: use adaptive, attention, spatial or spatial_v2")

    def convert_to_fp16(self):
        """Cast the torso's convolutions to float16."""
        for blocks in (self.input_blocks, self.middle_block):
            blocks.apply(convert_module_to_f16)

    def convert_to_fp32(self):
        """Undo convert_to_fp16."""
        for blocks in (self.input_blocks, self.middle_block):
            blocks.apply(convert_module_to_f32)

    def forward(self, x, timesteps):
        """x: [N, C, H, W]; timesteps: [N] -> logits [N, out_channels]."""
        emb = self._embed(timesteps)
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                means.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(th.cat(means, dim=-1))
        return self.out(h.type(x.dtype))
