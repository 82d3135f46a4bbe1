"""Per-sample random streams, labels and the split of the sample indices over ranks.

Sample number i (0 <= i < num_samples) draws every random number it needs (its label, its initial
noise and the noise of each denoising step) from its own CPU generator seeded from (seed, i). The
same --seed therefore gives the same images whatever the batch size, the number of ranks, the
sampler's step count or the device.
"""

import numpy as np
import torch as th
import torch.distributed as dist

from . import dist_util

_NOISE_STREAM = 0  # sub-stream of the per-sample generator used for noise
_LABEL_STREAM = 1  # sub-stream used for random labels


def shard_range(num_samples, rank, world_size):
    """The contiguous block of sample indices that `rank` draws: sizes differ by at most one, the
    lower ranks take the larger blocks, and the blocks in rank order are 0 .. num_samples - 1."""
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def resolve_seed(seed):
    """The seed every rank uses: `seed` itself when >= 0, else a fresh one drawn on rank 0 and
    broadcast (log it: passing it as --seed repeats the run)."""
    if seed >= 0:
        return seed
    drawn = [int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])]
    if dist_util.get_world_size() > 1:
        dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


def sample_generator(seed, index, stream=_NOISE_STREAM):
    """A CPU torch.Generator for sample `index` of a run with `seed` (independent streams)."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, dtype=np.uint32)
    generator = th.Generator()
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return generator


class SeededBatch:
    """A batch of sample indices with one noise generator per index.

    noise(shape, device) gives standard normal noise [len(batch), ...], row j from the generator of
    indices[j]; noise_like(x) is the samplers' `noise_fn` (a drop-in for th.randn_like). Successive
    calls continue each sample's stream.
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
        """Labels [len(batch)] int64: class_labels[i % len(class_labels)] for sample i when given,
        else uniform in [0, num_classes) from the sample's own label stream."""
        if class_labels:
            return th.tensor([class_labels[i % len(class_labels)] for i in self.indices], dtype=th.int64)
        drawn = [th.randint(num_classes, (1,), generator=sample_generator(self.seed, i, _LABEL_STREAM))
                 for i in self.indices]
        return th.cat(drawn) if drawn else th.zeros(0, dtype=th.int64)


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
        raise ValueError(f"--class_labels {bad} are outside [0, {num_classes}); give classes the model was trained on")
    return labels
