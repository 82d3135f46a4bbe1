"""GLIDE's noisy-CLIP encoders, in glide-text2im's layout: `blocks.input`, `blocks.block_{i}`, `blocks.output`.

The text encoder reads CLIP tokens causally and takes its features at each text's end token; the image
encoder cuts an image into patches and reads them with a timestep embedding in the class-token slot, so
that it judges x_t at any noise level (without timesteps, a learned class token: a clean CLIP).
"""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from .transformer import Affine, LayerNorm, TransformerBlock, attention_bias

# CLIP's pixel statistics, per RGB channel, on the 0..255 scale.
CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)


class TextEmbedding(nn.Module):
    """Token embedding `w_voc` [n_vocab, width] plus positional embedding `w_pos` [n_context, width]."""

    def __init__(self, n_vocab, n_context, width):
        super().__init__()
        self.w_voc = nn.Parameter(th.randn(n_vocab, width) * 0.02)
        self.w_pos = nn.Parameter(th.randn(n_context, width) * 0.01)

    def forward(self, tokens):
        """tokens: [N, n_context] -> [N, n_context, width]."""
        return F.embedding(tokens, self.w_voc) + self.w_pos[None]


class ImageEmbedding(nn.Module):
    """Patches of a normalised image projected by `patch_proj` [width, 3, p, p], after a first token from the
    timestep embedding `w_t` [n_timesteps, width] (or the learned `pred_state` [width] when n_timesteps is 0),
    plus `w_pos` [1 + (size / p)^2, width], then LayerNorm `ln`."""

    def __init__(self, image_size, patch_size, width, n_timesteps):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.n_timesteps = image_size, patch_size, n_timesteps
        if n_timesteps:
            self.w_t = nn.Parameter(th.randn(n_timesteps, width) / math.sqrt(width))
        else:
            self.pred_state = nn.Parameter(th.randn(width) / math.sqrt(width))
        patch_std = math.sqrt(2 / (width * patch_size**2))
        self.patch_proj = nn.Parameter(th.randn(width, 3, patch_size, patch_size) * patch_std)
        self.w_pos = nn.Parameter(th.randn(1 + (image_size // patch_size) ** 2, width) / math.sqrt(width))
        self.ln = LayerNorm(width)
        self.register_buffer("means", th.tensor(CHANNEL_MEANS)[None, :, None, None], persistent=False)
        self.register_buffer("stds", th.tensor(CHANNEL_STDS)[None, :, None, None], persistent=False)

    def forward(self, image, t=None):
        """image: [N, 3, size, size], 0..255; t: [N] integer timesteps in [0, n_timesteps) (None without
        them) -> [N, 1 + patches, width]."""
        self._check(image, t)
        x = F.conv2d((image - self.means) / self.stds, self.patch_proj, stride=self.patch_size)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        first = F.embedding(t, self.w_t)[:, None] if self.n_timesteps else self.pred_state[None, None].expand(
            x.shape[0], -1, -1)
        return self.ln(th.cat((first, x), dim=1) + self.w_pos[None])

    def _check(self, image, t):
        size = self.image_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size):
            raise ValueError(f"the image encoder takes images [N, 3, {size}, {size}], got {list(image.shape)}")
        if not self.n_timesteps:
            if t is not None:
                raise ValueError("this image encoder was built without timesteps (n_timesteps 0): call it without t")
            return
        if t is None or t.shape != image.shape[:1]:
            got = "none" if t is None else list(t.shape)
            raise ValueError(f"the noise-aware image encoder takes one timestep per image, t [{image.shape[0]}], "
                             f"got {got}")


class TextHead(nn.Module):
    """The features of a text: `f` (no bias) of LayerNorm `ln` of the slot of its end token."""

    def __init__(self, width, n_embd):
        super().__init__()
        self.ln = LayerNorm(width)
        self.f = Affine(width, n_embd, math.sqrt(2 / (width + n_embd)), bias=False)

    def forward(self, x, text_len):
        """x: [N, L, width]; text_len: [N], each text's end-token index + 1 -> [N, n_embd]."""
        index = (text_len - 1)[:, None, None].expand(-1, 1, x.shape[2])
        return self.f(self.ln(th.gather(x, 1, index))[:, 0])


class ImageHead(nn.Module):
    """The features of an image: `f` (no bias) of LayerNorm `ln` of its first (timestep) slot."""

    def __init__(self, width, n_embd):
        super().__init__()
        self.ln = LayerNorm(width)
        self.f = Affine(width, n_embd, math.sqrt(2 / (width + n_embd)), bias=False)

    def forward(self, x):
        """x: [N, L, width] -> [N, n_embd]."""
        return self.f(self.ln(x[:, :1])[:, 0])


class Encoder(nn.Module):
    """input, n_blocks transformer blocks of n_heads * head_width channels, output: GLIDE's `blocks` layout."""

    def __init__(self, embedding, head, width, n_heads, n_blocks, n_context, causal):
        super().__init__()
        self.n_blocks = n_blocks
        blocks = {"input": embedding}
        blocks.update({f"block_{i}": TransformerBlock(width, n_heads, n_blocks) for i in range(n_blocks)})
        blocks["output"] = head
        self.blocks = nn.ModuleDict(blocks)
        self.register_buffer("attn_bias", attention_bias(n_context, causal), persistent=False)

    def transform(self, x):
        """x: [N, n_context, width] through the transformer blocks."""
        for i in range(self.n_blocks):
            x = self.blocks[f"block_{i}"](x, self.attn_bias)
        return x


class TextEncoder(Encoder):
    """CLIP tokens [N, max_text_len] and their lengths -> text features [N, n_embd] (causal attention)."""

    def __init__(self, n_bpe_vocab, max_text_len, n_embd, n_head, n_xf_blocks, n_head_state=64):
        """n_bpe_vocab: rows of the token embedding; max_text_len: tokens a text is read as; n_embd: the
        embedding's dimension; n_head heads of n_head_state channels; n_xf_blocks transformer blocks."""
        width = n_head * n_head_state
        super().__init__(TextEmbedding(n_bpe_vocab, max_text_len, width), TextHead(width, n_embd), width, n_head,
                         n_xf_blocks, max_text_len, causal=True)
        self.max_text_len = max_text_len

    def forward(self, tokens, text_len):
        """tokens: [N, max_text_len] long ([start, ..., end, 0, ...]); text_len: [N], each end token's index + 1."""
        if tokens.dim() != 2 or tokens.shape[1] != self.max_text_len:
            raise ValueError(f"the text encoder reads tokens [N, {self.max_text_len}] (padded with 0), got "
                             f"{list(tokens.shape)}")
        return self.blocks["output"](self.transform(self.blocks["input"](tokens)), text_len)


class ImageEncoder(Encoder):
    """Images [N, 3, image_size, image_size] on the 0..255 scale and timesteps [N] -> image features [N, n_embd]."""

    def __init__(self, image_size, patch_size, n_embd, n_head, n_xf_blocks, n_head_state=64, n_timestep=0):
        """patch_size: pixels of a patch's side; n_timestep: the diffusion's steps T (0: a clean encoder); the
        rest as TextEncoder's."""
        width = n_head * n_head_state
        embedding = ImageEmbedding(image_size, patch_size, width, n_timestep)
        super().__init__(embedding, ImageHead(width, n_embd), width, n_head, n_xf_blocks,
                         1 + (image_size // patch_size) ** 2, causal=False)

    def forward(self, image, timesteps=None):
        return self.blocks["output"](self.transform(self.blocks["input"](image, timesteps)))
