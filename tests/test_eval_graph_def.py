"""The GraphDef reader and .pb weight loading on GraphDefs written here with a tiny protobuf encoder."""

import struct

import numpy as np
import pytest
import torch as th

from evaluations import graph_def, weights
from evaluations.inception import ConvBN, InceptionV3


# --- a tiny protobuf encoder (wire format: varint keys, length-delimited messages) -------------
def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number, payload):  # length-delimited (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number, value):
    return _varint(number << 3) + _varint(value)


def _field_float(number, value):  # fixed32 (wire type 5)
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _shape(shape):
    return b"".join(_field(2, _field_varint(1, d)) for d in shape)


def _tensor(array, packed_values=False):
    array = np.asarray(array, dtype=np.float32)
    body = _field_varint(1, 1) + _field(2, _shape(array.shape))  # DT_FLOAT
    if packed_values:
        return body + _field(5, array.tobytes())
    return body + _field(4, array.tobytes())


def _attr(key, value):
    return _field(5, _field(1, key.encode()) + _field(2, value))


def _node(name, op, inputs=(), attrs=b""):
    body = _field(1, name.encode()) + _field(2, op.encode())
    body += b"".join(_field(3, i.encode()) for i in inputs)
    return _field(1, body + attrs)


def _const(name, array):
    attrs = _attr("value", _field(8, _tensor(array))) + _attr("dtype", _field_varint(6, 1))
    return _node(name, "Const", attrs=attrs)


def _conv_nodes(scope, conv, gamma=None, eps=0.001):
    """The graph's nodes for one conv unit: conv2d_params (HWIO), Conv2D, batchnorm consts and op, ReLU."""
    scale = gamma is not None
    gamma = np.ones(len(conv.beta), np.float32) if gamma is None else gamma
    bn = f"{scope}/batchnorm"
    return b"".join(
        [
            _const(f"{scope}/conv2d_params", conv.weight.numpy().transpose(2, 3, 1, 0)),
            _node(f"{scope}/Conv2D", "Conv2D", ["input", f"{scope}/conv2d_params"]),
            _const(f"{bn}/beta", conv.beta.numpy()),
            _const(f"{bn}/gamma", gamma),
            _const(f"{bn}/moving_mean", conv.mean.numpy()),
            _node(f"{bn}/moving_mean/read", "Identity", [f"{bn}/moving_mean"]),
            _const(f"{bn}/moving_variance", conv.var.numpy()),
            _node(
                bn,
                "BatchNormWithGlobalNormalization",
                [f"{scope}/Conv2D", f"{bn}/moving_mean/read:0", f"{bn}/moving_variance", f"{bn}/beta", f"{bn}/gamma"],
                _attr("variance_epsilon", _field_float(4, eps))
                + _attr("scale_after_normalization", _field_varint(5, scale)),
            ),
            _node(scope, "Relu", [bn]),
        ]
    )


def _randomize(model, seed=0):
    generator = th.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, ConvBN):
            module.weight.data = th.randn(module.weight.shape, generator=generator) * 0.1
            module.beta.copy_(th.randn(module.beta.shape, generator=generator))
            module.mean.copy_(th.randn(module.mean.shape, generator=generator))
            module.var.copy_(th.rand(module.var.shape, generator=generator) + 0.5)
    model.softmax_weights.copy_(th.randn(model.softmax_weights.shape, generator=generator))
    return model


def test_inception_weights_round_trip_through_a_graph_def(tmp_path):
    source = _randomize(InceptionV3())
    nodes = [
        _node("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"]),
        _const("softmax/weights", source.softmax_weights.numpy()),
        _node("softmax/weights/read", "Identity", ["softmax/weights"]),
        _node("softmax/logits/MatMul", "MatMul", ["pool_3/_reshape", "softmax/weights/read:0"]),
    ]
    for name, module in source.named_modules():
        if isinstance(module, ConvBN):
            nodes.append(_conv_nodes(name.replace(".", "/"), module))
    path = tmp_path / "classify_image_graph_def.pb"
    path.write_bytes(b"".join(nodes))

    loaded = weights.load_inception(str(path))
    assert loaded.has_softmax
    expected = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert th.equal(value, expected[key]), key
    probs = loaded.softmax(th.rand(3, 2048))
    assert probs.shape == (3, 1008) and th.allclose(probs.sum(1), th.ones(3))


def test_graph_def_reader_parses_names_ops_inputs_and_attributes(tmp_path):
    scalar = _node("Sub/y", "Const", attrs=_attr("value", _field(8, _field_varint(1, 1) + _field_float(5, 128.0))))
    packed = _node("size", "Const", attrs=_attr("value", _field(8, _tensor([[1.5, -2.0]], packed_values=True))))
    attrs = _attr("padding", _field(2, b"VALID")) + _attr("k", _field_varint(3, 8))
    flags = _node("pool_3", "AvgPool", ["mixed_10/join"], attrs)
    path = tmp_path / "g.pb"
    path.write_bytes(scalar + packed + flags)
    nodes = graph_def.read_graph_def(str(path))
    assert nodes["Sub/y"].attr["value"] == np.float32(128.0)
    np.testing.assert_array_equal(nodes["size"].attr["value"], [[1.5, -2.0]])
    assert nodes["pool_3"].op == "AvgPool" and nodes["pool_3"].inputs == ["mixed_10/join"]
    assert nodes["pool_3"].attr == {"padding": b"VALID", "k": 8}


def test_scale_after_normalization_is_folded_into_the_conv():
    source = _randomize(InceptionV3()).conv_3
    gamma = np.linspace(0.5, 2.0, len(source.beta), dtype=np.float32)
    nodes = {}
    for _, _, value in graph_def.iter_fields(_conv_nodes("conv_3", source, gamma, eps=0.01)):
        node = graph_def.Node(value)
        nodes[node.name] = node
    target = ConvBN(64, 80, 1)
    weights._load_conv_bn(target, nodes, "conv_3")
    x = th.randn(2, 64, 5, 5)
    conv = th.nn.functional.conv2d(x, source.weight)
    norm = (conv - source.mean[:, None, None]) / th.sqrt(source.var[:, None, None] + 0.01)
    expected = th.relu(norm * th.from_numpy(gamma)[:, None, None] + source.beta[:, None, None])
    assert target.eps == pytest.approx(0.01)
    assert th.allclose(target(x), expected, atol=1e-5)


def test_unreadable_or_foreign_graphs_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\x0f\xff\xff")
    with pytest.raises(graph_def.GraphDefError, match="not a readable TensorFlow GraphDef"):
        graph_def.read_graph_def(str(garbage))
    other = tmp_path / "other.pb"
    other.write_bytes(_node("x", "Placeholder"))
    with pytest.raises(KeyError, match="conv/conv2d_params"):
        weights.load_inception(str(other))
