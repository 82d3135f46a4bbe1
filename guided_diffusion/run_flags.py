"""A checkpoint knows its flags: every script that loads a model or classifier takes the architecture and
diffusion flags of the run that wrote it, so a command line names the file and nothing more.

Where a flag's value comes from, strongest first: the command line, --preset, the checkpoint, the
default. A checkpoint of this project's training has its run's flags in the train_config.json beside it;
a released checkpoint is recognised by its keys and shapes (RELEASES) and gets its preset, or, for one of
GLIDE's released text models, the flags of GLIDE's options for it (GLIDE_MODELS). Inference
flags (respacing, sampler, batch size, guidance, ...) never come from a checkpoint: only the fields of
the network's config class and of DiffusionConfig do, without --timestep_respacing.

A flag given on the command line (or by a preset) that contradicts the checkpoint is a usage error
naming both values, except the FREE_FLAGS: precision, kernels, dropout and the loss change neither the
weights nor the function they compute; and the VARIANT_FLAGS turned on over a base text model's
--init_checkpoint (its input layer is widened for the new inputs, zero-initialised, as GLIDE did).
"""

import dataclasses
import hashlib
import os
from typing import NamedTuple

import blobfile as bf

from . import dist_util, glide, logger
from .build import parse_channel_mult
from .checkpoint import read_state_dict
from .cli import COMMAND_LINE, DEFAULT, configs_of, parse_flags
from .config import (ClassifierConfig, ClipModelConfig, DiffusionConfig, ModelConfig, SuperResConfig, TextModelConfig,
                     UnCLIPModelConfig, defaults_of)
from .errors import UsageError
from .presets import PRESETS
from .train_state import CONFIG_NAME, read_config

NETWORKS = (ModelConfig, SuperResConfig, ClassifierConfig, TextModelConfig, UnCLIPModelConfig)
NETWORK_WORDS = {
    ModelConfig: "a diffusion model (image_train.py; sampled by image_sample.py --model_path)",
    SuperResConfig: "a super-resolution model (super_res_train.py; sampled by super_res_sample.py --model_path)",
    ClassifierConfig: "a noisy-image classifier (classifier_train.py; used by classifier_sample.py --classifier_path)",
    TextModelConfig: "a text-conditional model (GLIDE's, or text_train.py's; sampled by text_sample.py --model_path)",
    UnCLIPModelConfig: "an unCLIP decoder (unclip_train.py's; sampled by unclip_sample.py --model_path)",
    ClipModelConfig: "a CLIP model (clip_train.py's; used by the sampling scripts' --clip_model_path)",
}
DIFFUSION_FLAGS = tuple(f.name for f in dataclasses.fields(DiffusionConfig) if f.name != "timestep_respacing")
# The checkpoint flags of the scripts: {path flag: (the networks it may hold, the diffusion flags it sets)}.
CHECKPOINT_FLAGS = {
    "model_path": ((ModelConfig, SuperResConfig, TextModelConfig, UnCLIPModelConfig), DIFFUSION_FLAGS),
    "classifier_path": ((ClassifierConfig,), ()),
    "resume_checkpoint": (NETWORKS, DIFFUSION_FLAGS),
    "init_checkpoint": (NETWORKS, ("learn_sigma",)),  # fine-tuning keeps the weights, may change the schedule
    "teacher_path": ((ModelConfig,), DIFFUSION_FLAGS),  # consistency_train: the student is the teacher's network
}
# Flags a command line may set against the checkpoint: none changes a weight or what the weights compute.
FREE_FLAGS = {f.name for cls in NETWORKS for f in dataclasses.fields(cls) if f.metadata["free_on_resume"]} | {
    "use_fp16", "classifier_use_fp16", "dropout", "use_kl", "rescale_learned_sigmas"}
# A text model's variants: a command line may turn them on over a base model's --init_checkpoint, whose input
# layer is then widened for their inputs with zero weights (checkpoint.widen_input_channels), as GLIDE did.
VARIANT_FLAGS = ("inpaint", "super_res")


class Release(NamedTuple):
    """A checkpoint released with the paper: its file name, preset, network and keys-and-shapes fingerprint.
    A GLIDE text model's `preset` is glide-text2im's name for it (a key of GLIDE_MODELS), not a --preset."""

    file: str
    preset: str
    network: type
    fingerprint: str
    changes: tuple = ()  # (flag, value) pairs where the file differs from its preset


# The fingerprints are state_dict_fingerprint() of tests/fixtures/reference/state_dict_*.json (the
# release's own keys and shapes). The sizes and hashes of the released files are not recorded: shapes
# cannot tell apart 256x256_diffusion_uncond.pt and the LSUN models (which differ in dropout only), so the
# file name decides between those, and the attention order and head count are the preset's.
RELEASES = (
    Release("64x64_diffusion.pt", "adm64_cond", ModelConfig, "461d3f5e74891735"),
    Release("128x128_diffusion.pt", "adm128_cond", ModelConfig, "6bc5aa6892565fc7"),
    Release("256x256_diffusion.pt", "adm256_cond", ModelConfig, "556eae0614ad321a"),
    Release("256x256_diffusion_uncond.pt", "adm256_uncond", ModelConfig, "8d8ba2914be03b7a"),
    Release("512x512_diffusion.pt", "adm512_cond", ModelConfig, "249dc6c38a1adbac"),
    Release("lsun_bedroom.pt", "lsun256", ModelConfig, "8d8ba2914be03b7a"),
    Release("lsun_cat.pt", "lsun256", ModelConfig, "8d8ba2914be03b7a"),
    Release("lsun_horse.pt", "lsun256", ModelConfig, "8d8ba2914be03b7a"),
    Release("lsun_horse_nodropout.pt", "lsun256", ModelConfig, "8d8ba2914be03b7a", (("dropout", 0.0),)),
    Release("64_256_upsampler.pt", "upsampler64_256", SuperResConfig, "67f7c00986ddd83b"),
    Release("128_512_upsampler.pt", "upsampler128_512", SuperResConfig, "20b8552cd1c78218"),
    Release("64x64_classifier.pt", "classifier64", ClassifierConfig, "6a177b13c92d1a3c"),
    Release("128x128_classifier.pt", "classifier128", ClassifierConfig, "c17acfc854018ae9"),
    Release("256x256_classifier.pt", "classifier256", ClassifierConfig, "87107ba385b2f5c6"),
    Release("512x512_classifier.pt", "classifier512", ClassifierConfig, "3fecbef942f48371"),
    # GLIDE's (glide-text2im), from tests/fixtures/reference/glide/state_dict_glide_*.json: the input
    # channels tell the inpainting variants apart (3 + 4 known-image-and-mask channels; the upsamplers' 6 + 4),
    # and the widths of the levels (and the low-resolution channels) the upsamplers from the base models.
    Release("base.pt", "base", TextModelConfig, "f686b546061072f0"),
    Release("base_inpaint.pt", "base-inpaint", TextModelConfig, "e3e61c2e07e68ba3"),
    Release("upsample.pt", "upsample", TextModelConfig, "176e93c03959c5e6"),
    Release("upsample_inpaint.pt", "upsample-inpaint", TextModelConfig, "29e0a94a768d235f"),
)
# GLIDE's options of its released text models, by glide-text2im's names for them (its load_checkpoint's).
GLIDE_MODELS = {
    "base": glide.model_and_diffusion_defaults(),
    "base-inpaint": dict(glide.model_and_diffusion_defaults(), inpaint=True),
    "upsample": glide.model_and_diffusion_defaults_upsampler(),
    "upsample-inpaint": dict(glide.model_and_diffusion_defaults_upsampler(), inpaint=True),
}
# GLIDE's options that a run picks, not the file: the precision (its notebook converts the float32 weights
# to float16 on a GPU), the text-encoding cache and the respacing.
_GLIDE_RUN_OPTIONS = ("use_fp16", "cache_text_emb", "timestep_respacing")


def release_flags(release):
    """{flag: value} of a released checkpoint: its network's and the diffusion defaults, its preset, its changes.
    A GLIDE text model's are those of its GLIDE options (glide_flags)."""
    if release.network is TextModelConfig:
        return glide_flags(GLIDE_MODELS[release.preset])
    return {**defaults_of(release.network, DiffusionConfig), **PRESETS[release.preset], **dict(release.changes)}


def glide_flags(options):
    """{flag: value} (TextModelConfig's and DiffusionConfig's) of a model of GLIDE's options: learned sigma,
    "squaredcos_cap_v2" as "cosine", the defaults for the rest; without use_fp16, cache_text_emb and
    timestep_respacing, which the command line picks."""
    flags = dict(defaults_of(TextModelConfig, DiffusionConfig), learn_sigma=True)
    flags.update((name, value) for name, value in options.items() if name in flags)
    if flags["noise_schedule"] == "squaredcos_cap_v2":
        flags["noise_schedule"] = "cosine"
    return {name: value for name, value in flags.items() if name not in _GLIDE_RUN_OPTIONS}


def describe(release):
    """How the log names a release: "the release's 64x64_diffusion.pt (preset adm64_cond)", or "GLIDE's
    released base.pt (glide-text2im's 'base' model)"."""
    if release.network is TextModelConfig:
        return f"GLIDE's released {release.file} (glide-text2im's {release.preset!r} model)"
    return f"the release's {release.file} (preset {release.preset})"


def state_dict_fingerprint(shapes):
    """The first 16 hex digits of the sha256 of "key:d0xd1x..." lines, one per {key: shape} in key order."""
    text = "\n".join(f"{key}:{'x'.join(map(str, shape))}" for key, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recognise(shapes, file_name):
    """The Release whose keys and shapes {key: shape} are, or None; where several share them, the one
    named file_name, else the first. Returns (release, the other releases with the same shapes)."""
    same = [r for r in RELEASES if r.fingerprint == state_dict_fingerprint(shapes)]
    if not same:
        return None, []
    chosen = next((r for r in same if r.file == file_name), same[0])
    return chosen, [r for r in same if r is not chosen]


@dataclasses.dataclass
class CheckpointFlags:
    """What a checkpoint says about its run: flags, where they were read, lines for the log."""

    flags: dict
    origin: str
    notes: list


def checkpoint_flags(path, flag):
    """The run flags of the checkpoint at `path` (given by --`flag`), or None when neither a
    train_config.json beside it nor its shapes tell them. A missing file is a usage error."""
    if not bf.exists(path):
        raise FileNotFoundError(f"--{flag} {path!r} does not exist; pass a checkpoint file (modelNNNNNN.pt, "
                                "ema_RATE_NNNNNN.pt or a released .pt)")
    saved = read_config(bf.dirname(path))
    if saved is not None:
        return CheckpointFlags(saved.get("train_flags") or saved.get("model_flags", {}),
                               bf.join(bf.dirname(path), CONFIG_NAME), [])
    release, others = recognise({k: tuple(v.shape) for k, v in read_state_dict(path).items()}, bf.basename(path))
    if release is None:
        return None
    flags = release_flags(release)
    origin = describe(release)
    notes = [f"--{flag} {path}: no {CONFIG_NAME} beside it; recognised by its keys and shapes as {origin}"]
    if release.network is TextModelConfig:
        notes.append("  its heads (num_head_channels {num_head_channels}, xf_heads {xf_heads}), schedule "
                     "(noise_schedule {noise_schedule}) and dropout ({dropout}), which shapes cannot show, are "
                     "GLIDE's options for it; the precision (use_fp16) is not the file's".format(**flags))
    elif release.network is not ClassifierConfig:
        notes.append("  its attention order (use_new_attention_order {use_new_attention_order}) and heads (num_heads "
                     "{num_heads}, num_head_channels {num_head_channels}), which shapes cannot show, are the "
                     "preset's".format(**flags))
    if others:
        differ = sorted({name for r in others for name, value in release_flags(r).items() if flags[name] != value})
        notes.append(f"  {', '.join(r.file for r in others)} have the same shapes (they differ in "
                     f"{', '.join(differ)}); name the file as released to get its flags")
    return CheckpointFlags(flags, origin, notes)


def network_of(flags):
    """The config class of the network a run's flags describe (train_config.json keeps every flag)."""
    if "classifier_width" in flags:
        return ClassifierConfig
    if "clip_width" in flags:
        return ClipModelConfig
    if "clip_emb_tokens" in flags:
        return UnCLIPModelConfig
    if "xf_width" in flags:
        return TextModelConfig
    return SuperResConfig if "large_size" in flags else ModelConfig


def _same(name, given, stored, image_size):
    """Whether two values of a flag mean the same network ("16,8" and "8,16"; "" and the size's default)."""
    def resolutions(value):
        return sorted(int(r) for r in str(value).split(",") if r.strip())

    try:
        if name.endswith("attention_resolutions"):
            return resolutions(given) == resolutions(stored)
        if name.endswith("channel_mult"):
            return parse_channel_mult(given, image_size) == parse_channel_mult(stored, image_size)
    except ValueError:  # a malformed value: compared as written (and refused by the builder)
        pass
    return given == stored


def _shown(value):
    return '""' if value == "" else str(value)


def _contradiction(name, value, origin, stored, source):
    given = f"--{name} {_shown(value)}" if origin == COMMAND_LINE else f"{origin} (its {name} {_shown(value)})"
    return UsageError(f"{given} contradicts the checkpoint ({_shown(stored)}, from {source}); leave the flag out "
                      "to use the checkpoint's value")


def _widened(flag, values, origins, stored):
    """The VARIANT_FLAGS that the command line turns on over a base text model (stored: its flags) given as
    --init_checkpoint; else []."""
    if flag != "init_checkpoint" or any(stored.get(name, True) for name in VARIANT_FLAGS):
        return []
    return [name for name in VARIANT_FLAGS if origins[name] != DEFAULT and values[name]]


def _variant_refusal(name, value, path, stored):
    return UsageError(f"--{name} {value} with --init_checkpoint {path} (inpaint {stored['inpaint']}, super_res "
                      f"{stored['super_res']}): a variant's weights start only the same variant (a base model's are "
                      f"widened for a variant's inputs); leave --{name} out to fine-tune the checkpoint's own model, "
                      "or start from a base model's checkpoint")


def apply_checkpoints(values, origins, config_classes):
    """Fill the flags of the checkpoints that values name (model_path, classifier_path, resume_checkpoint,
    init_checkpoint) from their runs, in place; returns the lines to log about them.

    values, origins: cli.parse_flags's. A flag already given (command line or preset) keeps its value,
    unless it contradicts a checkpoint (a UsageError naming both values; not for FREE_FLAGS). Two
    checkpoints that disagree on a flag they share (image_size, num_classes, image_channels) are an error.
    """
    notes, filled = [], set()
    for flag, (networks, diffusion_flags) in CHECKPOINT_FLAGS.items():
        network = next((cls for cls in config_classes if cls in networks), None)
        if not values.get(flag) or network is None:
            continue
        found = checkpoint_flags(values[flag], flag)
        if found is None:
            notes.append(f"--{flag} {values[flag]}: no {CONFIG_NAME} beside it and the shapes of no released "
                         "checkpoint (the paper's or GLIDE's): its flags come from the command line and the "
                         "defaults")
            continue
        notes += found.notes
        if network_of(found.flags) is not network:
            raise UsageError(f"--{flag} {values[flag]} holds {NETWORK_WORDS[network_of(found.flags)]}, "
                             f"not {NETWORK_WORDS[network]}")
        names = [f.name for f in dataclasses.fields(network)] + list(diffusion_flags)
        if not found.flags.get("class_cond", network is ClassifierConfig):
            names.remove("num_classes")  # an unconditional model has no classes to agree on
        image_size = found.flags.get("large_size", found.flags.get("image_size"))
        widened = _widened(flag, values, origins, found.flags)
        free = FREE_FLAGS | set(widened) | ({"small_size"} if "super_res" in widened else set())  # base: unused
        if widened:
            notes.append(f"--{flag} {values[flag]} holds a base model: its input layer is widened for the inputs of "
                         f"{' and '.join(f'--{n} True' for n in widened)}, with zero weights")
        for name in (n for n in names if n in found.flags):
            stored = found.flags[name]
            if name in filled:
                if values[name] != stored:
                    raise UsageError(f"the checkpoints disagree on --{name}: {_shown(values[name])} (from "
                                     f"{origins[name]}), {_shown(stored)} (from {found.origin})")
            elif origins[name] != DEFAULT:
                if name not in free and not _same(name, values[name], stored, image_size):
                    if flag == "init_checkpoint" and name in VARIANT_FLAGS:
                        raise _variant_refusal(name, values[name], values[flag], found.flags)
                    raise _contradiction(name, values[name], origins[name], stored, found.origin)
            else:
                values[name], origins[name] = stored, found.origin
                filled.add(name)
    return notes


def report(values, origins, config_classes):
    """Log lines: every flag of config_classes as name=value, grouped by where it came from."""
    groups = {}
    for name in dict.fromkeys(f.name for cls in config_classes for f in dataclasses.fields(cls)):
        groups.setdefault(origins[name], []).append(f"{name}={_shown(values[name])}")
    order = sorted(groups, key=lambda origin: (origin != COMMAND_LINE, not origin.startswith("--preset"),
                                               origin == DEFAULT))
    return [f"flags from {origin}: {' '.join(groups[origin])}" for origin in order]


def resolve_configs(values, origins, config_classes):
    """cli.parse_flags's values and origins -> (one instance per config class with the checkpoints'
    flags filled in, the lines to log: what was recognised and every flag with its origin)."""
    notes = apply_checkpoints(values, origins, config_classes)
    return configs_of(values, config_classes), notes + report(values, origins, config_classes)


def start_run(parser, config_classes, argv=None, before_writing=None):
    """A script's start: parse the command line (argv: sys.argv[1:] when None), set up the processes, fill
    the checkpoints' flags (resolve_configs), set up the log dir and log every flag with its origin.
    before_writing(configs, log_dir) -> [warning]: more checks (or a lock) between the flags and the
    first write to the log dir; its warnings are logged. Returns one instance per config class. Usage
    errors come before anything is written."""
    values, origins = parse_flags(parser, argv)
    dist_util.setup_dist()
    configs, lines = resolve_configs(values, origins, config_classes)
    log_dir = os.path.expanduser(logger.default_dir())
    warnings = before_writing(configs, log_dir) if before_writing else []
    logger.configure(dir=log_dir)
    for line in lines:
        logger.log(line)
    for warning in warnings:
        logger.warn(warning)
    return configs
