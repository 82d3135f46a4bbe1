"""The release's public factory API, as thin faces over the typed configuration.

Names, keywords, defaults and results are those of openai/guided-diffusion, so that scripts and
third-party code written against the release (e.g. k-diffusion's wrappers) run unchanged. The flags
themselves live in config.py, the builders in build.py, the command-line parsing in cli.py.
"""

from .build import build_classifier, build_diffusion, build_super_res, build_unet
from .build import parse_channel_mult  # noqa: F401 (kept importable from here)
from .cli import parse_args, str2bool  # noqa: F401 (the release's str2bool lives here)
from .config import (ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig, defaults_of,
                     split_flags)

NUM_CLASSES = ModelConfig.num_classes

# The release's create_model has defaults of its own, unlike the flags': kept for its callers.
_CREATE_MODEL_DEFAULTS = dict(attention_resolutions="16", num_heads=1, use_scale_shift_norm=False, dropout=0)


def diffusion_defaults():
    """{flag: default} of the Gaussian diffusion (DiffusionConfig)."""
    return defaults_of(DiffusionConfig)


def classifier_defaults():
    """{flag: default} of the noisy-image classifier (ClassifierConfig)."""
    return defaults_of(ClassifierConfig)


def model_and_diffusion_defaults():
    """{flag: default} of image_train / image_sample's UNet and diffusion."""
    return defaults_of(ModelConfig, DiffusionConfig)


def classifier_and_diffusion_defaults():
    """{flag: default} of classifier_train: the classifier's and the diffusion's."""
    return defaults_of(ClassifierConfig, DiffusionConfig)


def sr_model_and_diffusion_defaults():
    """{flag: default} of the super-resolution scripts' UNet and diffusion."""
    return defaults_of(SuperResConfig, DiffusionConfig)


def create_model_and_diffusion(**flags):
    """(UNetModel, SpacedDiffusion) from keywords of model_and_diffusion_defaults() (missing: defaults)."""
    model, diffusion = split_flags(flags, ModelConfig, DiffusionConfig)
    return build_unet(model, diffusion.learn_sigma), build_diffusion(diffusion)


def create_classifier_and_diffusion(**flags):
    """(EncoderUNetModel, SpacedDiffusion) from keywords of classifier_and_diffusion_defaults()."""
    classifier, diffusion = split_flags(flags, ClassifierConfig, DiffusionConfig)
    return build_classifier(classifier), build_diffusion(diffusion)


def sr_create_model_and_diffusion(**flags):
    """(SuperResModel, SpacedDiffusion) from keywords of sr_model_and_diffusion_defaults()."""
    model, diffusion = split_flags(flags, SuperResConfig, DiffusionConfig)
    return build_super_res(model, diffusion.learn_sigma), build_diffusion(diffusion)


def create_model(image_size, num_channels, num_res_blocks, *, learn_sigma=False, **flags):
    """The diffusion UNet from ModelConfig keywords, with the release's create_model defaults
    (attention at 16 px only, one head, no scale-shift norm) where a keyword is missing."""
    config = ModelConfig(image_size=image_size, num_channels=num_channels, num_res_blocks=num_res_blocks,
                         **{**_CREATE_MODEL_DEFAULTS, **flags})
    return build_unet(config, learn_sigma)


def create_classifier(*args, **flags):
    """The noisy-image classifier; arguments as ClassifierConfig's fields, in the release's order
    (image_size, classifier_use_fp16, classifier_width, classifier_depth, ...)."""
    return build_classifier(ClassifierConfig(*args, **flags))


def sr_model(*, learn_sigma=False, **flags):
    """The super-resolution UNet from SuperResConfig keywords."""
    return build_super_res(SuperResConfig(**flags), learn_sigma)


def create_gaussian_diffusion(*, steps=1000, sigma_small=False, **flags):
    """The (respaced) diffusion from DiffusionConfig keywords; steps is --diffusion_steps and
    sigma_small picks the posterior variance beta~_t when the variance is not learned."""
    return build_diffusion(DiffusionConfig(diffusion_steps=steps, **flags), sigma_small)


def add_dict_to_argparser(parser, default_dict):
    """A `--name` flag for each {name: default} entry, typed like its default (booleans: str2bool)."""
    for name, default in default_dict.items():
        value_type = str2bool if isinstance(default, bool) else (str if default is None else type(default))
        parser.add_argument(f"--{name}", default=default, type=value_type)


def args_to_dict(args, keys):
    """{key: args.key} for `keys` of an argparse namespace."""
    return {key: getattr(args, key) for key in keys}
