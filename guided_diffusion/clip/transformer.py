"""The transformer of GLIDE's noisy CLIP: pre-LN residual blocks under glide-text2im's parameter names
(`ln.g`, `ln.b`; `f_q`, `f_k`, `f_v`, `f_c`; `f_1`, `f_2`; each linear map's `w` [out, in] and `b` [out]).

GLIDE's float op order, so that float32 outputs agree bit for bit: the context is zero-padded to a multiple
of BLOCK_SIZE tokens and masked by an additive bias of -1e10, q and k are each scaled by head_dim^-1/4
before their product, LayerNorm (eps 1e-5) runs in float32, the MLP's GELU is the exact (erf) one.
"""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F

BLOCK_SIZE = 32  # the attention's context is padded to a multiple of this many tokens
MASKED = -1e10  # the bias of a query-key pair that may not attend


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension in float32: gain `g` and bias `b` [width]."""

    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.g = nn.Parameter(th.ones(width))
        self.b = nn.Parameter(th.zeros(width))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x.float(), self.g.shape, self.g, self.b, self.eps)


class Affine(nn.Module):
    """x @ w.T + b: weight `w` [n_out, n_in] drawn N(0, std^2), bias `b` [n_out] zero (none without bias)."""

    def __init__(self, n_in, n_out, std, bias=True):
        super().__init__()
        self.w = nn.Parameter(th.randn(n_out, n_in) * std)
        self.b = nn.Parameter(th.zeros(n_out)) if bias else None

    def forward(self, x):
        return F.linear(x, self.w, self.b)


def attention_bias(n_context, causal):
    """[L, L] additive attention mask over the context padded to L, the next multiple of BLOCK_SIZE: 0 where
    query i may attend to key j (both real tokens, and j <= i when causal), MASKED elsewhere."""
    padded = BLOCK_SIZE * math.ceil(n_context / BLOCK_SIZE)
    real = th.arange(padded) < n_context
    allowed = real[:, None] & real[None, :]
    if causal:
        allowed &= th.ones(padded, padded, dtype=th.bool).tril()
    return th.zeros(padded, padded).masked_fill(~allowed, MASKED)


class ResidualAttention(nn.Module):
    """x + f_c(softmax(q k^T + bias) v), q, k, v = f_q, f_k, f_v of ln(x) (f_k without bias), n_heads heads."""

    def __init__(self, width, n_heads, n_resblocks):
        """width: channels; n_heads: heads of width // n_heads channels; n_resblocks: the residual branches
        of the whole stack (2 per block), which scales the output map's initial weights down."""
        super().__init__()
        self.n_heads = n_heads
        self.ln = LayerNorm(width)
        self.f_q = Affine(width, width, 1 / math.sqrt(width))
        self.f_k = Affine(width, width, 1 / math.sqrt(width), bias=False)
        self.f_v = Affine(width, width, 1 / math.sqrt(width))
        self.f_c = Affine(width, width, 1 / math.sqrt(width * n_resblocks**2))
        self.scale = math.sqrt(1 / math.sqrt(width // n_heads))  # head_dim^-1/4, rounded as GLIDE rounds it

    def forward(self, x, bias):
        """x: [N, L, width] with L <= the bias's padded length; bias: attention_bias(L, ...) -> [N, L, width]."""
        n, length, width = x.shape
        padded = bias.shape[-1]
        h = self.ln(x)
        q, k, v = (F.pad(f(h), (0, 0, 0, padded - length)).view(n, padded, self.n_heads, -1).permute(0, 2, 1, 3)
                   for f in (self.f_q, self.f_k, self.f_v))
        weights = th.softmax(th.einsum("nhqd,nhkd->nhqk", q * self.scale, k * self.scale) + bias, dim=-1)
        out = th.einsum("nhqk,nhkd->nhqd", weights, v).permute(0, 2, 1, 3).reshape(n, padded, width)
        return x + self.f_c(out[:, :length])


class ResidualMLP(nn.Module):
    """x + f_2(gelu(f_1(ln(x)))), hidden width 4 * width."""

    def __init__(self, width, n_resblocks):
        super().__init__()
        self.ln = LayerNorm(width)
        self.f_1 = Affine(width, 4 * width, math.sqrt(2 / (4 * width)))
        self.f_2 = Affine(4 * width, width, 1 / math.sqrt(width * n_resblocks**2))

    def forward(self, x):
        return x + self.f_2(F.gelu(self.f_1(self.ln(x))))


class TransformerBlock(nn.Module):
    """f_mlp(f_attn(x)): one attention and one MLP residual block."""

    def __init__(self, width, n_heads, n_blocks):
        """n_blocks: the blocks of the whole stack (for the initial weights' scale)."""
        super().__init__()
        self.f_attn = ResidualAttention(width, n_heads, 2 * n_blocks)
        self.f_mlp = ResidualMLP(width, 2 * n_blocks)

    def forward(self, x, bias):
        return self.f_mlp(self.f_attn(x, bias))
