"""Training a CLIP (clip_train.py): CLIP's symmetric contrastive loss over the batch of every rank, on captioned
images, clean or noised by the diffusion's schedule for a noise-aware image encoder (GLIDE's noisy CLIP).

The loss of N image-caption pairs, features z_img, z_txt [N, D] made unit length and s = exp(logit_scale):
    logits = s * z_img @ z_txt^T                                             [N, N]
    loss   = mean_i (CE(logits[i, :], i) + CE(logits[:, i], i)) / 2
(image -> text and text -> image). logit_scale is learned, starts at log(1 / 0.07) and is clamped to
[0, log 100] after every step, as CLIP's.
"""

import math

import blobfile as bf
import torch as th
import torch.distributed as dist
import torch.nn.functional as F

from .. import dist_util, logger
from ..config import as_flags
from ..errors import UsageError
from ..image_datasets import list_image_files, read_captions
from ..resample import create_named_schedule_sampler
from ..text.tokenizer import get_encoder
from ..train_setup import training_images
from ..train_util import _LoopBase, log_loss_dict
from .checkpoint import CLIP_FLAGS, check_clip_config, run_flags
from .model import unit
from .tokenizer import get_tokenizer

MAX_LOGIT_SCALE = math.log(100)  # CLIP's clamp of the learned log scale
SCHEDULE_FLAGS = ("diffusion_steps", "noise_schedule")  # what a resumed run must repeat besides CLIP_FLAGS


def gather_features(features):
    """features [n, D] of this rank -> [world * n, D], every rank's in rank order; this rank's slot is features
    itself (its gradient flows), the others' are copies without gradient."""
    world = dist_util.get_world_size()
    if world == 1:
        return features
    parts = [th.empty_like(features) for _ in range(world)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[dist_util.get_rank()] = features
    return th.cat(parts)


def clip_logits(image_features, text_features, scale):
    """scale * <unit image features, unit text features>: [N, M] from [N, D], [M, D] and the scalar scale
    exp(logit_scale)."""
    return scale * unit(image_features) @ unit(text_features).T


def clip_loss(logits, rows=None):
    """The contrastive loss of pair i, (CE(logits[i, :], i) + CE(logits[:, i], i)) / 2, for i in rows (default all
    N; a rank's own pairs of the gathered [N, N] logits): [len(rows)]. Its mean over all N is CLIP's loss."""
    rows = th.arange(logits.shape[0], device=logits.device) if rows is None else rows
    image_to_text = F.cross_entropy(logits[rows], rows, reduction="none")
    text_to_image = F.cross_entropy(logits.T[rows], rows, reduction="none")
    return (image_to_text + text_to_image) / 2


def caption_token_budget(data_dir):
    """The GPT-2 token count of the longest caption line under data_dir: the data stream's text_ctx, so that no
    caption is cut before ClipCaptions re-reads it."""
    encoder = get_encoder()
    captions = read_captions(list_image_files(data_dir))
    return max(len(encoder.encode(line)) for lines in captions for line in lines)


def count_cut(data_dir, text_ctx):
    """(how many caption lines under data_dir have more than text_ctx - 2 CLIP tokens, how many there are)."""
    tokenizer = get_tokenizer()
    lines = [line for lines in read_captions(list_image_files(data_dir)) for line in lines]
    return sum(len(tokenizer.encode(line)) > text_ctx - 2 for line in lines), len(lines)


class ClipCaptions:
    """A captioned image stream (load_data's with text_ctx) with each caption as CLIP reads it: yields (images,
    {"clip_tokens": [N, text_ctx] long}), the caption line drawn for each image decoded from its GPT-2 tokens
    (byte-level BPE: exact when not cut) and padded by CLIP's tokenizer. Positions and names are the stream's."""

    def __init__(self, data, text_ctx):
        self.data, self.text_ctx = data, text_ctx

    def __iter__(self):
        return self

    def __next__(self):
        images, cond = next(self.data)
        texts = [get_encoder().decode(tokens[mask].tolist()) for tokens, mask in zip(cond["tokens"], cond["mask"])]
        return images, {"clip_tokens": get_tokenizer()(texts, self.text_ctx)}

    def __getattr__(self, name):
        return getattr(self.data, name)


def clip_training_data(train, model_config):
    """ClipCaptions of train.data_dir's captioned images at --clip_image_size (decoded by train.num_workers
    processes), with one warning for the captions longer than --clip_text_ctx."""
    cut, total = count_cut(train.data_dir, model_config.clip_text_ctx)
    if cut:
        logger.warn(f"{cut} of the {total} captions under {train.data_dir!r} have more than --clip_text_ctx "
                    f"{model_config.clip_text_ctx} CLIP tokens with the start and end tokens: each is cut (raise "
                    "--clip_text_ctx to keep them whole)")
    data = training_images(train, model_config.clip_image_size, False, 0, 3,
                           text_ctx=caption_token_budget(train.data_dir))
    return ClipCaptions(data, model_config.clip_text_ctx)


class ClipTrainLoop(_LoopBase):
    """clip_train's loop: CLIP's contrastive loss (module docstring) over the pairs of all ranks, images noised
    x_t = q_sample(x_0, t) at t ~ U{0, ..., T-1} when the image encoder is noise-aware (captions stay clean).
    Logs loss, acc@1 (image -> text, the caption of the largest logit is its own), per quartile of t when
    noised, and exp(logit_scale). Saves modelNNNNNN.pt, optNNNNNN.pt, stateNNNNNN.pt (no EMA).

    model:      a NoisyCLIP with a learned logit scale (checkpoint.build_clip), in float32.
    diffusion:  the GaussianDiffusion whose q_sample noises the images (unused by a clean CLIP).
    data:       endless (images [N, 3, S, S] in [-1, 1], {"clip_tokens": [N, L]}) pairs (ClipCaptions).
    config:     a config.ClipTrainConfig; run_config: as for TrainLoop.
    """

    def __init__(self, *, model, diffusion, data, config, run_config=None):
        check_microbatch(config)
        self.diffusion = diffusion
        sampler = create_named_schedule_sampler(config.schedule_sampler, diffusion) if model.noise_aware else None
        super().__init__(model=model, data=data, config=config, use_fp16=False, schedule_sampler=sampler,
                         run_config=run_config, ema_rate="", ema_warmup=False, max_steps=config.max_steps,
                         fp16_scale_growth=1e-3)

    def forward_backward(self, batch, cond):
        """The gradient of CLIP's loss over all ranks' pairs. Every rank computes the whole [N, N] loss, its
        gradient reaching only its own features (and 1 / world of the scale's); times the world size, DDP's mean
        of the ranks' gradients is the loss's exact gradient."""
        self.mp_trainer.zero_grad()
        images, tokens = batch.to(dist_util.dev()), cond["clip_tokens"].to(dist_util.dev())
        t = None
        if self.model.noise_aware:
            t = self.schedule_sampler.sample(images.shape[0], dist_util.dev())[0]
            images = self.diffusion.q_sample(images, t)
        image_features, text_features, scale = self.forward(True, lambda: self.ddp_model(images, tokens, t))
        world = dist_util.get_world_size()
        # every rank's loss holds the whole scale: its gradient is counted once over the ranks, not world times
        scale = scale.float().detach() + (scale.float() - scale.float().detach()) / world
        logits = clip_logits(gather_features(image_features.float()), gather_features(text_features.float()), scale)
        mine = th.arange(len(images), device=logits.device) + dist_util.get_rank() * len(images)
        accuracy = (logits[mine].argmax(dim=1) == mine).float()
        losses = clip_loss(logits)
        terms = {"loss": losses[mine].detach(), "acc@1": accuracy}
        if t is None:
            for key, values in terms.items():
                logger.logkv_mean(key, values.mean())
        else:
            log_loss_dict(self.diffusion, t, terms)
        logger.logkv_mean("logit_scale", scale.detach())
        self.mp_trainer.backward(losses.mean() * world)

    def after_step(self):
        """CLIP's clamp of the learned log scale to [0, log 100]."""
        with th.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def check_run(model_config, diffusion_config, train):
    """Before anything is written: the CLIP flags (checkpoint.check_clip_config), --microbatch, the model flags of
    the run resumed or fine-tuned, and every caption file under --data_dir (read_captions' one-line errors for a
    folder without captions)."""
    check_clip_config(model_config)
    check_microbatch(train)
    flags = as_flags(model_config, diffusion_config)
    if train.resume_checkpoint:
        check_flags_of_run("resume_checkpoint", train.resume_checkpoint, flags, (*CLIP_FLAGS, *SCHEDULE_FLAGS))
    if train.init_checkpoint:  # fine-tuning may change the schedule, not T of the timestep embedding
        names = (*CLIP_FLAGS, "diffusion_steps")
        saved = run_flags(train.init_checkpoint) if bf.exists(train.init_checkpoint) else None
        if saved is not None and not saved.get("clip_noise_aware", True) and model_config.clip_noise_aware:
            # a clean CLIP (no T) may start a noise-aware one: checkpoint.noise_aware_from_clean
            names = tuple(name for name in names if name not in ("clip_noise_aware", "diffusion_steps"))
        check_flags_of_run("init_checkpoint", train.init_checkpoint, flags, names)
    read_captions(list_image_files(train.data_dir))


def check_flags_of_run(flag, path, flags, names):
    """The CLIP checkpoint at path (given as --flag) was trained with this run's values of the flags `names`
    (flags: this run's {flag: value}); a checkpoint without a CLIP run's train_config.json is not checked."""
    saved = run_flags(path) if bf.exists(path) else None
    differ = [name for name in names if saved is not None and saved.get(name, flags[name]) != flags[name]]
    if differ:
        repeat = " ".join(f"--{name} {saved[name]}" for name in names if name in saved)
        raise UsageError(f"--{flag} {path} was trained with --{differ[0]} {saved[differ[0]]}, this run has "
                         f"{flags[differ[0]]}: repeat that run's flags ({repeat})"
                         + (", or start a new model from its weights with --init_checkpoint"
                            if flag == "resume_checkpoint" else ""))


def check_microbatch(train):
    """--microbatch splits no contrastive batch: -1 (or the batch size) only."""
    if train.microbatch not in (-1, train.batch_size):
        raise UsageError(f"--microbatch {train.microbatch}: the contrastive loss compares the whole batch at once "
                         "and cannot be split; leave --microbatch -1 (lower --batch_size to save memory)")

