"""GLIDE's public names (openai/glide-text2im's model_creation), as script_util.py is the release's face.

A GLIDE notebook ports by changing its imports: the option names and defaults are glide-text2im's
(`text_ctx`, `xf_width`, ..., `noise_schedule="squaredcos_cap_v2"`, `timestep_respacing="fast27"`), the
model has `tokenizer`, `del_cache()` and the forward keywords `tokens`, `mask`, `low_res`, `inpaint_image`
and `inpaint_mask`, and a model built from a released configuration loads GLIDE's checkpoint with
strict=True. The flags themselves are config.TextModelConfig's; the model is text/model.py's TextUNet.
"""

from .build import build_diffusion, build_text_unet
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
