"""Loading model checkpoints, with errors that say which flag does not fit the file.

A model file is a torch state dict (.pt, read with weights_only=True) or a .safetensors file of one
(tensors only, as `scripts/export.py --to safetensors` writes). A state dict's keys and shapes reveal
most architecture flags (width, learned sigma, classes, AdaGN, BigGAN resampling, blocks, attention
placement, classifier pool). When a checkpoint does not fit the model built from the command line, we
compare what each reveals and name the flags.
"""

import io
import re

import torch as th
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from . import dist_util, logger
from .errors import UsageError

EXPECTED_FILE = (
    "a model state dict saved by training or released (modelNNNNNN.pt, ema_RATE_NNNNNN.pt, or e.g. "
    "256x256_diffusion.pt, GLIDE's base.pt), or a .safetensors file of one"
)


INPUT_LAYER = "input_blocks.0.0.weight"  # the UNet's first convolution: its in-channels are the model's inputs


class CheckpointMismatchError(UsageError):
    """The checkpoint's keys or shapes do not fit the model built from the flags."""


class CheckpointFileError(ValueError):
    """The file is not what was expected: empty, truncated, or another kind of file."""


def read_torch_file(path, expected=EXPECTED_FILE, map_location="cpu"):
    """torch.load(path, weights_only=True), read once and shared across ranks.

    Raises FileNotFoundError for a missing file, and CheckpointFileError naming the file and
    `expected` (what the caller wanted, in words) when it is empty, truncated or not a torch file.
    """
    return _torch_load(path, _read_bytes(path, expected), expected, map_location)


def read_state_dict(path):
    """Read a model state dict {name: tensor} on the CPU from a torch or a safetensors file (told
    apart by the name's .safetensors or by the content); errors as read_torch_file's, and
    CheckpointFileError when the file holds something else (an optimizer or trainer state)."""
    data = _read_bytes(path, EXPECTED_FILE)
    if str(path).endswith(".safetensors") or _has_safetensors_header(data):
        return _safetensors_load(path, data)
    state_dict = _torch_load(path, data, EXPECTED_FILE, "cpu")
    if not isinstance(state_dict, dict) or not all(isinstance(v, th.Tensor) for v in state_dict.values()):
        raise CheckpointFileError(
            f"{path!r} holds a {type(state_dict).__name__}, not a model state dict (a mapping of parameter "
            f"names to tensors): expected {EXPECTED_FILE}, not an optimizer (optNNNNNN.pt) or trainer state "
            "(stateNNNNNN.pt) file"
        )
    return state_dict


def write_safetensors(state_dict, path):
    """Write a state dict {name: tensor} as a .safetensors file (contiguous copies: tensors only, no
    shared storage), which read_state_dict reads back."""
    save_file({name: t.detach().contiguous().clone() for name, t in state_dict.items()}, path,
              metadata={"format": "pt"})


def _read_bytes(path, expected):
    """The file's bytes, read on rank 0 and shared with every rank; CheckpointFileError if it is empty."""
    data = dist_util.read_bytes_once(path)
    if not data:
        raise CheckpointFileError(f"{path!r} is empty: expected {expected}")
    return data


def _torch_load(path, data, expected, map_location):
    try:
        return th.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointFileError(f"{path!r} {_unreadable_reason(data, exc)}: expected {expected}") from exc


def _has_safetensors_header(data):
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then '{"'."""
    return data[8:10] == b'{"'


def _safetensors_load(path, data):
    try:
        return load_safetensors(data)
    except Exception as exc:
        reason = (f"is truncated or damaged ({len(data)} bytes; an interrupted save or copy?)"
                  if _has_safetensors_header(data) else "is not a safetensors file")
        raise CheckpointFileError(f"{path!r} {reason}: expected {EXPECTED_FILE}") from exc


def _unreadable_reason(data, exc):
    """Why torch.load failed on `data` (a file's bytes), in words."""
    if data[:4] != b"PK\x03\x04" and data[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        return "is not a torch checkpoint"
    if "Weights only load failed" in str(exc):
        return "holds Python objects, not only tensors (a pickled model? save model.state_dict() instead)"
    if data[:4] == b"PK\x03\x04":  # torch's zip format, cut short or damaged
        return f"is truncated or damaged ({len(data)} bytes; an interrupted save or copy?)"
    return "is not a torch checkpoint"


def load_checkpoint(model, path, return_state_dict=False, widen=False):
    """Load `path` into `model` strictly; raise CheckpointMismatchError naming the likely wrong flags.
    widen (fine-tuning from --init_checkpoint): a base text model's weights start an inpainting or
    super-resolution one, its input layer widened (widen_input_channels, logged); a clean CLIP's start a
    noise-aware one (clip.checkpoint.noise_aware_from_clean, logged).

    Returns the model, or with return_state_dict the file's state dict as read (its own dtypes, e.g.
    the float32 weights behind an fp16 model), widened where it was.
    """
    state_dict = read_state_dict(path)
    if widen:
        from .clip.checkpoint import noise_aware_from_clean

        state_dict = noise_aware_from_clean(state_dict, model, source=path)
        widened = widen_input_channels(state_dict, model, source=path)
        if widened is not state_dict:
            logger.log(f"{path}: a base model's input layer widened from {state_dict[INPUT_LAYER].shape[1]} to "
                       f"{widened[INPUT_LAYER].shape[1]} input channels, the new ones' weights zero (every other "
                       "weight as it is): at step 0 the model computes the base model's function")
        state_dict = widened
    check_state_dict_fits(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    return state_dict if return_state_dict else model


def widen_input_channels(state_dict, model, source="checkpoint"):
    """A base text model's state dict for an inpainting or super-resolution text.model.TextUNet, as GLIDE
    started its variants: the input layer's weight (INPUT_LAYER, in-channels the image's alone) gets zero
    weights for the model's extra input channels, which TextUNet puts after the image's (the known image and
    mask, the low-resolution image), so the widened model computes the base model's function whatever they
    hold. Any other state dict is returned as it is (the same object); one whose input layer is wider than a
    text model's (a variant's weights for a base model) is refused: nothing would use its extra channels."""
    weight = state_dict.get(INPUT_LAYER)
    if weight is None or not hasattr(model, "image_channels"):  # not a text model's
        return state_dict
    given, wanted = weight.shape[1], model.input_blocks[0][0].in_channels
    if given > wanted:
        raise CheckpointMismatchError(
            f"{source} takes {given} input channels, this text model {wanted}: an inpainting or super-resolution "
            "model's weights do not start a model without its inputs; give the checkpoint's --inpaint / "
            "--super_res to fine-tune it, or start from a base model's checkpoint")
    if given != model.image_channels or given == wanted:
        return state_dict
    zeros = weight.new_zeros(weight.shape[0], wanted - given, *weight.shape[2:])
    return {**state_dict, INPUT_LAYER: th.cat([weight, zeros], dim=1)}


def check_state_dict_fits(model, state_dict, source="checkpoint"):
    """Raise CheckpointMismatchError if state_dict's keys or shapes differ from model's."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and expected[k] != found[k]]
    if not (missing or unexpected or reshaped):
        return
    lines = [f"{source} does not fit the model built from these flags:"]
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint, first: {', '.join(missing[:3])}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys in the checkpoint, first: {', '.join(unexpected[:3])}")
    for k in reshaped[:3]:
        lines.append(f"  {k}: checkpoint {list(found[k])}, model {list(expected[k])}")
    if len(reshaped) > 3:
        lines.append(f"  ... {len(reshaped)} shape mismatches in all")
    hints = flag_hints(infer_architecture(found), infer_architecture(expected))
    if hints:
        lines.append("Most likely differing flags (checkpoint vs your flags):")
        lines += [f"  {h}" for h in hints]
    lines.append("For a released checkpoint, --preset NAME sets its exact flags (see README).")
    raise CheckpointMismatchError("\n".join(lines))


def infer_architecture(shapes):
    """What a state dict's {key: shape} reveals about the flags that built it (None: not visible)."""
    arch = {}
    if "time_embed.0.weight" in shapes:
        arch["num_channels"] = shapes["time_embed.0.weight"][1]
    if "input_blocks.0.0.weight" in shapes:
        arch["in_channels"] = shapes["input_blocks.0.0.weight"][1]
    if "out.2.weight" in shapes and len(shapes["out.2.weight"]) == 4:
        arch["out_channels"] = shapes["out.2.weight"][0]
    arch["num_classes"] = shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None
    emb = shapes.get("input_blocks.1.0.emb_layers.1.weight")
    norm = shapes.get("input_blocks.1.0.out_layers.0.weight")
    if emb and norm:
        arch["use_scale_shift_norm"] = emb[0] == 2 * norm[0]
    arch["resampling_convs"] = any(re.search(r"\.(op|conv)\.weight$", k) for k in shapes)
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    arch["input_blocks"] = len(blocks)
    arch["attention_blocks"] = sorted(k.rsplit(".qkv", 1)[0] for k in shapes if k.endswith(".qkv.weight"))
    is_classifier = not any(k.startswith("output_blocks.") for k in shapes)
    arch["classifier_pool"] = _pool_of(shapes) if is_classifier else None
    return arch


def _pool_of(shapes):
    """The classifier head a state dict holds: attention, adaptive, spatial or spatial_v2."""
    if "out.2.positional_embedding" in shapes:
        return "attention"
    if "out.3.weight" in shapes and len(shapes["out.3.weight"]) == 4:
        return "adaptive"
    return "spatial_v2" if "out.3.weight" in shapes else "spatial"


def _out_channels_hint(c, m):
    if c and m and 2 * min(c, m) == max(c, m):
        return f"--learn_sigma: the checkpoint outputs {c} channels, the model {m} (twice the image channels = learned sigma)"
    return (
        f"--image_channels / --learn_sigma: the checkpoint outputs {c} channels, the model {m} "
        "(the image channels, twice that with learned sigma)"
    )


def _label_rows_hint(c, m):
    if c and m and abs(c - m) == 1:
        return (
            f"--class_dropout_prob: the checkpoint's label_emb has {c} rows, the model's {m}; the extra row is "
            "the null class of a model trained with --class_dropout_prob > 0 (give it again, as in training)"
        )
    return (
        f"--class_cond / --num_classes: checkpoint {'has no class embedding' if c is None else f'has {c} classes'}, "
        f"model {'has none' if m is None else f'has {m}'}"
    )


_HINTS = {
    "num_channels": lambda c, m: f"--num_channels (or --classifier_width): checkpoint {c}, flags {m}",
    "in_channels": lambda c, m: (
        f"--image_channels: the checkpoint takes {c} input channels, the model {m} (1 = greyscale, 3 = RGB; "
        "a super-resolution model takes twice its image channels: use super_res_sample.py / super_res_train.py)"
    ),
    "out_channels": lambda c, m: _out_channels_hint(c, m),
    "num_classes": lambda c, m: _label_rows_hint(c, m),
    "use_scale_shift_norm": lambda c, m: f"--use_scale_shift_norm: checkpoint {c}, flags {m}",
    "resampling_convs": lambda c, m: f"--resblock_updown: checkpoint {not c}, flags {not m}",
    "input_blocks": lambda c, m: (
        f"--num_res_blocks / --channel_mult / --image_size: checkpoint has {c} input blocks, model {m}"
    ),
    "attention_blocks": lambda c, m: (
        f"--attention_resolutions: checkpoint has attention in {len(c)} blocks, model in {len(m)}"
    ),
    "classifier_pool": lambda c, m: f"--classifier_pool: checkpoint {c}, flags {m}",
}


def flag_hints(found, expected):
    """Human-readable lines for each inferred property that differs."""
    return [_HINTS[k](found.get(k), expected.get(k)) for k in _HINTS if found.get(k) != expected.get(k)]
