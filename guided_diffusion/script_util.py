"""The release's public factory API: flag defaults, and models and diffusions built from flags.

Names, keyword arguments and defaults are those of openai/guided-diffusion, so that scripts and
third-party code written against the release run unchanged. New keywords all have defaults.
"""

import argparse
import inspect
import sys

from . import gaussian_diffusion as gd
from .presets import PRESETS, preset_argv
from .respace import SpacedDiffusion, space_timesteps
from .unet import EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000

# Default channel multipliers per image size (UNet and classifier).
CHANNEL_MULTS = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
# The super-resolution builder's own table, keyed by the large size.
SR_CHANNEL_MULTS = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def diffusion_defaults():
    """Defaults for the Gaussian diffusion flags."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults():
    """Defaults for the noisy-image classifier flags."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
        num_classes=NUM_CLASSES,
        classifier_attention_impl="math",
        classifier_channel_mult="",
    )


def model_and_diffusion_defaults():
    """Defaults for the UNet and diffusion flags of image_train / image_sample."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        num_classes=NUM_CLASSES,
        resblock_rescale=False,
        attention_impl="math",
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults():
    """Defaults for classifier_train: the classifier's flags and the diffusion's."""
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def create_model_and_diffusion(
    image_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    channel_mult,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
    use_new_attention_order,
    num_classes=NUM_CLASSES,
    resblock_rescale=False,
    attention_impl="math",
):
    """Build (UNetModel, SpacedDiffusion) from the flags of model_and_diffusion_defaults()."""
    flags = locals()
    model = _call_with_flags(create_model, flags)
    diffusion = _diffusion_from_flags(flags)
    return model, diffusion


def _call_with_flags(factory, flags):
    """factory(**flags), passing only the flags that factory takes."""
    params = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in flags.items() if k in params})


def _diffusion_from_flags(flags):
    """create_gaussian_diffusion from a dict holding the diffusion_defaults() flags."""
    return create_gaussian_diffusion(
        steps=flags["diffusion_steps"], **{k: flags[k] for k in diffusion_defaults() if k != "diffusion_steps"}
    )


def parse_channel_mult(channel_mult, image_size, table=CHANNEL_MULTS):
    """"1,2,2,4" (fractions such as "0.5,1" allowed) or "" for the size's default -> tuple of multipliers."""
    if channel_mult in ("", None):
        if image_size not in table:
            raise ValueError(
                f"no default channel_mult for image size {image_size} (defaults exist for "
                f"{sorted(table)}); pass one multiplier per resolution level, e.g. --channel_mult 1,2,2,4"
            )
        return table[image_size]
    if isinstance(channel_mult, str):
        try:
            mults = [float(m) for m in channel_mult.split(",")]
        except ValueError:
            raise ValueError(f"--channel_mult must be comma-separated numbers such as 1,2,2,4, got {channel_mult!r}")
        return tuple(int(m) if m.is_integer() else m for m in mults)
    return tuple(channel_mult)


def attention_downsample_rates(attention_resolutions, image_size):
    """"32,16,8" (resolutions in pixels) -> tuple of downsample rates image_size // r."""
    rates = []
    for res in str(attention_resolutions).split(","):
        if res.strip():
            if image_size % int(res):
                raise ValueError(f"attention resolution {res} does not divide image size {image_size}")
            rates.append(image_size // int(res))
    return tuple(rates)


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
    num_classes=NUM_CLASSES,
    resblock_rescale=False,
    attention_impl="math",
):
    """Build the diffusion UNet from flags (channel_mult "" picks the image size's default)."""
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_downsample_rates(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size),
        num_classes=num_classes if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
        resblock_rescale=resblock_rescale,
        attention_impl=attention_impl,
    )


def create_classifier_and_diffusion(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
    learn_sigma,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    num_classes=NUM_CLASSES,
    classifier_attention_impl="math",
    classifier_channel_mult="",
):
    """Build (EncoderUNetModel, SpacedDiffusion) from the flags of classifier_and_diffusion_defaults()."""
    flags = locals()
    classifier = _call_with_flags(create_classifier, flags)
    diffusion = _diffusion_from_flags(flags)
    return classifier, diffusion


def create_classifier(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
    num_classes=NUM_CLASSES,
    classifier_attention_impl="math",
    classifier_channel_mult="",
):
    """Build the noisy-image classifier (64 channels per attention head, as released)."""
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=attention_downsample_rates(classifier_attention_resolutions, image_size),
        channel_mult=parse_channel_mult(classifier_channel_mult, image_size),
        use_fp16=classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
        attention_impl=classifier_attention_impl,
    )


def sr_model_and_diffusion_defaults():
    """Defaults for the super-resolution scripts: the model defaults the SR builder takes, plus sizes."""
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    arg_names = inspect.getfullargspec(sr_create_model_and_diffusion)[0]
    return {k: v for k, v in res.items() if k in arg_names}


def sr_create_model_and_diffusion(
    large_size,
    small_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
    num_classes=NUM_CLASSES,
    resblock_rescale=False,
    attention_impl="math",
):
    """Build (SuperResModel, SpacedDiffusion) from the flags of sr_model_and_diffusion_defaults()."""
    flags = locals()
    model = _call_with_flags(sr_model, flags)
    diffusion = _diffusion_from_flags(flags)
    return model, diffusion


def sr_model(
    large_size,
    small_size,
    num_channels,
    num_res_blocks,
    learn_sigma,
    class_cond,
    use_checkpoint,
    attention_resolutions,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    use_scale_shift_norm,
    dropout,
    resblock_updown,
    use_fp16,
    num_classes=NUM_CLASSES,
    resblock_rescale=False,
    attention_impl="math",
):
    """Build the super-resolution UNet at large_size (small_size only documents the input)."""
    del small_size  # the low-res input is upsampled to large_size inside the model
    return SuperResModel(
        image_size=large_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_downsample_rates(attention_resolutions, large_size),
        dropout=dropout,
        channel_mult=parse_channel_mult("", large_size, SR_CHANNEL_MULTS),
        num_classes=num_classes if class_cond else None,
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
        resblock_rescale=resblock_rescale,
        attention_impl=attention_impl,
    )


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
):
    """Build the (possibly respaced) Gaussian diffusion from flags."""
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        model_var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        model_var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=model_var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def add_dict_to_argparser(parser, default_dict):
    """Add a `--key` flag for every entry; booleans take True/False, yes/no, 1/0."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys):
    """The values of `keys` in an argparse namespace, as a dict."""
    return {k: getattr(args, k) for k in keys}


def str2bool(v):
    """Parse a boolean flag value: yes/true/t/y/1 or no/false/f/n/0, any case."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False, yes/no, 1/0), got {v!r}")


def parse_args(parser, argv=None):
    """parser.parse_args, with `--preset NAME[,NAME...]` expanded to the released flags it names.

    Preset flags come first, so flags given explicitly override them; a preset's flags that this
    parser does not have (say, classifier flags in image_sample) are left out.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--preset" not in parser._option_string_actions:
        parser.add_argument(
            "--preset", default="", help="released configuration(s), comma-separated: " + ", ".join(PRESETS)
        )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="")
    known, _ = pre.parse_known_args(argv)
    try:
        tokens = preset_argv(known.preset)
    except ValueError as e:
        parser.error(str(e))
    expanded = []
    for flag, value in zip(tokens[::2], tokens[1::2]):
        if flag in parser._option_string_actions:
            expanded += [flag, value]
    return parser.parse_args(expanded + argv)
