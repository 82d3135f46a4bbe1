"""Small building blocks shared by the networks: norms, convs, embeddings, checkpointing."""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F
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
    """The sinusoidal features of (possibly fractional) timesteps, computed in float32.

    timesteps: [N] (any real or integer dtype); returns [N, dim] float32. With k = dim // 2 frequencies
    f_j = max_period ** (-j / k), j = 0 .. k - 1, row n is [cos(t_n f_0) .. cos(t_n f_{k-1}),
    sin(t_n f_0) .. sin(t_n f_{k-1})], plus one zero column when dim is odd.
    Float order (it fixes the bits): f_j = exp((j * -ln(max_period)) / k), then t_n * f_j.
    """
    k = dim // 2
    j = th.arange(k, dtype=th.float32, device=timesteps.device)
    freqs = j.mul(-math.log(max_period)).div(k).exp()
    angles = th.outer(timesteps.float(), freqs)
    features = th.cat((angles.cos(), angles.sin()), dim=1)
    return F.pad(features, (0, dim - 2 * k))


def checkpoint(func, inputs, params, flag):
    """Run func(*inputs), recomputing activations in the backward pass when flag is set.

    Uses torch's non-reentrant checkpoint, which handles parameters itself; `params` is kept
    for the release's signature.
    """
    del params
    if flag and th.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
