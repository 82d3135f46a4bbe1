"""
Pieces shared by the sampling scripts: per-sample seeds, labels, splitting the work over ranks,
gathering the results in sample order, the release's npz output, classifier guidance and the
base samples of the super-resolution model.

Reproducibility: sample number i (0 <= i < num_samples) draws every random number it needs (its
label, its initial noise and the noise of each denoising step) from its own CPU generator seeded
from (seed, i). The same --seed therefore gives the same images whatever the batch size or the
number of ranks, and the same noise on any device.
"""

import math
import os

import numpy as np
import torch as th
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from . import logger
from .checkpoint import load_checkpoint

GRID_MAX_IMAGES = 64  # samples_grid.png shows at most this many samples (the first ones)

_NOISE_STREAM = 0  # sub-stream of the per-sample generator used for noise
_LABEL_STREAM = 1  # sub-stream used for random labels


# ----------------------------------------------------------------------------- ranks and seeds


def sampling_defaults():
    """Flags this project adds to every sampling script: --seed (-1 draws one and logs it) and
    --progress (tqdm bars on rank 0)."""
    return dict(seed=-1, progress=True)


def rank_and_world_size():
    """(rank, world size) of torch.distributed, or (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(num_samples, rank, world_size):
    """
    The contiguous block of sample indices that `rank` draws: sizes differ by at most one, the
    lower ranks take the larger blocks, and the blocks in rank order are 0 .. num_samples - 1.
    """
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def resolve_seed(seed):
    """
    The seed every rank uses: `seed` itself when >= 0, else a fresh random one drawn on rank 0 and
    broadcast (log it: passing it as --seed repeats the run).
    """
    if seed >= 0:
        return seed
    drawn = [int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])]
    if rank_and_world_size()[1] > 1:
        dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


def sample_generator(seed, index, stream=_NOISE_STREAM):
    """A CPU torch.Generator for sample `index` of a run with `seed` (independent streams)."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, dtype=np.uint32)
    generator = th.Generator()
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return generator


class SeededBatch:
    """
    A batch of sample indices with one noise generator per index.

    noise(shape, device) gives standard normal noise of shape [len(batch), ...], row j drawn from
    the generator of indices[j]; noise_like(x) is the samplers' `noise_fn` (a drop-in for
    th.randn_like). Successive calls continue each sample's stream.
    """

    def __init__(self, seed, indices):
        self.seed = seed
        self.indices = indices
        self.generators = [sample_generator(seed, i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def noise(self, shape, device=None, dtype=th.float32):
        if shape[0] != len(self):
            raise ValueError(
                f"noise for a batch of {shape[0]} rows was asked of {len(self)} samples; the "
                "sampler must draw noise shaped like the batch"
            )
        rows = [th.randn(tuple(shape[1:]), generator=g) for g in self.generators]
        return th.stack(rows).to(device=device, dtype=dtype)

    def noise_like(self, x):
        return self.noise(x.shape, device=x.device, dtype=x.dtype)

    def labels(self, num_classes, class_labels=()):
        """
        Labels [len(batch)] int64: class_labels[i % len(class_labels)] for sample i when given,
        else uniform in [0, num_classes) from the sample's own label stream.
        """
        if class_labels:
            return th.tensor([class_labels[i % len(class_labels)] for i in self.indices])
        return th.tensor(
            [
                int(th.randint(num_classes, (1,), generator=sample_generator(self.seed, i, _LABEL_STREAM)))
                for i in self.indices
            ],
            dtype=th.int64,
        )


def parse_class_labels(text, num_classes):
    """'3,7' -> (3, 7); '' -> (). Raises ValueError for labels outside [0, num_classes)."""
    if not text.strip():
        return ()
    try:
        labels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--class_labels must be comma-separated integers, got {text!r}") from None
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ValueError(
            f"--class_labels {bad} are outside [0, {num_classes}); give classes the model was trained on"
        )
    return labels


# ----------------------------------------------------------------------------- the sampling loop


def to_uint8_nhwc(x):
    """x: [N, C, H, W] floats in [-1, 1] -> [N, H, W, C] uint8, (x + 1) * 127.5 clamped and truncated."""
    return ((x + 1) * 127.5).clamp(0, 255).to(th.uint8).permute(0, 2, 3, 1).contiguous()


def all_gather_rows(rows, max_rows):
    """rows: [n <= max_rows, ...] on this rank -> list over ranks of each rank's rows."""
    if rank_and_world_size()[1] == 1:
        return [rows]
    padded = th.zeros((max_rows, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    count = th.tensor([rows.shape[0]], device=rows.device)
    counts = [th.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    gathered = [th.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return [block[: int(n)] for block, n in zip(gathered, counts)]


def sample_all(
    sample_batch, num_samples, batch_size, seed, sample_shape, device, with_labels, progress=False
):
    """
    Draws samples 0 .. num_samples - 1 with all ranks busy and gathers them on rank 0.

    sample_batch(batch: SeededBatch) -> (x [len(batch), C, H, W] in [-1, 1], labels [len(batch)]
    int64, or None when not with_labels) is called for this rank's share, batch_size indices at
    a time; every rank makes the same number of calls to the collectives (ranks whose share is
    used up send nothing). sample_shape: (C, H, W) of one sample.
    Returns (images uint8 [num_samples, H, W, C], labels int64 [num_samples] or None) in index
    order on rank 0, (None, None) on the other ranks.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"--num_samples ({num_samples}) and --batch_size ({batch_size}) must be at least 1")
    rank, world_size = rank_and_world_size()
    shard = shard_range(num_samples, rank, world_size)
    rounds = math.ceil(math.ceil(num_samples / world_size) / batch_size)
    per_rank = [[] for _ in range(world_size)]
    per_rank_labels = [[] for _ in range(world_size)]
    bar = _progress_bar(len(shard), progress and rank == 0)
    for r in range(rounds):
        indices = shard[r * batch_size : (r + 1) * batch_size]
        images = th.zeros((0, *sample_shape[1:], sample_shape[0]), dtype=th.uint8, device=device)
        labels = th.zeros((0,), dtype=th.int64, device=device)
        if len(indices):
            x, labels = sample_batch(SeededBatch(seed, indices))
            images = to_uint8_nhwc(x)
        _keep_on_rank0(all_gather_rows(images, batch_size), per_rank, rank)
        if with_labels:
            labels = labels.to(device=device, dtype=th.int64)
            _keep_on_rank0(all_gather_rows(labels, batch_size), per_rank_labels, rank)
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    if rank != 0:
        return None, None
    images = th.cat([block for blocks in per_rank for block in blocks]).numpy()
    if not with_labels:
        return images, None
    return images, th.cat([block for blocks in per_rank_labels for block in blocks]).numpy()


def _keep_on_rank0(blocks, per_rank, rank):
    """Appends each rank's block to per_rank[rank] (on the CPU), on rank 0 only."""
    if rank == 0:
        for kept, block in zip(per_rank, blocks):
            kept.append(block.cpu())


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="samples (rank 0)", unit="img")


# ----------------------------------------------------------------------------- outputs


def sample_and_save(sample_batch, args, sample_shape, device, with_labels):
    """The scripts' common ending: sample args.num_samples images with sample_all (seed from
    args.seed), write them on rank 0 with save_samples in the log dir, and wait for every rank."""
    seed = resolve_seed(args.seed)
    logger.log(f"sampling {args.num_samples} images with --seed {seed}...")
    images, labels = sample_all(
        sample_batch, args.num_samples, args.batch_size, seed, sample_shape, device,
        with_labels=with_labels, progress=args.progress,
    )
    if images is not None:
        logger.log(f"saving to {save_samples(logger.get_dir(), images, labels)}")
    dist.barrier()
    logger.log("sampling complete")


def save_samples(out_dir, images, labels=None):
    """
    Writes out_dir/samples_{N}x{H}x{W}x{C}.npz (arr_0 = images uint8 [N, H, W, C], arr_1 = labels
    int64 [N] when given) and out_dir/samples_grid.png beside it. Returns the npz path.
    """
    shape_str = "x".join(str(n) for n in images.shape)
    path = os.path.join(out_dir, f"samples_{shape_str}.npz")
    if labels is None:
        np.savez(path, images)
    else:
        np.savez(path, images, np.asarray(labels, dtype=np.int64))
    save_grid(images[:GRID_MAX_IMAGES], os.path.join(out_dir, "samples_grid.png"))
    return path


def save_grid(images, path, pad=2):
    """images: uint8 [N, H, W, C] -> a PNG with ceil(sqrt(N)) columns and `pad` black pixels between."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k, image in enumerate(images):
        top = pad + (k // cols) * (h + pad)
        left = pad + (k % cols) * (w + pad)
        grid[top : top + h, left : left + w] = image
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


# ----------------------------------------------------------------------------- guidance


def classifier_cond_fn(classifier, classifier_scale):
    """
    The samplers' cond_fn for classifier guidance: cond_fn(x_t [N, C, H, W], t [N], y [N]) ->
    classifier_scale * d/dx_t sum_n log softmax(classifier(x_t, t))[n, y_n], shaped like x_t.
    The classifier sees x_t and t exactly as the sampler passes them (original timestep indices
    under respacing).
    """

    def cond_fn(x, t, y=None, **_):
        if y is None:
            raise ValueError("classifier guidance needs target labels: pass model_kwargs['y']")
        with th.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)
            selected = log_probs[th.arange(len(y)), y.view(-1)]
            return th.autograd.grad(selected.sum(), x_in)[0] * classifier_scale

    return cond_fn


# ----------------------------------------------------------------------------- super-resolution


class BaseSamples:
    """
    The low-resolution samples a super-resolution run upsamples: images uint8 [M, h, w, 3] and
    labels int64 [M] (or None). Sample i uses base sample i % M.
    """

    def __init__(self, images, labels):
        self.images = images
        self.labels = labels

    def __len__(self):
        return len(self.images)

    def low_res(self, indices, device=None):
        """[len(indices), 3, h, w] float32 in [-1, 1], the model's `low_res` keyword."""
        picked = self.images[[i % len(self) for i in indices]]
        x = th.from_numpy(picked).to(device=device, dtype=th.float32) / 127.5 - 1.0
        return x.permute(0, 3, 1, 2).contiguous()

    def labels_for(self, indices, device=None):
        """[len(indices)] int64 labels of the base samples picked for `indices`."""
        return th.from_numpy(self.labels[[i % len(self) for i in indices]]).to(device)


def load_base_samples(path, small_size, class_cond):
    """
    Reads a samples npz (as image_sample.py writes it) for super_res_sample.py: arr_0 must be
    uint8 [M, small_size, small_size, 3]; arr_1 (int labels [M]) is required when class_cond.
    Raises ValueError naming the problem otherwise.
    """
    if not path:
        raise ValueError("--base_samples is required: the npz of low-resolution samples to upsample")
    try:
        archive = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--base_samples {path} is not a readable npz file ({err})") from err
    with archive:
        if "arr_0" not in archive.files:
            raise ValueError(
                f"--base_samples {path} has no arr_0 (it holds {archive.files}); pass the "
                "samples_NxHxWx3.npz written by image_sample.py"
            )
        images = archive["arr_0"]
        labels = archive["arr_1"] if class_cond and "arr_1" in archive.files else None
    expected = (small_size, small_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or not len(images):
        raise ValueError(
            f"--base_samples {path}: arr_0 is {images.dtype} {list(images.shape)}, expected uint8 "
            f"[N, {small_size}, {small_size}, 3] (N > 0); check --small_size or the file"
        )
    if class_cond:
        if labels is None:
            raise ValueError(
                f"--base_samples {path} has no arr_1 labels but --class_cond True needs them; "
                "sample the base images with a class-conditional model or pass --class_cond False"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"--base_samples {path}: arr_1 is {labels.dtype} {list(labels.shape)}, expected "
                f"integer labels [{len(images)}]"
            )
        labels = labels.astype(np.int64)
    return BaseSamples(images, labels)


# ----------------------------------------------------------------------------- script helpers


def load_for_sampling(model, path, use_fp16, device, flag="--model_path"):
    """Loads the checkpoint at `path` (given by `flag`) into `model` (clear errors on mismatch),
    moves it to `device`, converts it to fp16 when asked and sets eval mode. Returns the model."""
    if not path:
        raise ValueError(f"no checkpoint to sample from: pass {flag} PATH (a modelNNNNNN.pt or ema_*.pt file)")
    load_checkpoint(model, path)
    model.to(device)
    if use_fp16:
        model.convert_to_fp16()
    return model.eval()


def denoise(diffusion, model, batch, shape, device, use_ddim, clip_denoised, model_kwargs,
            cond_fn=None, progress=False):
    """
    Runs the DDPM (or, with use_ddim, DDIM eta 0) sampler from the batch's own initial noise, with
    every later draw from the batch's per-sample streams. shape: [len(batch), C, H, W].
    Returns x_0 [len(batch), C, H, W] in [-1, 1].
    """
    sample_fn = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
    return sample_fn(
        model,
        shape,
        noise=batch.noise(shape, device),
        clip_denoised=clip_denoised,
        model_kwargs=model_kwargs,
        cond_fn=cond_fn,
        device=device,
        progress=progress,
        noise_fn=batch.noise_like,
    )
