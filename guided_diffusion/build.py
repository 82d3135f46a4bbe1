"""Models and diffusions built from the typed configuration (config.py)."""

import numpy as np

from . import gaussian_diffusion as gd
from .errors import UsageError
from .respace import SpacedDiffusion, space_timesteps
from .schedules import get_named_beta_schedule
from .unet import EncoderUNetModel, SuperResModel, UNetModel

# Default channel multipliers per image size (UNet and classifier).
CHANNEL_MULTS = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
# Groups of every GroupNorm (nn.normalization): each level's width must be a multiple of it.
NORM_GROUPS = 32
# The super-resolution model's own table, keyed by the large size.
SR_CHANNEL_MULTS = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def parse_channel_mult(channel_mult, image_size, table=CHANNEL_MULTS, flag="--channel_mult"):
    """"1,2,2,4" (fractions such as "0.5,1" allowed) or "" for the size's default in `table` -> tuple.

    flag: the command-line flag named in errors.
    """
    if channel_mult in ("", None):
        if image_size not in table:
            raise ValueError(
                f"no default channel multipliers for image size {image_size} (defaults exist for "
                f"{sorted(table)}); pass one multiplier per resolution level, e.g. {flag} 1,2,2,4"
            )
        return table[image_size]
    if not isinstance(channel_mult, str):
        return tuple(channel_mult)
    try:
        mults = [float(m) for m in channel_mult.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers such as 1,2,2,4, got {channel_mult!r}") from None
    return tuple(int(m) if m.is_integer() else m for m in mults)


def check_widths(width, channel_mult, width_flag="--num_channels", mult_flag="--channel_mult"):
    """Refuse a base width whose levels, int(mult * width) for mult in channel_mult (a tuple), GroupNorm
    cannot split into NORM_GROUPS groups; the UsageError names the flags and a width that works."""
    def fits(base):
        return all(int(m * base) > 0 and int(m * base) % NORM_GROUPS == 0 for m in channel_mult)

    if fits(width):
        return
    widths = ", ".join(str(int(m * width)) for m in channel_mult)
    mults = ",".join(f"{m:g}" for m in channel_mult)
    bases = [base for base in range(NORM_GROUPS, 64 * NORM_GROUPS + 1, NORM_GROUPS) if fits(base)]
    good = next((base for base in bases if base >= width), bases[0] if bases else None)
    fix = f"use e.g. {width_flag} {good} (or change {mult_flag})" if good else f"change {mult_flag}"
    raise UsageError(f"{width_flag} {width} with {mult_flag} {mults} gives levels of {widths} channels, but "
                     f"GroupNorm({NORM_GROUPS}) needs every level to be a multiple of {NORM_GROUPS}: {fix}")


def attention_downsample_rates(attention_resolutions, image_size):
    """"32,16,8" (resolutions in pixels) -> tuple of downsample rates image_size // r."""
    resolutions = [int(r) for r in str(attention_resolutions).split(",") if r.strip()]
    for r in resolutions:
        if image_size % r:
            raise ValueError(f"attention resolution {r} does not divide image size {image_size}")
    return tuple(image_size // r for r in resolutions)


def _unet_options(config, image_size, learn_sigma):
    """The UNetModel keywords common to the diffusion UNet and the upsampler (config: a UNetConfig)."""
    return dict(
        image_size=image_size,
        in_channels=config.image_channels,
        model_channels=config.num_channels,
        out_channels=config.image_channels * (2 if learn_sigma else 1),
        num_res_blocks=config.num_res_blocks,
        attention_resolutions=attention_downsample_rates(config.attention_resolutions, image_size),
        dropout=config.dropout,
        num_classes=config.num_classes if config.class_cond else None,
        use_checkpoint=config.use_checkpoint,
        use_fp16=config.use_fp16,
        num_heads=config.num_heads,
        num_head_channels=config.num_head_channels,
        num_heads_upsample=config.num_heads_upsample,
        use_scale_shift_norm=config.use_scale_shift_norm,
        resblock_updown=config.resblock_updown,
        resblock_rescale=config.resblock_rescale,
        attention_impl=config.attention_impl,
    )


def build_unet(config, learn_sigma=False):
    """The diffusion UNet of a ModelConfig; learn_sigma (a DiffusionConfig flag) doubles the outputs."""
    channel_mult = parse_channel_mult(config.channel_mult, config.image_size)
    check_widths(config.num_channels, channel_mult)
    return UNetModel(
        **_unet_options(config, config.image_size, learn_sigma),
        channel_mult=channel_mult,
        use_new_attention_order=config.use_new_attention_order,
        class_dropout_prob=config.class_dropout_prob,
        guidance_embed=config.guidance_embed,
    )


def build_super_res(config, learn_sigma=False):
    """The super-resolution UNet of a SuperResConfig, at large_size (the low-res input is upsampled
    to it inside the model, so small_size changes no weight)."""
    channel_mult = parse_channel_mult(config.channel_mult, config.large_size, SR_CHANNEL_MULTS)
    check_widths(config.num_channels, channel_mult)
    return SuperResModel(**_unet_options(config, config.large_size, learn_sigma), channel_mult=channel_mult)


def build_text_unet(config, learn_sigma=True):
    """GLIDE's text-conditional UNet of a TextModelConfig (class_cond must be False: the caption is the
    condition)."""
    from .text.model import TextUNet

    return TextUNet(**_text_unet_options(config, learn_sigma))


def _text_unet_options(config, learn_sigma):
    """TextUNet's keywords of a TextModelConfig (class_cond refused: the caption is the condition)."""
    from .text.tokenizer import get_encoder

    if config.class_cond:
        raise UsageError("a text model is conditioned on captions, not class labels: leave --class_cond False")
    channel_mult = parse_channel_mult(config.channel_mult, config.image_size)
    check_widths(config.num_channels, channel_mult)
    options = _unet_options(config, config.image_size, learn_sigma)
    options.pop("num_classes")
    tokenizer = get_encoder()
    return dict(
        **options, channel_mult=channel_mult, text_ctx=config.text_ctx, xf_width=config.xf_width,
        xf_layers=config.xf_layers, xf_heads=config.xf_heads, xf_final_ln=config.xf_final_ln,
        xf_padding=config.xf_padding, n_vocab=tokenizer.n_vocab, inpaint=config.inpaint, super_res=config.super_res,
        cache_text_emb=config.cache_text_emb, caption_dropout_prob=config.caption_dropout_prob, tokenizer=tokenizer,
    )  # fmt: skip


def build_unclip_unet(config, learn_sigma=True):
    """DALL-E 2's decoder of an UnCLIPModelConfig: UnCLIPUNet, or UnCLIPTextUNet with --clip_caption True.
    config.clip_emb_dim must be set (the CLIP's D: unclip_train.py sets it from the embedding cache)."""
    from .unclip.model import UnCLIPTextUNet, UnCLIPUNet

    if config.clip_emb_dim < 1:
        raise UsageError(f"--clip_emb_dim {config.clip_emb_dim}: the decoder needs the CLIP embedding's width; pass "
                         "--clip_model_path (unclip_train.py reads it from the embeddings) or --clip_emb_dim D")
    if config.inpaint or config.super_res:
        raise UsageError("an unCLIP decoder is a base model: leave --inpaint and --super_res False")
    clip = dict(clip_emb_dim=config.clip_emb_dim, clip_emb_tokens=config.clip_emb_tokens,
                clip_emb_dropout_prob=config.clip_emb_dropout_prob)
    if config.clip_caption:
        return UnCLIPTextUNet(**_text_unet_options(config, learn_sigma), **clip)
    if config.class_cond:
        raise UsageError("an unCLIP decoder is conditioned on CLIP embeddings, not class labels: leave --class_cond "
                         "False")
    channel_mult = parse_channel_mult(config.channel_mult, config.image_size)
    check_widths(config.num_channels, channel_mult)
    options = _unet_options(config, config.image_size, learn_sigma)
    options.pop("num_classes")
    return UnCLIPUNet(**options, channel_mult=channel_mult, clip_emb_width=config.xf_width, **clip)


def build_classifier(config):
    """The noisy-image classifier of a ClassifierConfig (64 channels per attention head, as released)."""
    channel_mult = parse_channel_mult(config.classifier_channel_mult, config.image_size,
                                      flag="--classifier_channel_mult")
    check_widths(config.classifier_width, channel_mult, "--classifier_width", "--classifier_channel_mult")
    return EncoderUNetModel(
        image_size=config.image_size,
        in_channels=config.image_channels,
        model_channels=config.classifier_width,
        out_channels=config.num_classes,
        num_res_blocks=config.classifier_depth,
        attention_resolutions=attention_downsample_rates(config.classifier_attention_resolutions, config.image_size),
        channel_mult=channel_mult,
        use_fp16=config.classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=config.classifier_use_scale_shift_norm,
        resblock_updown=config.classifier_resblock_updown,
        pool=config.classifier_pool,
        attention_impl=config.classifier_attention_impl,
    )


def build_diffusion(config, sigma_small=False):
    """The (respaced) Gaussian diffusion of a DiffusionConfig.

    Loss: the KL bound with use_kl, else the MSE (its vb term rescaled with rescale_learned_sigmas).
    Variance: learned with learn_sigma, else fixed to beta_t, or to the posterior's beta~_t with sigma_small.
    """
    if config.use_kl:
        loss_type = gd.LossType.RESCALED_KL
    else:
        loss_type = gd.LossType.RESCALED_MSE if config.rescale_learned_sigmas else gd.LossType.MSE
    fixed_variance = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    steps = config.diffusion_steps
    betas = get_named_beta_schedule(config.noise_schedule, steps)
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, config.timestep_respacing or [steps], alphas_cumprod=np.cumprod(1 - betas)),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if config.predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE if config.learn_sigma else fixed_variance,
        loss_type=loss_type,
        rescale_timesteps=config.rescale_timesteps,
    )
