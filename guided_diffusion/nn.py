"""Small building blocks shared by the networks: norms, convs, embeddings, checkpointing."""

import math

import torch as th
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from .losses import mean_flat  # noqa: F401  (re-exported: the release's nn.mean_flat)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (keeps fp16 torsos stable)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    """The normalization layer of every block: GroupNorm with 32 groups."""
    return GroupNorm32(32, channels)


def conv_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D convolution."""
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D average pool."""
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](*args, **kwargs)


def linear(*args, **kwargs):
    """A fully connected layer (kept as a function for the release's API)."""
    return nn.Linear(*args, **kwargs)


def zero_module(module):
    """Zero a module's parameters in place and return it (used for the last layer of each branch)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps.

    timesteps: [N]; returns [N, dim]: cosines of the first half frequencies, then sines,
    frequencies exp(-ln(max_period) * i / half) for i in [0, half).
    """
    half = dim // 2
    freqs = th.exp(
        -math.log(max_period) * th.arange(half, dtype=th.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = th.cat([th.cos(args), th.sin(args)], dim=-1)
    if dim % 2:
        embedding = th.cat([embedding, th.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func, inputs, params, flag):
    """Run func(*inputs), recomputing activations in the backward pass when flag is set.

    Uses torch's non-reentrant checkpoint, which handles parameters itself; `params` is kept
    for the release's signature.
    """
    del params
    if flag and th.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
