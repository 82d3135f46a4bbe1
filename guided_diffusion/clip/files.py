"""GLIDE's released noisy-CLIP files (clip_image_enc.pt, clip_text_enc.pt), read from a local path into an
encoder strictly; a missing or wrong file is refused in one line naming it and the fix. Nothing is downloaded."""

from pathlib import Path

import torch as th

from ..errors import UsageError

RELEASED = {"image": "clip_image_enc.pt", "text": "clip_text_enc.pt"}
# A key only the other side's file has, to tell a swapped pair of files.
OWN_KEY = {"image": "blocks.input.patch_proj", "text": "blocks.input.w_voc"}


def load_encoder(encoder, path, side):
    """Load the state dict file at path into encoder with strict=True; side: "image" or "text", the
    encoder's. Returns the encoder."""
    path, name = Path(path), RELEASED[side]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file: give the local path of GLIDE's {name} (the {side} encoder "
                                "of glide-text2im's noisy CLIP)")
    try:
        state = th.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{path} is not a torch file of tensors ({type(exc).__name__}): expected GLIDE's "
                         f"{name}") from exc
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict: expected GLIDE's {name}")
    mismatch = _mismatch(encoder.state_dict(), state)
    if mismatch:
        other = next(s for s in RELEASED if s != side)
        fix = (f"it is GLIDE's {RELEASED[other]}: give it as the {other} encoder's file" if OWN_KEY[other] in state
               else f"expected GLIDE's {name}, for a model built from GLIDE's clip config")
        raise UsageError(f"{path} does not fit the {side} encoder ({mismatch}): {fix}")
    encoder.load_state_dict(state, strict=True)
    return encoder


def _mismatch(expected, found):
    """How found's {key: tensor} differs from expected's, in a few words ("" when they fit)."""
    shape = {key: list(getattr(value, "shape", [])) for key, value in found.items()}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [key for key in expected if key in found and shape[key] != list(expected[key].shape)]
    parts = [f"{len(missing)} keys missing, first {missing[0]}" if missing else "",
             f"{len(unexpected)} unexpected, first {unexpected[0]}" if unexpected else "",
             (f"{len(reshaped)} of another shape, first {reshaped[0]} {shape[reshaped[0]]} vs "
              f"{list(expected[reshaped[0]].shape)}") if reshaped else ""]
    return "; ".join(part for part in parts if part)
