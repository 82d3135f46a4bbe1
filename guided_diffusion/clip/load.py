"""The CLIP of --clip_model_path, whatever its file: clip_train.py's checkpoint, GLIDE's noisy CLIP (clip_image_enc.pt
with clip_text_enc.pt, or a folder holding both) or an OpenAI / open_clip ViT (a state dict or OpenAI's TorchScript
archive); and the sampling scripts' CLIP guidance from their flags (ClipGuidanceConfig), checked before writing."""

import math
import os
import sys
import zipfile
from pathlib import Path

import torch as th

from .. import glide, logger
from ..errors import UsageError
from ..sample_seeds import sample_generator
from ..sampling import start_sampling
from ..text.prompts import read_prompts, save_prompt_grid, save_prompts, split_prompts
from . import checkpoint
from .files import OWN_KEY, RELEASED
from .guides import CleanCLIPGuidance, NoisyCLIPGuidance

KINDS = ("a clip_train.py checkpoint (its train_config.json beside it), GLIDE's clip_image_enc.pt (with "
         "clip_text_enc.pt) or a folder holding both, or an OpenAI / open_clip ViT file (.pt, .bin, .safetensors)")
GLIDE_HEAD_CHANNELS = 64  # GLIDE's n_head_state: its files' widths are heads x 64
CUTOUT_STREAM = 2  # the per-sample random stream of the cutouts (sample_seeds: 0 noise, 1 labels)
PROMPT_HELP = "a prompt to steer toward by CLIP guidance; repeat the flag for more (default: none)"


def load_clip_model(path, text_path=None, quickgelu=None, device="cpu"):
    """The CLIP model (the guides' interface, clip/guides.py) of the file or folder at path, in eval mode on device.

    text_path: GLIDE's clip_text_enc.pt when path is its clip_image_enc.pt (None: the one beside it); quickgelu: an
    OpenAI / open_clip ViT's activation (None: OpenAI's QuickGELU; False for open_clip's own GELU models)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder: give a CLIP: {KINDS}")
    if path.is_dir():
        if not (path / RELEASED["image"]).is_file():
            raise UsageError(f"{path} is a folder without GLIDE's {RELEASED['image']}: give a CLIP's file, or a folder "
                             f"holding {RELEASED['image']} and {RELEASED['text']}")
        return _glide(path / RELEASED["image"], text_path or path / RELEASED["text"], device)
    if checkpoint.is_trained_clip(str(path)):
        _no_text_path(path, text_path, "a clip_train.py checkpoint")
        return checkpoint.load_clip(str(path), device)
    if path.suffix == ".safetensors" or _is_torchscript(path):
        _no_text_path(path, text_path, "an OpenAI / open_clip file")
        return _openai_vit().load_openai_clip_file(str(path), quickgelu).eval().to(device)
    state = _read_state(path)
    if OWN_KEY["image"] in state:
        return _glide(path, text_path or path.parent / RELEASED["text"], device, state)
    if OWN_KEY["text"] in state:
        raise UsageError(f"{path} is GLIDE's text encoder ({RELEASED['text']}): give it as --clip_text_path, and its "
                         f"{RELEASED['image']} as --clip_model_path")
    openai_vit = _openai_vit()
    if openai_vit.is_openai_clip_state(state):
        _no_text_path(path, text_path, "an OpenAI / open_clip file")
        return openai_vit.openai_clip_from_state(state, quickgelu).eval().to(device)
    raise UsageError(f"{path} is no CLIP this project reads ({len(state)} tensors, first {next(iter(state), None)}): "
                     f"give {KINDS}")


def _openai_vit():
    from . import openai_vit  # helper module for OpenAI / open_clip ViT files

    return openai_vit


def _no_text_path(path, text_path, kind):
    if text_path:
        raise UsageError(f"--clip_text_path {text_path} is for GLIDE's {RELEASED['image']}, and {path} is {kind}: "
                         "leave --clip_text_path out")


def _is_torchscript(path):
    """Whether path is a TorchScript archive (OpenAI's released ViT-B-32.pt and the like): a zip with code/."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _read_state(path):
    """{key: tensor} of a torch file (memory-mapped when it can be), unwrapped from {"state_dict": ...} and a
    "module." prefix as training checkpoints hold them."""
    try:
        try:
            state = th.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = th.load(path, map_location="cpu", weights_only=True)  # an old, non-zip torch file
    except Exception as exc:
        raise UsageError(f"{path} is not a torch file of tensors ({type(exc).__name__}): give {KINDS}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict: give {KINDS}")
    if state and all(str(key).startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _glide(image_path, text_path, device, image_state=None):
    """GLIDE's noisy CLIP from its two files, its configuration read from their shapes."""
    text_path = Path(text_path)
    if not text_path.is_file():
        raise UsageError(f"{image_path} is GLIDE's image encoder ({RELEASED['image']}) and its text encoder is not at "
                         f"{text_path}: pass its {RELEASED['text']} as --clip_text_path")
    image_state = _read_state(image_path) if image_state is None else image_state
    config = glide_config(image_state, _read_state(text_path))
    return glide.create_clip_model(config, device, image_enc_path=image_path, text_enc_path=text_path)


def glide_config(image_state, text_state):
    """GLIDE's clip config.yaml dict for its encoders' state dicts, from their shapes (heads of 64 channels, as
    GLIDE's; one head when a width is under 64)."""
    def blocks(state):
        return len({key.split(".")[1] for key in state if key.startswith("blocks.block_")})

    def heads(width):
        head_channels = GLIDE_HEAD_CHANNELS if width % GLIDE_HEAD_CHANNELS == 0 else width
        return width // head_channels, head_channels

    image_width, _, patch_size, _ = image_state["blocks.input.patch_proj"].shape
    patches = image_state["blocks.input.w_pos"].shape[0] - 1
    n_vocab, text_width = text_state["blocks.input.w_voc"].shape
    (n_head_image, state_image), (n_head_text, state_text) = heads(image_width), heads(text_width)
    w_t = image_state.get("blocks.input.w_t")
    return dict(glide.clip_model_defaults(), n_timesteps=0 if w_t is None else w_t.shape[0],
                image_size=patch_size * math.isqrt(patches), patch_size=patch_size, n_vocab=n_vocab,
                max_text_len=text_state["blocks.input.w_pos"].shape[0],
                n_embd=text_state["blocks.output.f.w"].shape[0], n_head_state_text=state_text, n_head_text=n_head_text,
                n_xf_blocks_text=blocks(text_state), n_head_state_image=state_image, n_head_image=n_head_image,
                n_xf_blocks_image=blocks(image_state))


# ----------------------------------------------------------------------------- the sampling scripts' flags


def guide_kind(config, clip_model):
    """"noisy" or "clean": --clip_guidance, auto being noisy for a noise-aware CLIP."""
    if config.clip_guidance == "auto":
        return "noisy" if clip_model.noise_aware else "clean"
    return config.clip_guidance


def check_clip_flags(config, prompts):
    """Refuse the CLIP flags that mean nothing (before any file is read): prompts without a CLIP, a CLIP without
    prompts, --clip_text_path alone. prompts: the --prompt / --prompts_file prompts (a list, maybe empty)."""
    if not config.clip_model_path:
        if config.clip_text_path:
            raise UsageError(f"--clip_text_path {config.clip_text_path} is the text side of a --clip_model_path "
                             "clip_image_enc.pt: pass --clip_model_path as well")
        if prompts:
            raise UsageError("--prompt / --prompts_file steer samples by CLIP guidance: pass --clip_model_path CLIP")
        return False
    if not prompts:
        raise UsageError(f"--clip_model_path {config.clip_model_path} guides toward prompts: pass --prompt \"TEXT\" "
                         "(repeatable) or --prompts_file FILE")
    return True


class ClipPrompts:
    """The scripts' CLIP guidance: the CLIP of --clip_model_path, checked against the samples and the diffusion
    when made (before anything is written); guides() gives each SeededBatch its guide, sample i toward prompt
    i % P; of, write_prompts and write_grid give prompts.txt and prompts_grid.png (text/prompts.py's).

    config: a ClipGuidanceConfig; prompts: a list of str; sample_shape: (C, H, W); diffusion_config: the
    DiffusionConfig sampled with."""

    def __init__(self, config, prompts, sample_shape, diffusion_config):
        self.config, self.prompts = config, list(prompts)
        quickgelu = None if config.clip_quickgelu == "auto" else config.clip_quickgelu == "True"
        self.clip_model = load_clip_model(config.clip_model_path, config.clip_text_path or None, quickgelu)
        self.clip_model.requires_grad_(False)  # the guides differentiate with respect to the images only
        self.kind = guide_kind(config, self.clip_model)
        channels, height, width = sample_shape
        if channels not in (1, 3):
            raise UsageError(f"CLIP guidance reads grey or RGB images and the samples have {channels} channels: "
                             "sample a 1- or 3-channel model")
        if self.kind == "noisy":
            self._check_noisy(height, width, diffusion_config)
        elif config.clip_cutouts < 0:
            raise UsageError(f"--clip_cutouts {config.clip_cutouts}: pass 0 (the whole image) or a number of crops")

    def _check_noisy(self, height, width, diffusion_config):
        path, size = self.config.clip_model_path, self.clip_model.image_size
        if not self.clip_model.noise_aware:
            raise UsageError(f"--clip_model_path {path} is a clean CLIP (it reads no timesteps): use "
                             "--clip_guidance clean (or auto)")
        if (height, width) != (size, size):
            raise UsageError(f"--clip_model_path {path} reads noisy {size} x {size} images and the samples are "
                             f"{height} x {width}: x_t cannot be resized, use --clip_guidance clean or a CLIP of "
                             f"{height} px")
        steps = self.clip_model.n_timesteps
        if steps != diffusion_config.diffusion_steps:
            raise UsageError(f"--clip_model_path {path} reads timesteps of a {steps}-step diffusion and the model's "
                             f"has --diffusion_steps {diffusion_config.diffusion_steps}: use a CLIP trained on this "
                             "diffusion, or --clip_guidance clean")
        if self.config.clip_cutouts or self.config.clip_augment:
            raise UsageError("--clip_cutouts and --clip_augment crop x0_hat for clean CLIP guidance: leave them out "
                             "with a noise-aware CLIP, or pass --clip_guidance clean")

    def guides(self, diffusion, device):
        """A function SeededBatch -> (its CLIP guide,): the guide is made once, here (the prompts encoded once, on
        device), and picked per batch: sample i toward prompt i % P, a clean guide's crops from sample i's own
        random stream of the run's seed (so the images do not depend on the batch size)."""
        self.clip_model = self.clip_model.to(device)
        scale = self.config.clip_scale
        if scale == 0:  # --clip_scale 0: plain sampling (the prompts still written), no gradient computed
            return lambda batch: ()
        if self.kind == "noisy":
            guide = NoisyCLIPGuidance(self.clip_model, self.prompts, 3.0 if scale < 0 else scale, diffusion)
            return lambda batch: (guide.of(batch.indices),)
        guide = CleanCLIPGuidance(self.clip_model, self.prompts, 1000.0 if scale < 0 else scale,
                                  self.config.clip_cutouts, self.config.clip_augment)
        return lambda batch: (guide.of(batch.indices, [sample_generator(batch.seed, i, CUTOUT_STREAM)
                                                       for i in batch.indices]),)

    def of(self, indices):
        """The prompts of sample indices (prompts.txt's lines)."""
        return [self.prompts[i % len(self.prompts)] for i in indices]

    def write_prompts(self, out_dir, num_samples):
        """out_dir/prompts.txt (line i: sample i's prompt), logged."""
        logger.log(f"{self.kind} CLIP guidance; prompts of the samples: {save_prompts(out_dir, self, num_samples)}")

    def write_grid(self, out_dir, images):
        """out_dir/prompts_grid.png of the samples (uint8 [N, H, W, 3]): one row per prompt, logged."""
        logger.log(f"one row per prompt: {save_prompt_grid(images, self, os.path.join(out_dir, 'prompts_grid.png'))}")


def with_prompt_flag(parser):
    """parser with --prompt TEXT (repeatable; a script's own flag, split off by start_sampling_with_clip)."""
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help=PROMPT_HELP)
    return parser


def start_sampling_with_clip(parser, config_classes, argv=None):
    """sampling.start_sampling for image_sample / classifier_sample (config_classes: the network's config first,
    the DiffusionConfig second, the ClipSampleConfig last), --prompt split off and the CLIP loaded and checked
    before anything is written. Returns (the configs, the ClipPrompts or None without --clip_model_path)."""
    prompt_flags, argv = split_prompts(sys.argv[1:] if argv is None else argv)
    found = {}

    def check(configs, log_dir):
        model_config, diffusion_config, clip_config = configs[0], configs[1], configs[-1]
        shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
        found["clip"] = clip_prompts_of_flags(clip_config, prompt_flags, shape, diffusion_config,
                                              clip_config.prompts_file)
        return []

    configs = start_sampling(parser, config_classes, argv, check)
    return configs, found["clip"]


def clip_prompts_of_flags(config, prompt_flags, sample_shape, diffusion_config, prompts_file=""):
    """The scripts' ClipPrompts of a ClipGuidanceConfig and the --prompt values (a list; prompts_file: the
    --prompts_file flag), or None without --clip_model_path; the refusals of check_clip_flags and ClipPrompts."""
    prompts = read_prompts(prompt_flags, prompts_file) if prompt_flags or prompts_file else []
    if not check_clip_flags(config, prompts):
        return None
    return ClipPrompts(config, prompts, sample_shape, diffusion_config)
