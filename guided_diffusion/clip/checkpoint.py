"""A CLIP of this project's training: built from the ClipModelConfig flags, and read back from a checkpoint of
clip_train.py with the flags of its run (the train_config.json beside it), so a path is all a loader needs."""

import dataclasses

import blobfile as bf

from .. import logger
from ..checkpoint import load_checkpoint
from ..config import ClipModelConfig, DiffusionConfig
from ..errors import UsageError
from ..train_state import CONFIG_NAME, read_config
from .encoders import ImageEncoder, TextEncoder
from .model import NoisyCLIP
from .tokenizer import get_tokenizer

INITIAL_LOGIT_SCALE = 1 / 0.07  # CLIP's: exp(logit_scale) at the start of training
CLIP_FLAGS = tuple(f.name for f in dataclasses.fields(ClipModelConfig))


def build_clip(config, diffusion_steps=DiffusionConfig.diffusion_steps):
    """A randomly initialised NoisyCLIP of config (a ClipModelConfig) with a learned logit scale, exp of it
    1 / 0.07 (CLIP's start). A noise-aware one's image encoder takes t in [0, diffusion_steps), the diffusion's T."""
    check_clip_config(config)
    text_encoder = TextEncoder(config.clip_n_vocab, config.clip_text_ctx, config.clip_width, config.clip_text_heads,
                               config.clip_text_layers, config.clip_head_channels)
    image_encoder = ImageEncoder(config.clip_image_size, config.clip_patch_size, config.clip_width,
                                 config.clip_image_heads, config.clip_image_layers, config.clip_head_channels,
                                 diffusion_steps if config.clip_noise_aware else 0)
    return NoisyCLIP(text_encoder, image_encoder, INITIAL_LOGIT_SCALE, get_tokenizer(), learn_logit_scale=True)


def check_clip_config(config):
    """Refuse flags that build no working CLIP: a vocabulary smaller than the tokenizer's, patches that do not tile
    the image, a text context without room for a token."""
    if config.clip_n_vocab < get_tokenizer().n_vocab:
        raise UsageError(f"--clip_n_vocab {config.clip_n_vocab} has fewer rows than CLIP's tokenizer has tokens "
                         f"({get_tokenizer().n_vocab}): pass --clip_n_vocab {get_tokenizer().n_vocab} or more")
    if config.clip_image_size % config.clip_patch_size:
        raise UsageError(f"--clip_patch_size {config.clip_patch_size} does not divide --clip_image_size "
                         f"{config.clip_image_size}: pick a patch size that divides the image size")
    if config.clip_text_ctx < 3:
        raise UsageError(f"--clip_text_ctx {config.clip_text_ctx} leaves no room for a token between the start and "
                         "end tokens: pass 3 or more (CLIP's 77)")


CLEAN_TOKEN, TIMESTEP_TOKENS = "image_encoder.blocks.input.pred_state", "image_encoder.blocks.input.w_t"


def noise_aware_from_clean(state_dict, model, source="checkpoint"):
    """A clean CLIP's state dict for a noise-aware NoisyCLIP (fine-tuning: --init_checkpoint of a clean CLIP with
    --clip_noise_aware True): every row of the timestep embedding w_t [T, width] starts as the clean encoder's
    first token pred_state [width], so at step 0 the model reads x_t at every t as the clean CLIP reads an image.
    Any other state dict is returned as it is (the same object)."""
    target = model.state_dict().get(TIMESTEP_TOKENS)
    if target is None or CLEAN_TOKEN not in state_dict or TIMESTEP_TOKENS in state_dict:
        return state_dict
    adapted = {key: value for key, value in state_dict.items() if key != CLEAN_TOKEN}
    adapted[TIMESTEP_TOKENS] = state_dict[CLEAN_TOKEN][None].expand_as(target).clone()
    logger.log(f"{source}: a clean CLIP starts this noise-aware one, each of the {target.shape[0]} timestep "
               "embeddings its first token pred_state (at step 0 the model reads x_t as the clean CLIP reads images)")
    return adapted


def run_flags(path):
    """{flag: value} of the run that wrote the CLIP checkpoint at path (its train_config.json), or None when the
    folder has no train_config.json or that run trained another kind of model."""
    saved = read_config(bf.dirname(path))
    flags = (saved or {}).get("train_flags") or {}
    return flags if all(name in flags for name in CLIP_FLAGS) else None


def is_trained_clip(path):
    """Whether path is a model file of clip_train.py: it exists and its folder's train_config.json is a CLIP run's
    (nothing but that small file is read)."""
    return bf.exists(path) and not bf.isdir(path) and run_flags(path) is not None


def load_clip(path, device="cpu"):
    """The NoisyCLIP of clip_train.py's checkpoint at path (modelNNNNNN.pt), built from its run's flags, its
    weights and trained logit scale loaded strictly, in eval mode on device."""
    if not bf.exists(path):
        raise UsageError(f"{path}: no such file: give a CLIP checkpoint written by clip_train.py (modelNNNNNN.pt)")
    flags = run_flags(path)
    if flags is None:
        found = read_config(bf.dirname(path))
        why = (f"the {CONFIG_NAME} beside it is another model's run, not clip_train.py's" if found is not None else
               f"no {CONFIG_NAME} beside it tells its flags")
        raise UsageError(f"{path}: {why}: give a checkpoint of clip_train.py in its run's folder (with the "
                         f"{CONFIG_NAME} that run wrote)")
    config = ClipModelConfig(**{name: flags[name] for name in CLIP_FLAGS})
    model = build_clip(config, flags.get("diffusion_steps", DiffusionConfig.diffusion_steps))
    return load_checkpoint(model, path).eval().to(device)

