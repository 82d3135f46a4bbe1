"""GLIDE's text-conditional ADM: the UNet of unet.py plus a transformer that encodes the caption.

The caption's tokens [N, L] (GPT-2 BPE, padded with the end token; mask True on real tokens) are embedded
(token + position, padding slots replaced by a learned padding embedding), encoded by a pre-LayerNorm
transformer without attention mask, and used twice: the last slot, projected, is added to the timestep
embedding; the whole encoding [N, W, L] is attended to by every attention block (encoder_kv: text keys and
values before the image's, one softmax). Parameter names and order are glide-text2im's, so its checkpoints
load with strict=True; the empty caption (mask all False) is the unconditional branch of classifier-free
guidance.
"""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from ..unet import UNetModel


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (float32 gains) and cast back to the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention over x [N, L, W], unmasked: c_qkv packs each head's [q | k | v]."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x):
        n, length, width = x.shape
        head = width // self.heads
        q, k, v = self.c_qkv(x).view(n, length, self.heads, 3 * head).split(head, dim=-1)
        scale = 1 / math.sqrt(math.sqrt(head))  # on q and k each: steadier in float16 than on their product
        weight = th.einsum("nqhc,nkhc->nhqk", q * scale, k * scale)
        weight = th.softmax(weight.float(), dim=-1).type(weight.dtype)
        return self.c_proj(th.einsum("nhqk,nkhc->nqhc", weight, v).reshape(n, length, width))


class MLP(nn.Module):
    """W -> 4W -> W with the exact (erf) GELU."""

    def __init__(self, width):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """`layers` TransformerBlocks of width W: [N, L, W] -> [N, L, W]."""

    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([TransformerBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


def _cast_linear(module, dtype):
    if isinstance(module, nn.Linear):
        module.to(dtype)


class TextUNet(UNetModel):
    """ADM's UNet conditioned on a caption (GLIDE's Text2ImUNet), optionally also on a known image and
    its mask (inpaint: input [x, image * mask, mask]) and on a low-resolution image (super_res: input
    [x, low_res upsampled bilinearly]). The image's channels come first: a base model's input weights start a
    variant with zeros for the rest (checkpoint.widen_input_channels).

    forward(x [N, C, H, W], timesteps [N], tokens [N, L] long, mask [N, L] bool, low_res [N, C, h, w],
    inpaint_image [N, C, H, W], inpaint_mask [N, 1, H, W] (1 = known)) -> [N, out_channels, H, W].
    """

    def __init__(
        self,
        *,
        text_ctx,                       # caption length L in tokens
        xf_width,                       # transformer width W
        xf_layers,                      # transformer blocks
        xf_heads,                       # transformer attention heads
        xf_final_ln,                    # a LayerNorm after the last block
        xf_padding,                     # a learned embedding in the padding slots (GLIDE's released models)
        n_vocab,                        # token vocabulary size (GPT-2's 50257)
        in_channels,                    # image channels (3: RGB)
        inpaint=False,                  # known image and mask as extra input channels
        super_res=False,                # a low-resolution image as extra input channels
        cache_text_emb=False,           # keep the caption's encoding across calls (sampling; see del_cache)
        caption_dropout_prob=0.0,       # in training, drop the caption (mask all False) with this probability
        tokenizer=None,                 # the tokenizer, kept as .tokenizer (GLIDE's notebooks read it)
        **unet_options,                 # UNetModel's (no classes)
    ):
        extra = (in_channels + 1 if inpaint else 0) + (in_channels if super_res else 0)
        super().__init__(in_channels=in_channels + extra, encoder_channels=xf_width, **unet_options)
        self.image_channels, self.inpaint, self.super_res = in_channels, inpaint, super_res
        self.text_ctx, self.xf_width, self.xf_padding = text_ctx, xf_width, xf_padding
        self.tokenizer = tokenizer
        # GLIDE's release leaves these uninitialised (its weights are loaded). Positions and padding start at the
        # scale of nn.Embedding's N(0, 1) tokens, so that word order is visible from the first step: at
        # N(0, 0.01^2) "a red coat on a blue background" and its colours swapped encode alike (docs/text.md).
        self.positional_embedding = nn.Parameter(th.randn(text_ctx, xf_width))
        if xf_padding:
            self.padding_embedding = nn.Parameter(th.randn(text_ctx, xf_width))
        self.transformer = Transformer(xf_width, xf_layers, xf_heads)
        self.final_ln = LayerNorm32(xf_width) if xf_final_ln else None
        self.token_embedding = nn.Embedding(n_vocab, xf_width)
        self.transformer_proj = nn.Linear(xf_width, 4 * self.model_channels)
        self.cache_text_emb, self.cache = cache_text_emb, None
        if not 0 <= caption_dropout_prob < 1:
            raise ValueError(f"caption_dropout_prob must be in [0, 1), got {caption_dropout_prob}")
        if caption_dropout_prob and not xf_padding:
            raise ValueError("caption dropout trains the empty caption (all padding): it needs xf_padding")
        self.caption_dropout_prob = caption_dropout_prob
        if self.dtype == th.float16:
            self.convert_to_fp16()

    def convert_to_fp16(self):
        """As GLIDE converts: the UNet's convolutions, the transformer's linear layers, transformer_proj and
        the token embedding to float16; LayerNorms and the positional and padding embeddings stay float32."""
        super().convert_to_fp16()
        if hasattr(self, "transformer"):
            self._text_to(th.float16)

    def convert_to_fp32(self):
        super().convert_to_fp32()
        if hasattr(self, "transformer"):
            self._text_to(th.float32)

    def _text_to(self, dtype):
        self.transformer.apply(lambda module: _cast_linear(module, dtype))
        self.transformer_proj.to(dtype)
        self.token_embedding.to(dtype)

    def encode_text(self, tokens, mask=None):
        """tokens [N, L], mask [N, L] -> {"xf_proj": [N, 4 * model_channels], "xf_out": [N, W, L]}."""
        if self.cache_text_emb and self.cache is not None:
            if not th.equal(tokens, self.cache["tokens"]):
                raise ValueError("cache_text_emb: these tokens are not the cached caption's; call del_cache() "
                                 "before sampling another batch")
            return self.cache
        x = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.xf_padding:
            if mask is None:
                raise ValueError("a model with xf_padding needs the token mask: pass mask=[N, text_ctx] (bool)")
            x = th.where(mask[..., None], x, self.padding_embedding[None])
        x = self.transformer(x.to(self.dtype))
        if self.final_ln is not None:
            x = self.final_ln(x)
        encoded = {"xf_proj": self.transformer_proj(x[:, -1]), "xf_out": x.permute(0, 2, 1)}
        if self.cache_text_emb:
            self.cache = dict(tokens=tokens, **{key: value.detach() for key, value in encoded.items()})
        return encoded

    def del_cache(self):
        """Forget the cached caption encoding (cache_text_emb)."""
        self.cache = None

    def forward(self, x, timesteps, tokens=None, mask=None, low_res=None, inpaint_image=None, inpaint_mask=None):
        if tokens is None:
            raise ValueError("a text model needs the caption's tokens: pass tokens=[N, text_ctx] and mask")
        inputs = [x]
        if self.inpaint:
            image = th.zeros_like(x) if inpaint_image is None else inpaint_image
            known = th.zeros_like(x[:, :1]) if inpaint_mask is None else inpaint_mask
            inputs += [image * known, known]
        if self.super_res:
            if low_res is None:
                raise ValueError("a super-resolution text model needs low_res=[N, C, h, w]")
            inputs.append(F.interpolate(low_res, x.shape[2:], mode="bilinear", align_corners=False))
        if self.training and self.caption_dropout_prob:
            kept = th.rand(tokens.shape[:1], device=tokens.device) >= self.caption_dropout_prob
            mask = mask & kept[:, None]
        text = self.encode_text(tokens, mask)
        emb = self._embed(timesteps)
        emb = emb + text["xf_proj"].to(emb)
        return self._denoise(th.cat(inputs, dim=1) if len(inputs) > 1 else x, emb, text["xf_out"])
