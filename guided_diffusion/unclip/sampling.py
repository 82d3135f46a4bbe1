"""What unclip_sample.py draws from: the embeddings of image variations and of a slerp between two images,
classifier-free guidance with the zero embedding, and the grids."""

import numpy as np
import torch as th

from ..guidance import ClassifierFreeGuidance
from ..sample_io import save_grid, to_uint8_nhwc
from ..text.tokenizer import tokens_and_mask


def slerp(e_a, e_b, alphas):
    """Points [K, D] along the great circle from the unit e_a [D] to the unit e_b [D] at fractions alphas [K]:
    sin((1 - a) w) / sin(w) e_a + sin(a w) / sin(w) e_b with cos(w) = <e_a, e_b> (a straight line when w ~ 0)."""
    alphas = th.as_tensor(alphas, dtype=th.float64)[:, None]
    a, b = e_a.double(), e_b.double()
    w = th.arccos((a @ b).clamp(-1, 1))
    if w < 1e-6:
        points = (1 - alphas) * a + alphas * b
    else:
        points = (th.sin((1 - alphas) * w) * a + th.sin(alphas * w) * b) / th.sin(w)
    return points.to(e_a.dtype)


def interpolation(e_a, e_b, steps):
    """The steps >= 2 embeddings [steps, D] of --interpolate: slerp at a = 0, 1 / (steps - 1), ..., 1."""
    return slerp(e_a, e_b, th.linspace(0, 1, steps))


def variations(embeddings, per_image):
    """Each input's embedding [M, D] repeated for its per_image samples: [M * per_image, D], sample i of input i //
    per_image (inputs in order)."""
    return embeddings.repeat_interleave(per_image, dim=0)


def decoder_guidance(scale, model):
    """--guidance_scale W: classifier-free guidance whose unconditional branch is the zero embedding (and the empty
    caption for a captioned decoder); none at W = 1."""
    if scale == 1:
        return ()
    unconditional = {"clip_emb": th.zeros(model.clip_emb_dim)}
    if hasattr(model, "text_ctx"):
        tokens, mask, _ = tokens_and_mask([""], model.text_ctx)
        unconditional.update(tokens=tokens[0], mask=mask[0])
    return (ClassifierFreeGuidance(scale, unconditional=unconditional),)


def caption_kwargs(model, n, device):
    """The model keywords of a captioned decoder's empty caption for n samples ({} for an embedding-only one)."""
    if not hasattr(model, "text_ctx"):
        return {}
    tokens, mask, _ = tokens_and_mask([""] * n, model.text_ctx)
    return {"tokens": tokens.to(device), "mask": mask.to(device)}


def save_rows(rows, path):
    """One grid row per list of images, each image [C, H, W] in [-1, 1] or uint8 [H, W, 3]; rows of equal length."""
    cells = [to_uint8_nhwc(image[None])[0].cpu().numpy() if th.is_tensor(image) else image
             for row in rows for image in row]
    save_grid(np.stack(cells), path, cols=len(rows[0]))
    return path
