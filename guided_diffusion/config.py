"""The typed configuration: every command-line flag of the scripts, grouped by concern.

Each field is one flag: its name, its type (`Literal[...]` for a choice), its default (the release's,
or the neutral value for this project's additions) and a one-line help. Parsers (`cli.py`), the
release's `*_defaults()` dicts (`script_util.py`), `train_config.json` and the resume checks all come
from these classes; the builders in `build.py` take them.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


def flag(default, help, free_on_resume=False):
    """A config field with its default and its one-line --help text; free_on_resume: a model flag that
    changes no weight (a memory or kernel choice), so a resumed run may set it differently."""
    return field(default=default, metadata={"help": help, "free_on_resume": free_on_resume})


def flag_help(config_field):
    """The --help text of a config field."""
    return config_field.metadata["help"]


def as_flags(*configs):
    """{flag name: value} of config instances (later configs win on shared names)."""
    return {name: value for config in configs for name, value in dataclasses.asdict(config).items()}


def checked_on_resume(*configs):
    """{flag name: value} of config instances without the flags marked free_on_resume."""
    free = {f.name for config in configs for f in dataclasses.fields(config) if f.metadata["free_on_resume"]}
    return {name: value for name, value in as_flags(*configs).items() if name not in free}


def defaults_of(*config_classes):
    """{flag name: default} of config classes, in field order."""
    return as_flags(*(cls() for cls in config_classes))


def split_flags(flags, *config_classes):
    """{flag name: value} -> one instance of each class from the flags it has (others at their defaults).

    A flag that no class has is a TypeError naming it; a flag several classes share goes to each.
    """
    names = [{f.name for f in dataclasses.fields(cls)} for cls in config_classes]
    unknown = set(flags) - set().union(*names)
    if unknown:
        known = ", ".join(cls.__name__ for cls in config_classes)
        raise TypeError(f"unknown flag(s) {', '.join(sorted(unknown))}: expected fields of {known}")
    return tuple(cls(**{k: v for k, v in flags.items() if k in own}) for cls, own in zip(config_classes, names))


# ----------------------------------------------------------------------------- models


@dataclass
class DiffusionConfig:
    """The Gaussian diffusion: schedule, parameterisation, loss and respacing."""

    learn_sigma: bool = flag(False, "the model also outputs its variance (a second set of output channels)")
    diffusion_steps: int = flag(1000, "number of diffusion steps T of the training schedule")
    noise_schedule: Literal["linear", "cosine"] = flag("linear", "beta schedule")
    timestep_respacing: str = flag(
        "", 'steps to sample with: "ddimN", comma-separated counts per section ("250") or the timesteps '
        '("at:991,597"); "" keeps all T'
    )
    use_kl: bool = flag(False, "train on the variational bound (KL) instead of the simple MSE")
    predict_xstart: bool = flag(False, "the model predicts x_0 instead of the noise eps")
    rescale_timesteps: bool = flag(False, "feed timesteps to the model scaled to [0, 1000)")
    rescale_learned_sigmas: bool = flag(False, "scale the hybrid loss's vb term by T / 1000")


@dataclass
class TextDiffusionConfig(DiffusionConfig):
    """The diffusion of a text-conditional model: GLIDE's models always learn sigma (the hybrid loss)."""

    learn_sigma: bool = flag(True, "the model also outputs its variance (a second set of output channels)")


@dataclass
class UNetConfig:
    """What the diffusion UNet and the super-resolution UNet share."""

    num_channels: int = flag(128, "channels of the first level (the base width)")
    num_res_blocks: int = flag(2, "residual blocks per resolution level")
    num_heads: int = flag(4, "attention heads (ignored when num_head_channels is set)")
    num_heads_upsample: int = flag(-1, "attention heads of the upsampling path (-1: num_heads)")
    num_head_channels: int = flag(-1, "channels per attention head (-1: use num_heads)")
    attention_resolutions: str = flag("16,8", "comma-separated resolutions in pixels that get attention blocks")
    dropout: float = flag(0.0, "dropout probability in the residual blocks")
    class_cond: bool = flag(False, "class-conditional model (labels from the file-name prefixes)")
    use_checkpoint: bool = flag(False, "gradient checkpointing (less memory, slower)", free_on_resume=True)
    use_scale_shift_norm: bool = flag(True, "AdaGN: the embedding scales and shifts the normalised features")
    resblock_updown: bool = flag(False, "up/downsample inside residual blocks instead of separate layers")
    use_fp16: bool = flag(False, "float16 weights for the torso (and loss scaling in training)")
    num_classes: int = flag(1000, "classes of a class-conditional model")
    resblock_rescale: bool = flag(False, "scale each residual sum by 1/sqrt(2) (the paper's ablation)")
    attention_impl: Literal["math", "sdpa"] = flag("math", "attention kernel: the release's einsum or PyTorch's SDPA",
                                                   free_on_resume=True)
    image_channels: int = flag(3, "channels of the images (1: greyscale); saved samples always have 3")


@dataclass
class ModelConfig(UNetConfig):
    """The diffusion UNet of image_train / image_sample."""

    image_size: int = flag(64, "height and width of the images in pixels")
    channel_mult: str = flag("", 'width multiplier per level, e.g. "1,2,2,4" ("": the image size\'s default)')
    use_new_attention_order: bool = flag(False, "split qkv into q, k, v before heads (64x64 model)")
    class_dropout_prob: float = flag(0.0, "replace labels by a null class with this probability (for --guidance_scale)")
    guidance_embed: bool = flag(False, "take the guidance scale W as an input (a consistency student, set by "
                                "consistency_train.py --guidance_scale_max)")


@dataclass
class SuperResConfig(UNetConfig):
    """The super-resolution UNet: samples large_size images given small_size ones."""

    large_size: int = flag(256, "size of the output images in pixels")
    small_size: int = flag(64, "size of the low-resolution input images in pixels")
    channel_mult: str = flag("", 'width multiplier per level, e.g. "1,2,3,4" ("": the large size\'s default)')


@dataclass
class TextModelConfig(UNetConfig):
    """A text-conditional model (GLIDE): the UNet, the caption's transformer, and the extra inputs of the
    inpainting and super-resolution variants. Defaults: GLIDE's base model (float32 unless --use_fp16)."""

    image_size: int = flag(64, "height and width of the images in pixels")
    channel_mult: str = flag("", 'width multiplier per level, e.g. "1,2,3,4" ("": the image size\'s default)')
    num_channels: int = flag(192, "channels of the first level (the base width)")
    num_res_blocks: int = flag(3, "residual blocks per resolution level")
    num_heads: int = flag(1, "attention heads (ignored when num_head_channels is set)")
    num_head_channels: int = flag(64, "channels per attention head (-1: use num_heads)")
    attention_resolutions: str = flag("32,16,8", "comma-separated resolutions in pixels that get attention blocks")
    dropout: float = flag(0.1, "dropout probability in the residual blocks")
    resblock_updown: bool = flag(True, "up/downsample inside residual blocks instead of separate layers")
    text_ctx: int = flag(128, "caption length in tokens (longer captions are truncated, with a warning)")
    xf_width: int = flag(512, "width of the caption transformer")
    xf_layers: int = flag(16, "blocks of the caption transformer")
    xf_heads: int = flag(8, "attention heads of the caption transformer")
    xf_final_ln: bool = flag(True, "a LayerNorm after the caption transformer's last block")
    xf_padding: bool = flag(True, "a learned embedding in the caption's padding slots (the empty caption is "
                            "all padding: the unconditional branch)")
    inpaint: bool = flag(False, "inpainting model: the known image and its mask are extra input channels")
    super_res: bool = flag(False, "super-resolution model: a low-resolution image is an extra input")
    small_size: int = flag(64, "super_res: size of the low-resolution input images in pixels (text_train.py "
                           "area-downsamples each image to it; it must divide --image_size)")
    cache_text_emb: bool = flag(False, "keep a caption's encoding across the steps of a sampling run",
                                free_on_resume=True)
    caption_dropout_prob: float = flag(0.0, "train the empty caption with this probability (mask all False: "
                                       "the unconditional branch of --guidance_scale)", free_on_resume=True)


@dataclass
class ClassifierConfig:
    """The noisy-image classifier of classifier guidance (fields in the order of create_classifier)."""

    image_size: int = flag(64, "height and width of the images in pixels")
    classifier_use_fp16: bool = flag(False, "float16 weights for the classifier's torso")
    classifier_width: int = flag(128, "channels of the classifier's first level")
    classifier_depth: int = flag(2, "residual blocks per level of the classifier")
    classifier_attention_resolutions: str = flag("32,16,8", "resolutions in pixels with attention in the classifier")
    classifier_use_scale_shift_norm: bool = flag(True, "AdaGN in the classifier's residual blocks")
    classifier_resblock_updown: bool = flag(True, "downsample inside the classifier's residual blocks")
    classifier_pool: Literal["adaptive", "attention", "spatial", "spatial_v2"] = flag(
        "attention", "how the classifier pools its features into logits"
    )
    num_classes: int = flag(1000, "classes the classifier tells apart")
    classifier_attention_impl: Literal["math", "sdpa"] = flag("math", "the classifier's attention kernel",
                                                              free_on_resume=True)
    classifier_channel_mult: str = flag("", 'classifier width multiplier per level ("": the image size\'s default)')
    image_channels: int = flag(3, "channels of the images (1: greyscale)")


# ----------------------------------------------------------------------------- sampling


@dataclass
class InferenceConfig:
    """What every script that runs a trained model takes."""

    model_path: str = flag("", "checkpoint to load (modelNNNNNN.pt or ema_RATE_NNNNNN.pt)")
    clip_denoised: bool = flag(True, "clip each x_0 prediction to [-1, 1]")
    seed: int = flag(-1, "seed of the per-sample random streams (-1: draw one and log it)")
    progress: bool = flag(True, "show progress bars on rank 0")


@dataclass
class SamplerConfig:
    """The sampler and its options (each option applies to the samplers named in its help)."""

    use_ddim: bool = flag(False, "the release's switch for --sampler ddim")
    sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "heun", "consistency"] = flag(
        "ddpm", "ddpm (ancestral), ddim, dpm++2m (DPM-Solver++(2M)), dpm++2m-sde (its stochastic form), heun "
        "(Karras et al.'s 2nd order, 2 evaluations a step) or consistency (a distilled model: --timestep_respacing "
        "N is N evaluations, at:T1,T2,... those timesteps); the step count is --timestep_respacing's"
    )
    eta: float = flag(-1.0, "ddim's and dpm++2m-sde's noise scale (-1: the sampler's default, 0 for ddim, 1 for "
                      "dpm++2m-sde; ddim with eta 1 is DDPM-like, dpm++2m-sde with eta 0 is dpm++2m)")
    churn: float = flag(0.0, "heun: Karras et al.'s S_churn, noise added back per step (0: deterministic)")
    s_tmin: float = flag(0.0, "heun: churn only where sigma / alpha >= s_tmin")
    s_tmax: float = flag(float("inf"), "heun: churn only where sigma / alpha <= s_tmax")
    s_noise: float = flag(1.0, "heun: scale of the churn's noise")
    lower_order_final: bool = flag(False, "dpm++2m, dpm++2m-sde: first-order last step (steadier at few steps)")
    dynamic_threshold: float = flag(0.0, "dynamic thresholding of x_0 at this quantile, e.g. 0.995 (0: off)")
    reclip_guided: Literal["auto", "True", "False"] = flag(
        "auto", "clip x_0 again after a score guide's shift (auto: on for dpm++2m, dpm++2m-sde, heun and "
        "consistency, off for the release's ddim)"
    )


@dataclass
class SampleConfig(SamplerConfig, InferenceConfig):
    """Sampling: how many images, in which batches, with which sampler."""

    num_samples: int = flag(10000, "images to draw over all ranks")
    batch_size: int = flag(16, "images per batch on each rank")


@dataclass
class FreeGuidanceConfig:
    """Classifier-free guidance of a model trained with label dropout."""

    guidance_scale: float = flag(
        1.0, "classifier-free guidance W: eps_u + W (eps_c - eps_u) (1: plain conditional sampling)"
    )


@dataclass
class ClassifierGuidanceConfig:
    """Classifier guidance: a noisy-image classifier's gradient steers toward the labels."""

    classifier_path: str = flag("", "checkpoint of the noisy-image classifier")
    classifier_scale: float = flag(1.0, "scale of the classifier's gradient")


@dataclass
class ClassSampleConfig(FreeGuidanceConfig, SampleConfig):
    """Sampling a (possibly class-conditional) diffusion model: labels and classifier-free guidance."""

    class_labels: str = flag("", 'comma-separated labels used in turn ("": uniformly random)')


@dataclass
class ClassifierSampleConfig(ClassifierGuidanceConfig, ClassSampleConfig):
    """classifier_sample: a classifier's gradient steers the samples toward the labels."""


@dataclass
class EditConfig(ClassifierGuidanceConfig, FreeGuidanceConfig, SampleConfig):
    """image_edit: the images, the task and its forward model, the method and what guides it."""

    input: str = flag("", "images to restore or edit: a folder of images or an npz batch (arr_0 uint8 NHWC, "
                      "optional arr_1 labels)")
    num_samples: int = flag(0, "edit the first N inputs (0: all of them)")
    task: Literal["inpaint", "super_res", "deblur", "sdedit", "reconstruct"] = flag(
        "inpaint", "inpaint, super_res (average-pool factor), deblur (Gaussian blur), sdedit (noise to a strength, "
        "sample back) or reconstruct (DDIM inversion, then DDIM sampling)"
    )
    method: Literal["dps", "repaint", "glide"] = flag(
        "dps", "dps (any task with a forward model, any --sampler), repaint (inpaint only, DDPM steps) or glide "
        "(inpaint with an inpainting text model, any --sampler: the known pixels as its input and in every x_0)")
    mask: str = flag("box", "inpaint: the hole: box (the centred half-size square), box:SIDE, "
                     "box:TOP,LEFT,HEIGHT,WIDTH, half:left|right|top|bottom, random:FRACTION (drawn with --seed, 0 for -1), "
                     "or a PNG (white = known)")
    factor: int = flag(4, "super_res: the average-pooling factor; it must divide the image size")
    blur_sigma: float = flag(2.0, "deblur: the Gaussian blur's standard deviation in pixels")
    noise_sigma: float = flag(0.0, "standard deviation of the measurement noise n of y = A(x) + n ([-1, 1] units)")
    zeta: float = flag(1.0, "dps: the step size of x_{t-1} -= zeta grad_{x_t} ||y - A(x0_hat(x_t))||")
    jump_length: int = flag(10, "repaint: states gone back up at each resampling")
    resamplings: int = flag(10, "repaint: passes through each jump (1: no resampling)")
    strength: float = flag(0.5, "sdedit: how far to noise the input, t0 = strength * T (0: keep it, 1: ignore it)")
    target_class: int = flag(-1, "class to edit toward (a class-conditional model, or --classifier_path / --loss to "
                             "steer); -1: none (the null class when the model has one, else the inputs' labels)")
    loss: str = flag("", "FILE.py:NAME, a function loss(x0, **model_kwargs) -> [N] (lower is better) whose gradient "
                     "through the model guides every step (e.g. a clean classifier's -log p(y | x0))")
    loss_scale: float = flag(1.0, "scale of --loss's gradient")
    ref_batch: str = flag("", "reference batch npz for the outputs' FID in metrics.json (\"\": no FID)")
    prompts_file: str = flag("", "a text model: UTF-8 file of prompts, one a line (blank lines skipped); input i is "
                             "edited toward prompt i % P; instead of --prompt")


@dataclass
class SuperResSampleConfig(SampleConfig):
    """super_res_sample: the low-resolution images to upsample."""

    base_samples: str = flag("", "npz of low-resolution samples (as image_sample writes) to upsample")


@dataclass
class TextSampleConfig(FreeGuidanceConfig, SampleConfig):
    """text_sample: the prompts (--prompt TEXT, repeatable, is text_sample.py's own flag) and GLIDE's
    optional upsampling stage."""

    prompts_file: str = flag("", "UTF-8 text file of prompts, one a line (blank lines skipped); instead of --prompt")
    upsample_model_path: str = flag("", "a super-resolution text model (its train_config.json beside it, or GLIDE's upsample.pt) that "
                                    "upsamples every sample, DDIM eta 0 on --upsample_respacing (\"\": none)")
    upsample_respacing: str = flag("fast27", "the upsampler's steps (its own diffusion's respacing)")
    upsample_temp: float = flag(0.997, "the upsampler's starting noise is scaled by this (GLIDE's 0.997)")


@dataclass
class NllConfig(InferenceConfig):
    """image_nll: the bits per dimension of a folder of images."""

    data_dir: str = flag("", "folder of images to evaluate")
    num_samples: int = flag(1000, "images to evaluate over all ranks")
    batch_size: int = flag(1, "images per batch on each rank")


# ----------------------------------------------------------------------------- training


@dataclass
class LoopConfig:
    """What both training loops take."""

    data_dir: str = flag("", "folder of training images (class = file name up to the first '_')")
    schedule_sampler: Literal["uniform", "loss-second-moment"] = flag("uniform", "how training timesteps are drawn")
    lr: float = flag(1e-4, "AdamW learning rate")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    batch_size: int = flag(1, "images per step on each rank")
    microbatch: int = flag(-1, "split each batch into chunks of this size (-1: no split)")
    log_interval: int = flag(10, "log the losses every this many steps")
    save_interval: int = flag(10000, "write a checkpoint every this many steps")
    resume_checkpoint: str = flag("", "modelNNNNNN.pt of a run to continue exactly")
    seed: int = flag(0, "python / numpy / torch seed (plus the rank)")
    use_bf16: bool = flag(False, "bf16 autocast of the forward pass (float32 weights)")
    init_checkpoint: str = flag("", "weights to start from at step 0 (fine-tuning)")
    max_skipped_steps: int = flag(100, "stop after this many consecutive non-finite steps")
    num_workers: int = flag(1, "image decoding processes of the data loader (0: decode in the training process)")


@dataclass
class TrainConfig(LoopConfig):
    """image_train / super_res_train."""

    lr_anneal_steps: int = flag(0, "decay the learning rate linearly to 0 over this many steps (0: constant)")
    ema_rate: str = flag("0.9999", "comma-separated EMA rates, one ema_RATE_NNNNNN.pt file each")
    fp16_scale_growth: float = flag(1e-3, "log2 growth of the fp16 loss scale per good step")
    max_steps: int = flag(0, "stop after this many completed steps (0: never)")
    ema_warmup: bool = flag(False, "EMA rate min(rate, (1 + n) / (10 + n)) after n updates (for short runs)")


@dataclass
class TextTrainConfig(TrainConfig):
    """text_train: TrainConfig and the random masks that train an inpainting text model (--inpaint True)."""

    inpaint_unknown_prob: float = flag(0.25, "inpaint: share of the training examples whose whole image is unknown "
                                       "(mask all 0: text to image, as with no known image)")
    inpaint_min_area: float = flag(0.1, "inpaint: the least share of an image a random rectangle mask leaves unknown")
    inpaint_max_area: float = flag(0.75, "inpaint: the most share of an image a random rectangle mask leaves unknown")


@dataclass
class ConsistencyConfig(TrainConfig):
    """consistency_train: consistency distillation (CD) of a teacher, or consistency training (CT), of a student
    with the teacher's architecture on its whole schedule (docs/distillation.md)."""

    teacher_path: str = flag("", "the diffusion checkpoint distilled (CD) or tuned (CT): its run's model and "
                             "diffusion flags, and the student's first weights (\"\": CT from scratch)")
    training_mode: Literal["consistency_distillation", "consistency_training"] = flag(
        "consistency_distillation", "CD: the teacher's ODE step from the noisier level gives the target's input; "
        "CT: the same noise at the lower level, no teacher evaluated")
    num_scales: int = flag(40, "N, the grid's noise levels with --scale_mode fixed (consistency_models' CD: 40)")
    scale_mode: Literal["fixed", "progressive", "exponential"] = flag(
        "fixed", "N: --num_scales; progressive: from --start_scales to --end_scales + 1 over --total_training_steps "
        "(consistency_models' CT); exponential: doubling from --start_scales (improved CT)")
    start_scales: int = flag(2, "s0, N at step 0 of a growing grid (and the exponent of the adaptive mu)")
    end_scales: int = flag(40, "s1: a growing grid has s1 + 1 levels at --total_training_steps (on 1000 steps at most "
                           "60 levels fit a cosine schedule, 69 a linear one)")
    target_ema_mode: Literal["fixed", "adaptive"] = flag(
        "fixed", "the target's EMA rate: --start_ema, or adaptive mu = exp(s0 log(start_ema) / (N - 1)) (with "
        "--scale_mode progressive)")
    start_ema: float = flag(0.95, "mu0, the target network's EMA rate (0: the target is the student, improved CT)")
    total_training_steps: int = flag(600000, "K, the steps over which a growing grid grows; the run ends there "
                                     "unless --max_steps")
    max_steps: int = flag(0, "stop after this many completed steps (0: at --total_training_steps)")
    loss_norm: Literal["l2", "l1", "pseudo-huber"] = flag(
        "l2", "the distance d(f(x_hi), f^-(x_lo)): mean squared, mean absolute, or improved CT's pseudo-Huber "
        "sqrt(|a - b|^2 + c^2) - c (LPIPS is not available offline)")
    weight_schedule: Literal["uniform", "snr", "snr+1", "karras", "truncated-snr", "ict"] = flag(
        "uniform", "lambda(sigma_hi): 1, sigma^-2, sigma^-2 + 1, sigma^-2 + 4 (karras), max(sigma^-2, 1), or "
        "1 / (sigma_hi - sigma_lo) (improved CT)")
    huber_c: float = flag(0.0, "pseudo-huber's c (0: improved CT's 0.00054 sqrt(C H W))")
    teacher_solver: Literal["heun", "euler"] = flag("heun", "CD: the teacher's unclipped step from sigma_hi to "
                                                    "sigma_lo (heun: two evaluations)")
    sigma_max: float = flag(80.0, "the grid's largest noise level, capped at the schedule's largest sigma_t")
    guidance_scale: float = flag(1.0, "CD of a teacher trained with label dropout: its evaluations use the "
                                 "classifier-free guided eps_u + W (eps_c - eps_u), W baked in (1: unguided)")
    guidance_scale_max: float = flag(1.0, "CD of a teacher trained with label dropout: each example's W ~ U[1, W_max] "
                                     "guides the teacher and is the student's input (--guidance_embed); 1: off")
    schedule_sampler: Literal["uniform"] = flag("uniform", "unused: the consistency loss draws grid levels "
                                                "uniformly")


@dataclass
class ClassifierTrainConfig(LoopConfig):
    """classifier_train."""

    lr: float = flag(3e-4, "AdamW learning rate")
    batch_size: int = flag(4, "images per step on each rank")
    val_data_dir: str = flag("", "folder of validation images (\"\": no validation)")
    noised: bool = flag(True, "train on noised images x_t at random t (False: clean images)")
    iterations: int = flag(150000, "steps to train for")
    anneal_lr: bool = flag(False, "decay the learning rate linearly to 0 at --iterations")
    eval_interval: int = flag(5, "evaluate on a validation batch every this many steps")


# ----------------------------------------------------------------------------- export


@dataclass
class ExportConfig:
    """export: a checkpoint as a safetensors file, or with its schedule as a diffusers folder."""

    model_path: str = flag("", "checkpoint to convert (--to safetensors also takes a classifier's)")
    to: Literal["safetensors", "diffusers"] = flag(
        "safetensors", "safetensors: the same state dict, tensors only; diffusers: a folder with unet/ (UNet2DModel) "
        "and scheduler/ (DDPMScheduler), from the model's flags"
    )
    out: str = flag("", "the .safetensors file, or the (new or empty) folder, to write")


# ----------------------------------------------------------------------------- CLIP (clip_train)


@dataclass
class ClipModelConfig:
    """A CLIP of GLIDE's noisy-CLIP layout (clip/encoders.py): a ViT image encoder, noise-aware or clean, and a
    causal text encoder over CLIP's BPE tokens, both giving clip_width features. Defaults: GLIDE's noisy CLIP but
    the vocabulary (the tokenizer's 49,408 rows, not GLIDE's 65,536)."""

    clip_image_size: int = flag(64, "height and width in pixels of the images the image encoder reads")
    clip_patch_size: int = flag(4, "side of an image patch in pixels (it must divide --clip_image_size)")
    clip_width: int = flag(512, "dimension of the image and text features (GLIDE's n_embd)")
    clip_head_channels: int = flag(64, "channels per attention head of both encoders (their width: heads x this)")
    clip_image_heads: int = flag(12, "attention heads of the image encoder")
    clip_image_layers: int = flag(12, "transformer blocks of the image encoder")
    clip_text_heads: int = flag(8, "attention heads of the text encoder")
    clip_text_layers: int = flag(12, "transformer blocks of the text encoder")
    clip_text_ctx: int = flag(77, "CLIP tokens a caption is read as, start and end tokens included (longer ones "
                              "are cut)")
    clip_n_vocab: int = flag(49408, "rows of the token embedding (49408: CLIP's tokenizer; GLIDE's release: 65536)")
    clip_noise_aware: bool = flag(True, "the image encoder reads x_t and its timestep t (one embedding per step of "
                                  "--diffusion_steps); False: a clean CLIP of clean images")


@dataclass
class ClipTrainConfig(LoopConfig):
    """clip_train: CLIP's contrastive loss on captioned images (noised by the diffusion's schedule when the
    image encoder is noise-aware)."""

    data_dir: str = flag("", "folder of captioned images: <stem>.txt beside each image, one caption per line")
    lr: float = flag(3e-4, "AdamW learning rate")
    batch_size: int = flag(32, "image-caption pairs per step on each rank (the contrast is over all ranks' pairs)")
    microbatch: int = flag(-1, "must stay -1: the contrastive loss compares the whole batch at once")
    schedule_sampler: Literal["uniform"] = flag("uniform", "how the noise-aware encoder's timesteps are drawn")
    max_steps: int = flag(0, "stop after this many completed steps (0: never)")


# ----------------------------------------------------------------------------- unCLIP (DALL-E 2's decoder)


@dataclass
class UnCLIPModelConfig(TextModelConfig):
    """DALL-E 2's decoder: the UNet conditioned on a CLIP image embedding e [N, D], projected into the timestep
    embedding and into K context tokens of width --xf_width (and, with --clip_caption True, on a caption too)."""

    clip_caption: bool = flag(False, "also condition on the caption (GLIDE's transformer; captions beside the "
                              "images): the K tokens join the caption's encoding")
    clip_emb_dim: int = flag(0, "D, the width of the CLIP image embedding (0: the CLIP's, read from its embeddings)")
    clip_emb_tokens: int = flag(4, "K, the context tokens projected from the embedding (DALL-E 2's 4)")
    clip_emb_dropout_prob: float = flag(0.1, "in training, replace the embedding by zeros with this probability (the "
                                        "unconditional branch of --guidance_scale)", free_on_resume=True)
    clip_model_path: str = flag("", "the CLIP whose unit image embeddings condition the decoder (clip_train.py's "
                                "checkpoint); a decoder samples only with the CLIP it was trained with",
                                free_on_resume=True)


@dataclass
class UnCLIPTrainConfig(TrainConfig):
    """unclip_train: TrainConfig and the cache of the training images' CLIP embeddings."""

    embedding_cache: str = flag("", "npz of the training images' unit CLIP embeddings, computed when missing (\"\": "
                                "clip_embeddings.npz in the log dir)")
    embedding_batch_size: int = flag(64, "images per batch when computing the embedding cache")


@dataclass
class UnCLIPSampleConfig(FreeGuidanceConfig, SampleConfig):
    """unclip_sample: image variations of a folder, or an interpolation between two images (--interpolate A B,
    unclip_sample.py's own flag); --num_samples follows from them."""

    image_variations: str = flag("", "folder of images: --variations_per_image samples of each, from its embedding")
    variations_per_image: int = flag(4, "samples per input image of --image_variations")
    steps: int = flag(8, "--interpolate: samples along the slerp from A's embedding to B's, both ends included")


# ----------------------------------------------------------------------------- CLIP guidance (the sampling scripts)


@dataclass
class ClipGuidanceConfig:
    """CLIP guidance: an image-text model's gradient steers sample i toward prompt i % P (--prompt TEXT, repeatable,
    is the script's own flag)."""

    clip_model_path: str = flag("", "the CLIP: a clip_train.py checkpoint, GLIDE's clip_image_enc.pt or a folder "
                                "holding it and clip_text_enc.pt, or an OpenAI / open_clip ViT file (\"\": no CLIP "
                                "guidance)")
    clip_text_path: str = flag("", "GLIDE's clip_text_enc.pt, for a --clip_model_path clip_image_enc.pt (\"\": the "
                               "one beside it)")
    clip_scale: float = flag(-1.0, "scale of the CLIP gradient (-1: 3 for noisy guidance, GLIDE's; 1000 for clean, "
                             "the CLIP-guided diffusion notebooks'; 0: no guidance, the prompts still written)")
    clip_guidance: Literal["auto", "noisy", "clean"] = flag(
        "auto", "noisy: the similarity's gradient at x_t and t (a noise-aware CLIP, GLIDE's cond_fn); clean: the "
        "spherical distance of x0_hat's embedding, differentiated through the model; auto: noisy for a noise-aware "
        "CLIP, else clean")
    clip_cutouts: int = flag(0, "clean: the loss is averaged over this many random square crops of x0_hat resized "
                             "to the CLIP's size (0: the whole image resized)")
    clip_augment: bool = flag(False, "clean: flip each crop left-right at random and shift it a little")
    clip_quickgelu: Literal["auto", "True", "False"] = flag(
        "auto", "an OpenAI / open_clip ViT's activation: QuickGELU (True; auto: OpenAI's weights) or exact GELU "
        "(False: open_clip's own LAION-trained models)")


@dataclass
class ClipSampleConfig(ClipGuidanceConfig):
    """CLIP guidance toward the prompts of --prompt TEXT (repeatable, the script's own flag) or --prompts_file."""

    prompts_file: str = flag("", "UTF-8 text file of prompts, one a line (blank lines skipped); instead of --prompt")
