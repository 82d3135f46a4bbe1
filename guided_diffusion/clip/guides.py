"""CLIP guidance toward a prompt, as guides (guidance.py) for every sampler: the noise-aware guide (GLIDE's cond_fn,
the similarity's gradient at x_t) and the clean guide (a loss on x0_hat through the model, over random cutouts, as
the CLIP-guided diffusion notebooks). OpenCLIPAdapter gives an open_clip model object the interface they take.

The CLIP interface (clip.model.NoisyCLIP, clip.openai_vit's models, OpenCLIPAdapter):

    encode_image(images, t=None, normalize=False)  images [N, 3, S, S] in [-1, 1], t None or [N] timesteps -> [N, D]
    encode_text(tokens) -> [N, D]                  tokens as tokenizer pads them
    tokenizer(texts, context_length) -> LongTensor [N, context_length]
    logit_scale                                    log of the similarity's scale (0-dim tensor)
    image_size                                     S, pixels of the images encode_image takes
    noise_aware                                    True when encode_image reads x_t with t (then n_timesteps: T)
    text_embeddings(prompts) -> [N, D]             unit text embeddings of a list of str
"""

import copy

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from ..guidance import CleanImageGuidance
from .encoders import CHANNEL_MEANS, CHANNEL_STDS
from .model import unit
from .tokenizer import get_tokenizer

CUTOUT_MIN_SIDE = 0.5  # a cutout's side is uniform in [this, 1] times the image's
AUGMENT_SHIFT = 0.1  # with augment, each cutout moves by up to this in [-1, 1] units (5% of its side) each way


def rgb(x):
    """x [N, C, H, W] as the 3 channels a CLIP reads: a grey image (C = 1) repeated, RGB as it is."""
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"CLIP guidance reads grey (1) or RGB (3) images, got {x.shape[1]} channels")


class PromptRows:
    """Unit text embeddings [P, D] of the prompts, encoded once; rows(n) -> [n or 1, D] for a batch of n, and
    of(indices) a copy whose sample i reads prompt i % P (as the sampling scripts give prompts)."""

    def __init__(self, clip_model, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("CLIP guidance needs a prompt: give one per sample, or one for all")
        with th.no_grad():
            self.z_text = clip_model.text_embeddings(prompts).float()

    def rows(self, n):
        if len(self.z_text) not in (1, n):
            raise ValueError(f"the guide was made for {len(self.z_text)} prompts and x has {n} samples: give one "
                             "prompt per sample, or one for all (or take guide.of(sample indices))")
        return self.z_text

    def of_indices(self, indices):
        picked = copy.copy(self)
        picked.z_text = self.z_text[th.tensor([i % len(self.z_text) for i in indices], dtype=th.long)]
        return picked


class NoisyCLIPGuidance:
    """GLIDE's CLIP guidance: scale * grad_{x_t} exp(logit_scale) <z_text, z_image(x_t, t)> [N, C, H, W], with
    z unit embeddings; a score guide, acting where the sampler's guidance acts (NoisyCLIP.cond_fn as a guide).

    clip_model: noise-aware, reading the samples' H x W; prompts: a str, or a list with one per sample or one
    for all, encoded here; diffusion: the sampling diffusion, needed when its model sees rescaled t
    (--rescale_timesteps): the CLIP reads the ORIGINAL timestep indices in [0, T), which the guide recovers.
    """

    def __init__(self, clip_model, prompts, scale, diffusion=None):
        if not clip_model.noise_aware:
            raise UsageError("this CLIP reads clean images only (no timesteps): guide with it by --clip_guidance clean "
                             "(CleanCLIPGuidance, on x0_hat), or pass a noise-aware CLIP")
        self.clip_model = clip_model
        self.prompts = PromptRows(clip_model, prompts)
        self.scale = scale
        self.rescaled_from = None
        if diffusion is not None:
            steps = getattr(diffusion, "original_num_steps", diffusion.num_timesteps)
            clip_steps = getattr(clip_model, "n_timesteps", steps)
            if clip_steps != steps:
                raise UsageError(f"the noise-aware CLIP reads timesteps of a {clip_steps}-step diffusion but the "
                                 f"model's has {steps}: sample with --diffusion_steps {clip_steps}, or use "
                                 "--clip_guidance clean")
            self.rescaled_from = steps if diffusion.rescale_timesteps else None

    def of(self, indices):
        """This guide for a batch of sample indices: sample i toward prompt i % P."""
        picked = copy.copy(self)
        picked.prompts = self.prompts.of_indices(indices)
        return picked

    def clip_timesteps(self, t):
        """t as the guide gets it (the model's: original indices, times 1000 / T with rescale_timesteps) -> the
        original indices [N] (long) the CLIP reads."""
        if self.rescaled_from is not None:
            return (t.double() * self.rescaled_from / 1000.0).round().long()
        if t.is_floating_point():
            raise ValueError("the guide got rescaled (float) timesteps: make NoisyCLIPGuidance with diffusion=the "
                             "sampling diffusion, so that it maps them back to the original indices")
        return t

    def __call__(self, x, t, prediction=None, **model_kwargs):
        z_text = self.prompts.rows(len(x))
        with th.enable_grad():
            x_in = x.detach().requires_grad_(True)
            z_image = self.clip_model.encode_image(rgb(x_in), self.clip_timesteps(t), normalize=True)
            similarity = th.exp(self.clip_model.logit_scale) * (z_text * z_image).sum()
            gradient = th.autograd.grad(similarity, x_in)[0].detach()
        return gradient * self.scale


def spherical_distance(a, b):
    """2 arcsin(||a - b|| / 2)^2 of unit vectors a, b [..., D] -> [...]: half the squared great-circle angle
    (the CLIP-guided diffusion notebooks' loss)."""
    return 2 * ((a - b).norm(dim=-1) / 2).arcsin() ** 2


class CleanCLIPGuidance(CleanImageGuidance):
    """CLIP guidance through the model (the CLIP-guided diffusion notebooks): -scale * grad_{x_t} of the spherical
    distance between the prompt's and x0_hat(x_t)'s unit CLIP embeddings, averaged over cutouts. A score guide
    (after_step off): the gradient enters the DDPM mean or the score as classifier guidance does, as the
    notebooks' cond_fn, so their scales (~1000) carry over.

    cutouts: K random square crops of x0_hat, each side uniform in [CUTOUT_MIN_SIDE, 1] of the image's, resized
    (bilinear) to the CLIP's image_size (0: the whole image resized); augment: each crop also flipped left-right
    with probability 1/2 and shifted by up to AUGMENT_SHIFT (reflected border). generator: a torch.Generator for
    the draws, or a list with one per sample (each sample's crops from its own stream), or None (torch's).
    A noise-aware CLIP reads x0_hat at t = 0.
    """

    after_step = False

    def __init__(self, clip_model, prompts, scale, cutouts=0, augment=False, generator=None):
        if cutouts < 0:
            raise ValueError(f"cutouts {cutouts}: pass 0 (the whole image) or a number of random crops")
        super().__init__(self.distance, scale)
        self.clip_model = clip_model
        self.prompts = PromptRows(clip_model, prompts)
        self.cutouts, self.augment, self.generator = cutouts, augment, generator

    def of(self, indices, generators=None):
        """This guide for a batch of sample indices: sample i toward prompt i % P, its draws from generators
        (one per index; None: this guide's generator)."""
        picked = copy.copy(self)
        picked.loss = picked.distance  # bound to the copy, with its prompts
        picked.prompts = self.prompts.of_indices(indices)
        picked.generator = self.generator if generators is None else list(generators)
        return picked

    def distance(self, x0, **model_kwargs):
        """x0 [N, C, H, W] in [-1, 1] -> [N]: the mean over the cutouts of the spherical distance to the prompt."""
        z_text = self.prompts.rows(len(x0)).to(x0.device)
        views = self.views(rgb(x0))
        t = th.zeros(len(views), dtype=th.long, device=x0.device) if self.clip_model.noise_aware else None
        z_image = self.clip_model.encode_image(views, t, normalize=True).float()
        z_image = z_image.view(len(x0), -1, z_image.shape[-1])
        return spherical_distance(z_image, z_text[:, None]).mean(dim=1)

    def views(self, x):
        """x [N, 3, H, W] -> what the CLIP reads: [N * K, 3, S, S], sample j's K views at rows j K .. j K + K - 1."""
        size = self.clip_model.image_size
        if not self.cutouts and not self.augment:
            same = x.shape[-2:] == (size, size)
            return x if same else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        views = max(self.cutouts, 1)
        u = self.draws(len(x), views).to(x.device, x.dtype)  # [N, K, 6]
        side = CUTOUT_MIN_SIDE + (1 - CUTOUT_MIN_SIDE) * u[..., 0] if self.cutouts else th.ones_like(u[..., 0])
        centre = (1 - side[..., None]) * (2 * u[..., 1:3] - 1)  # the crop inside the image, [-1, 1] units
        flip = th.ones_like(side)
        if self.augment:
            flip = th.where(u[..., 3] < 0.5, -1.0, 1.0).to(x.dtype)
            centre = centre + AUGMENT_SHIFT * (2 * u[..., 4:6] - 1)
        theta = th.zeros(len(x), views, 2, 3, dtype=x.dtype, device=x.device)
        theta[..., 0, 0], theta[..., 1, 1] = side * flip, side
        theta[..., 0, 2], theta[..., 1, 2] = centre[..., 0], centre[..., 1]
        grid = F.affine_grid(theta.flatten(0, 1), [len(x) * views, 3, size, size], align_corners=False)
        return F.grid_sample(x.repeat_interleave(views, dim=0), grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)

    def draws(self, n, views):
        """Uniform draws [n, views, 6] (side, centre x and y, flip, shift x and y) from the guide's generator(s)."""
        if isinstance(self.generator, (list, tuple)):
            if len(self.generator) != n:
                raise ValueError(f"{len(self.generator)} generators for {n} samples: give one per sample")
            return th.stack([th.rand(views, 6, generator=g) for g in self.generator])
        return th.rand(n, views, 6, generator=self.generator)


class OpenCLIPAdapter(nn.Module):
    """An open_clip (or OpenAI clip) model object with the guides' interface: encode_image takes [-1, 1] images
    and normalises them by mean and std itself, encode_text takes the tokens of `tokenizer`.

    model: has encode_image(pixels [N, 3, S, S] normalised), encode_text(tokens) and logit_scale; tokenizer:
    tokenizer(texts, context_length) -> LongTensor (default: CLIP's BPE, clip/tokenizer.py); image_size: S;
    mean, std: per-channel pixel statistics on the [0, 1] scale (default: CLIP's).
    """

    noise_aware = False

    def __init__(self, model, tokenizer=None, image_size=224, mean=None, std=None, context_length=77):
        super().__init__()
        self.model = model
        self.tokenizer = get_tokenizer() if tokenizer is None else tokenizer
        self.image_size, self.context_length = image_size, context_length
        mean = [m / 255 for m in CHANNEL_MEANS] if mean is None else mean
        std = [s / 255 for s in CHANNEL_STDS] if std is None else std
        self.register_buffer("mean", th.tensor(mean, dtype=th.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", th.tensor(std, dtype=th.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def logit_scale(self):
        return self.model.logit_scale

    def encode_image(self, images, t=None, normalize=False):
        """images [N, 3, S, S] in [-1, 1] (t must be None: a clean CLIP) -> features [N, D]."""
        if t is not None:
            raise ValueError("an open_clip model reads clean images: call encode_image without t")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this CLIP reads {self.image_size} x {self.image_size} images, got "
                             f"{list(images.shape)}: resize them (CleanCLIPGuidance does)")
        features = self.model.encode_image(((images + 1) / 2 - self.mean) / self.std)
        return unit(features) if normalize else features

    def encode_text(self, tokens, normalize=False):
        features = self.model.encode_text(tokens)
        return unit(features) if normalize else features

    def text_embeddings(self, prompts):
        """Unit text embeddings [N, D] of a list of str."""
        tokens = self.tokenizer(list(prompts), self.context_length).to(self.mean.device)
        return self.encode_text(tokens, normalize=True)
