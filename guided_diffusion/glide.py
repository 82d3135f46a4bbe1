"""GLIDE's public names (openai/glide-text2im's model_creation), as script_util.py is the release's face.

A GLIDE notebook ports by changing its imports: the option names and defaults are glide-text2im's
(`text_ctx`, `xf_width`, ..., `noise_schedule="squaredcos_cap_v2"`, `timestep_respacing="fast27"`), the
model has `tokenizer`, `del_cache()` and the forward keywords `tokens`, `mask`, `low_res`, `inpaint_image`
and `inpaint_mask`, and a model built from a released configuration loads GLIDE's checkpoint with
strict=True. The flags themselves are config.TextModelConfig's; the model is text/model.py's TextUNet.

GLIDE's noisy CLIP too: create_clip_model(config) from the keys of its clip/config.yaml, loading its released
clip_image_enc.pt and clip_text_enc.pt from paths on your disk (clip/).
"""

from .build import build_diffusion, build_text_unet
from .clip.encoders import ImageEncoder, TextEncoder
from .clip.files import load_encoder
from .clip.model import NoisyCLIP
from .clip.tokenizer import get_tokenizer
from .config import DiffusionConfig, TextModelConfig

# glide-text2im's base model (Text2ImUNet, 64 px), in its order.
_BASE = dict(
    image_size=64, num_channels=192, num_res_blocks=3, channel_mult="", num_heads=1, num_head_channels=64,
    num_heads_upsample=-1, attention_resolutions="32,16,8", dropout=0.1, text_ctx=128, xf_width=512, xf_layers=16,
    xf_heads=8, xf_final_ln=True, xf_padding=True, diffusion_steps=1000, noise_schedule="squaredcos_cap_v2",
    timestep_respacing="", use_scale_shift_norm=True, resblock_updown=True, use_fp16=True, cache_text_emb=False,
    inpaint=False, super_res=False,
)  # fmt: skip
_DIFFUSION_OPTIONS = ("diffusion_steps", "noise_schedule", "timestep_respacing")


def model_and_diffusion_defaults():
    """GLIDE's base model and diffusion options (64 px, cosine schedule)."""
    return dict(_BASE)


def model_and_diffusion_defaults_upsampler():
    """GLIDE's 64 -> 256 px upsampler's options (2 resblocks a level, linear schedule, super_res)."""
    return dict(_BASE, image_size=256, num_res_blocks=2, noise_schedule="linear", super_res=True)


def create_model(**options):
    """The TextUNet of GLIDE's model options (those of model_and_diffusion_defaults() but the diffusion's);
    always learned sigma (6 output channels), as GLIDE's models."""
    unknown = set(options) - set(_BASE)
    if unknown:
        raise TypeError(f"unknown GLIDE option(s): {', '.join(sorted(unknown))}")
    return build_text_unet(TextModelConfig(**options), learn_sigma=True)


def create_gaussian_diffusion(steps, noise_schedule, timestep_respacing):
    """GLIDE's diffusion: learned-range variance, eps prediction, respaced by timestep_respacing (e.g. "100",
    "fast27"); "squaredcos_cap_v2" is the cosine schedule."""
    config = DiffusionConfig(learn_sigma=True, diffusion_steps=steps, noise_schedule=noise_schedule,
                             timestep_respacing=timestep_respacing)
    return build_diffusion(config)


def create_model_and_diffusion(**options):
    """(TextUNet, SpacedDiffusion) from GLIDE's options (all of them, as glide-text2im takes them)."""
    missing = set(_BASE) - set(options)
    if missing:
        raise TypeError(f"missing GLIDE option(s): {', '.join(sorted(missing))} (start from "
                        "model_and_diffusion_defaults())")
    diffusion = {name: options.pop(name) for name in _DIFFUSION_OPTIONS}
    return create_model(**options), create_gaussian_diffusion(diffusion["diffusion_steps"],
                                                              diffusion["noise_schedule"],
                                                              diffusion["timestep_respacing"])


# glide-text2im's clip/config.yaml: the noisy CLIP of its CLIP-guided sampling (beta_schedule is not read).
_CLIP = dict(
    logit_scale=100.0, beta_schedule="squaredcos_cap_v2", n_timesteps=1000, image_size=64, patch_size=4,
    n_vocab=65536, max_text_len=77, n_embd=512, n_head_state_text=64, n_head_text=8, n_xf_blocks_text=12,
    n_head_state_image=64, n_head_image=12, n_xf_blocks_image=12,
)  # fmt: skip


def clip_model_defaults():
    """GLIDE's noisy-CLIP configuration, its clip/config.yaml as a dict (64 px, 1000 timesteps, 77 tokens)."""
    return dict(_CLIP)


def create_clip_model(config=None, device=None, image_enc_path=None, text_enc_path=None):
    """GLIDE's noisy CLIP, a clip.model.NoisyCLIP (text_encoder, image_encoder, logit_scale, tokenizer,
    text_embeddings(prompts), image_embeddings(images, t), cond_fn(prompts, grad_scale)).

    config: a dict with the keys of GLIDE's clip config.yaml (default clip_model_defaults()); image_enc_path,
    text_enc_path: GLIDE's released clip_image_enc.pt and clip_text_enc.pt on your disk, loaded strictly;
    device: where the model goes (default: where it is built, the CPU; GLIDE picks CUDA when it can).
    """
    config = clip_model_defaults() if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f"config is a dict of GLIDE's clip config.yaml keys (yaml.safe_load of the file), not a "
                        f"{type(config).__name__}")
    if set(config) != set(_CLIP):
        wrong = [f"{what} {', '.join(sorted(keys))}" for what, keys in
                 (("missing", set(_CLIP) - set(config)), ("unknown", set(config) - set(_CLIP))) if keys]
        raise TypeError(f"GLIDE's clip config: {'; '.join(wrong)} (start from clip_model_defaults())")
    text_encoder = TextEncoder(config["n_vocab"], config["max_text_len"], config["n_embd"], config["n_head_text"],
                               config["n_xf_blocks_text"], config["n_head_state_text"])
    image_encoder = ImageEncoder(config["image_size"], config["patch_size"], config["n_embd"], config["n_head_image"],
                                 config["n_xf_blocks_image"], config["n_head_state_image"], config["n_timesteps"])
    for encoder, path, side in ((image_encoder, image_enc_path, "image"), (text_encoder, text_enc_path, "text")):
        if path is not None:
            load_encoder(encoder, path, side)
    model = NoisyCLIP(text_encoder, image_encoder, config["logit_scale"], get_tokenizer()).eval()
    return model if device is None else model.to(device)
