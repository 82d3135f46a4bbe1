"""The training images' CLIP image embeddings, computed once and cached on disk, and the CLIP that makes them.

Cache file (npz): "paths" [N] the images' paths relative to the data folder (sorted), "embeddings" [N, D]
float32 unit rows, "fingerprint" the sha256 of the image encoder (encoder_fingerprint). Each image is read as
the CLIP reads it: RGB, its smaller side resized to the CLIP's image size and centre-cropped, in [-1, 1], at
t = 0 for a noise-aware CLIP. A cache of another encoder, or of another set of images, is refused.
"""

import hashlib
import os

import blobfile as bf
import numpy as np
import torch as th
from PIL import Image

from .. import dist_util, logger
from ..errors import UsageError
from ..image_datasets import center_crop_arr, list_image_files


def load_clip_for_embeddings(path, device="cpu"):
    """The CLIP model at path: clip_train.py's checkpoint, GLIDE's or an OpenAI / open_clip file (clip/load.py)."""
    if not path:
        raise UsageError("no CLIP to embed the images with: pass --clip_model_path (a checkpoint of clip_train.py)")
    from ..clip.load import load_clip_model

    return load_clip_model(path, device=device)


def encoder_fingerprint(clip):
    """sha256 (hex) of what makes the image embeddings: the image size, whether t is read, and every tensor of
    the CLIP's image encoder (name, dtype, shape and bytes, in name order): `image_encoder` (GLIDE's layout, this
    project's CLIPs) or `visual` (an OpenAI / open_clip ViT)."""
    digest = hashlib.sha256(f"image_size={clip.image_size};noise_aware={clip.noise_aware}".encode())
    encoder = getattr(clip, "image_encoder", None) or getattr(clip, "visual", None) or clip
    for name, tensor in sorted(encoder.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f";{name}:{values.dtype}:{tuple(values.shape)}:".encode())
        digest.update(values.view(th.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()


def read_clip_images(paths, size):
    """The image files at paths as the CLIP reads them: [N, 3, size, size] float32 in [-1, 1] (RGB, centre crop)."""
    arrays = []
    for path in paths:
        with bf.BlobFile(path, "rb") as f:
            pil_image = Image.open(f)
            pil_image.load()
        arrays.append(center_crop_arr(pil_image.convert("RGB"), size))
    return th.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@th.no_grad()
def embed_images(clip, images):
    """Unit image embeddings [N, D] float32 of clean images [N, C, S, S] in [-1, 1] (C = 1 repeated to 3; resized
    to the CLIP's size when S differs), at t = 0 for a noise-aware CLIP."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[-1] != clip.image_size:
        images = th.nn.functional.interpolate(images, size=clip.image_size, mode="bilinear", antialias=True,
                                              align_corners=False)
    t = th.zeros(len(images), dtype=th.long, device=images.device) if clip.noise_aware else None
    return clip.encode_image(images, t, normalize=True).float()


def embedding_dim(clip):
    """D, the width of the CLIP's image embeddings (of one black image)."""
    return embed_images(clip, th.zeros(1, 3, clip.image_size, clip.image_size)).shape[-1]


def embed_files(clip, paths, batch_size=64, device="cpu"):
    """Unit embeddings [len(paths), D] float32 (CPU) of image files, batch_size at a time."""
    rows = [embed_images(clip, read_clip_images(paths[i:i + batch_size], clip.image_size).to(device)).cpu()
            for i in range(0, len(paths), batch_size)]
    return th.cat(rows).numpy()


def relative_paths(data_dir):
    """The training images under data_dir (image_datasets.list_image_files' sorted list), relative to it."""
    return [os.path.relpath(path, data_dir) for path in list_image_files(data_dir)]


def write_cache(path, paths, embeddings, fingerprint):
    """Writes the cache npz atomically (a temporary file beside it, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, paths=np.array(paths, dtype=str), embeddings=np.asarray(embeddings, dtype=np.float32),
             fingerprint=np.array(fingerprint))
    os.replace(tmp, path)


def read_cache(path, paths, fingerprint):
    """Embeddings [len(paths), D] float32 of the cache at path, in the order of paths (relative image paths);
    refused in one line when it was made by another image encoder or for other images."""
    with np.load(path) as cache:
        cached_paths = [str(p) for p in cache["paths"]]
        embeddings, cached_fingerprint = cache["embeddings"], str(cache["fingerprint"])
    fix = f"delete {path} (it is recomputed) or pass another --embedding_cache"
    if cached_fingerprint != fingerprint:
        raise UsageError(f"--embedding_cache {path} was computed by another CLIP image encoder (fingerprint "
                         f"{cached_fingerprint[:12]}, this one's {fingerprint[:12]}): {fix}")
    index = {p: i for i, p in enumerate(cached_paths)}
    missing = [p for p in paths if p not in index]
    removed = sorted(set(cached_paths) - set(paths))
    if missing or removed:
        what = (f"{len(missing)} image(s) added since (e.g. {missing[0]})" if missing else
                f"{len(removed)} image(s) gone since (e.g. {removed[0]})")
        raise UsageError(f"--embedding_cache {path} is stale: {what}: {fix}")
    return embeddings[[index[p] for p in paths]]


def cached_embeddings(path, clip, data_dir, batch_size=64, device="cpu"):
    """{relative image path: unit embedding [D]} of every image under data_dir: read from the cache at path,
    computed and written there first when it is missing (by rank 0; every rank then reads it)."""
    paths, fingerprint = relative_paths(data_dir), encoder_fingerprint(clip)

    def compute():
        if not os.path.exists(path):
            logger.log(f"computing the CLIP embeddings of {len(paths)} images into {path}...")
            files = [os.path.join(data_dir, p) for p in paths]
            write_cache(path, paths, embed_files(clip, files, batch_size, device), fingerprint)

    dist_util.on_rank0(compute)
    return dict(zip(paths, read_cache(path, paths, fingerprint)))


def check_decoder_clip(model_path, clip_path, clip):
    """The decoder at model_path was trained on clip's embeddings: the fingerprint its run recorded (train_config.json,
    "unclip") must be clip's (a UsageError otherwise). Returns warnings: another path with the same encoder, or
    no record to check against."""
    from ..train_state import CONFIG_NAME, read_config

    recorded = ((read_config(os.path.dirname(model_path)) or {}).get("unclip")) or {}
    if "clip_fingerprint" not in recorded:
        return [f"--model_path {model_path}: no CLIP fingerprint recorded beside it ({CONFIG_NAME}); cannot check "
                f"that --clip_model_path {clip_path} is the CLIP it was trained with"]
    if recorded["clip_fingerprint"] != encoder_fingerprint(clip):
        raise UsageError(f"--clip_model_path {clip_path} is not the CLIP the decoder was trained with (its image "
                         f"encoder's fingerprint differs from the one recorded in {CONFIG_NAME}): leave "
                         f"--clip_model_path out to use its run's {recorded['clip_model_path']}")
    if os.path.abspath(clip_path) != os.path.abspath(recorded["clip_model_path"]):
        return [f"--clip_model_path {clip_path} replaces the decoder's {recorded['clip_model_path']}: the same image "
                "encoder (fingerprints match)"]
    return []
