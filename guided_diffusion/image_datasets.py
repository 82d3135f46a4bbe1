"""Image folders as an endless stream of training batches, as the release's `load_data` yields them.

Files: .jpg/.jpeg/.png/.gif anywhere under data_dir; the class of a file is its name up to the first "_"
(labels are indices into the sorted class names). Each rank reads its own shard of the sorted file list.
The stream is resumable: `state_dict()` records the position (epoch, batch), and random crops/flips are
drawn from a generator seeded by (seed, rank, epoch, index), so a resumed run sees the same batches.
Captioned folders (text models): `<stem>.txt` beside each image, one caption per line; each time an image
is drawn, one of its lines is too, from that same generator.
Wrappers of the stream add a model's extra inputs to each batch: LowResConditioned (super-resolution) and
InpaintMasked (inpainting, random masks seeded by the batch's position).
"""

import atexit
import math
import signal
import weakref

import blobfile as bf
import numpy as np
import torch as th
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import dist_util, logger
from .errors import UsageError
from .text.tokenizer import get_encoder, tokens_and_mask

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")
PIL_MODES = {1: "L", 3: "RGB"}  # image_channels -> the PIL mode images are converted to


def list_image_files(data_dir):
    """Sorted paths of every image file under `data_dir` (recursive); clear errors for bad dirs."""
    if not data_dir:
        raise ValueError("unspecified data directory: pass --data_dir DIR (a folder of images)")
    if not bf.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir!r} does not exist or is not a directory")
    files = _list_recursively(data_dir)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {data_dir!r}")
    return files


def _list_recursively(data_dir):
    results = []
    for entry in sorted(bf.listdir(data_dir)):
        path = bf.join(data_dir, entry)
        ext = entry.split(".")[-1].lower() if "." in entry else ""
        if ext in IMAGE_EXTENSIONS:
            results.append(path)
        elif bf.isdir(path):
            results.extend(_list_recursively(path))
    return results


def caption_file(image_path):
    """The caption file of an image: `<stem>.txt` beside it."""
    return image_path.rsplit(".", 1)[0] + ".txt"


def read_captions(files):
    """The captions of each image file, [(line, ...)] in file order: the non-blank lines of its `<stem>.txt`
    (UTF-8), stripped. Every file is read here, so bad captions stop a run before it starts: an image without
    a caption file, a file with no caption, or one that is not UTF-8 is a UsageError naming the file."""
    captions = []
    for path in files:
        text_path = caption_file(path)
        if not bf.exists(text_path):
            if not any(bf.exists(caption_file(p)) for p in files):
                raise UsageError(f"no caption files: none of the {len(files)} images has a <stem>.txt beside it "
                                 f"(e.g. {text_path!r}); use scripts/image_train.py for a folder of images without "
                                 "captions")
            raise UsageError(f"{path!r} has no caption file: write its captions, one per line, to {text_path!r} (or "
                             "move the image out of the folder)")
        with bf.BlobFile(text_path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{text_path!r} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}): save "
                             "the captions as UTF-8") from None
        lines = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not lines:
            raise UsageError(f"{text_path!r} holds no caption (it is empty or blank): write one caption per line")
        captions.append(lines)
    return captions


def count_truncated(captions, text_ctx):
    """(how many of the captions [(line, ...)] have more than text_ctx tokens, how many there are)."""
    tokenizer = get_encoder()
    lengths = [len(tokenizer.encode(line)) for lines in captions for line in lines]
    return sum(length > text_ctx for length in lengths), len(lengths)


def class_name_of(path):
    """The class of an image file: its base name up to the first "_"."""
    return bf.basename(path).split("_")[0]


def class_names_of(files):
    """Sorted distinct class names; a file's label is the index of its class name in this list."""
    return sorted({class_name_of(p) for p in files})


def load_data(*, data_dir, batch_size, image_size, class_cond=False, deterministic=False,
              random_crop=False, random_flip=True, seed=0, num_workers=1, image_channels=3, text_ctx=None):
    """An endless iterator of (images [N, C, image_size, image_size] float32 in [-1, 1], {"y": labels [N]}).

    data_dir:      folder of images (searched recursively).
    batch_size:    images per batch on this rank (incomplete last batches of an epoch are dropped).
    class_cond:    include "y" (int64 class index) in the dict; otherwise the dict is empty.
    deterministic: read the shard in sorted order every epoch instead of a per-epoch shuffle.
    random_crop:   random-resized crop (smaller side drawn in [image_size, image_size / 0.8]) instead of
                   the centre crop.
    random_flip:   flip horizontally with probability 1/2.
    seed:          seeds the shuffles and augmentations (together with rank, epoch and index).
    num_workers:   decoding processes (0: decode in this process).
    image_channels: C = 3 (RGB, as released) or 1 (greyscale: PIL's "L" conversion of every file).
    text_ctx:      captioned data (see read_captions): the dict holds "tokens" [N, text_ctx] int64 and "mask"
                   [N, text_ctx] bool of one caption line per image (tokens_and_mask), drawn with the crop's
                   generator; one warning says how many captions are longer and cut. None: no captions.
    Unreadable files are skipped and each is reported once (logger.warn, so also in log.txt).
    The iterator has `class_names`, `skipped_files`, `state_dict()` and `load_state_dict()`.
    """
    if image_channels not in PIL_MODES:
        raise ValueError(f"image_channels={image_channels!r}: use 3 (RGB images, as released) or 1 (greyscale)")
    files = list_image_files(data_dir)
    class_names = class_names_of(files)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    shard = files[rank::world]
    if len(files) // world < batch_size:  # the smallest shard: every rank raises alike
        raise ValueError(f"{data_dir!r} gives each of {world} ranks as few as {len(files) // world} images (of "
                         f"{len(files)}), fewer than --batch_size {batch_size}; use a smaller batch size or more "
                         f"images")
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index[class_name_of(p)] for p in shard] if class_cond else None
    captions = None
    if text_ctx is not None:
        captions = read_captions(files)
        truncated, total = count_truncated(captions, text_ctx)
        if truncated:
            logger.warn(f"{truncated} of the {total} captions under {data_dir!r} have more than text_ctx {text_ctx} "
                        f"tokens: each is cut to its first {text_ctx} (shorten them to keep them whole)")
        captions = captions[rank::world]
    dataset = ImageDataset(image_size, shard, labels, random_crop, random_flip, seed=(seed, rank),
                           mode=PIL_MODES[image_channels], captions=captions, text_ctx=text_ctx)
    return ImageStream(dataset, batch_size, shuffle=not deterministic, seed=(seed, rank),
                       num_workers=num_workers, class_names=class_names)


class ImageDataset(Dataset):
    """Decodes, crops and flips one image; indexed by (epoch, index) so augmentations are reproducible.

    An item is (image [C, H, W] float32, {"y": label} and/or {"tokens": [text_ctx] int64, "mask": [text_ctx]
    bool} or {}, ((path, reason), ...) of the unreadable files replaced by the next readable one of the shard);
    only a shard with no readable image raises.
    mode: the PIL mode images are converted to ("RGB": C = 3, "L": C = 1).
    captions: per image, its caption lines (read_captions); one is drawn after the crop and flip.
    """

    def __init__(self, resolution, image_paths, classes=None, random_crop=False, random_flip=True,
                 seed=(0,), mode="RGB", captions=None, text_ctx=None):
        self.resolution, self.paths, self.classes = resolution, image_paths, classes
        self.random_crop, self.random_flip, self.seed = random_crop, random_flip, tuple(seed)
        self.mode, self.captions, self.text_ctx = mode, captions, text_ctx

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, idx = key if isinstance(key, tuple) else (0, key)
        skipped = []
        for offset in range(len(self.paths)):
            i = (idx + offset) % len(self.paths)
            try:
                pil_image = _read_image(self.paths[i], self.mode)
            except Exception as exc:  # noqa: BLE001 (any decoding error means an unusable file)
                skipped.append((self.paths[i], f"{type(exc).__name__}: {exc}"))
                continue
            return self._transform(pil_image, epoch, i) + (tuple(skipped),)
        raise RuntimeError(f"none of the {len(self.paths)} images of this shard could be read")

    def _transform(self, pil_image, epoch, i):
        rng = np.random.default_rng(self.seed + (epoch, i))
        if self.random_crop:
            arr = random_crop_arr(pil_image, self.resolution, rng=rng)
        else:
            arr = center_crop_arr(pil_image, self.resolution)
        if self.random_flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr.reshape(*arr.shape[:2], -1).astype(np.float32) / 127.5 - 1  # [H, W, C], also for "L"
        out = {} if self.classes is None else {"y": np.int64(self.classes[i])}
        if self.captions is not None:
            lines = self.captions[i]
            tokens, mask, _ = tokens_and_mask([lines[rng.integers(len(lines))]], self.text_ctx)
            out.update(tokens=tokens[0].numpy(), mask=mask[0].numpy())
        return np.transpose(arr, [2, 0, 1]), out


def _read_image(path, mode):
    with bf.BlobFile(path, "rb") as f:
        pil_image = Image.open(f)
        pil_image.load()
    return pil_image.convert(mode)


def _shrink_then_resize(pil_image, smaller_side):
    """Halve with BOX filtering while the smaller side is >= 2x the target, then BICUBIC to the target."""
    while min(*pil_image.size) >= 2 * smaller_side:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller_side / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    return np.array(pil_image)


def center_crop_arr(pil_image, image_size):
    """[image_size, image_size(, 3)] uint8: the release's resize of the smaller side, then a centre crop."""
    arr = _shrink_then_resize(pil_image, image_size)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def random_crop_arr(pil_image, image_size, min_crop_frac=0.8, max_crop_frac=1.0, rng=None):
    """[image_size, image_size(, 3)] uint8: resize the smaller side to a random size in
    [image_size / max_crop_frac, image_size / min_crop_frac], then crop at a random position."""
    rng = rng if rng is not None else np.random.default_rng()
    low = math.ceil(image_size / max_crop_frac)
    high = math.ceil(image_size / min_crop_frac)
    arr = _shrink_then_resize(pil_image, int(rng.integers(low, high + 1)))
    top = int(rng.integers(arr.shape[0] - image_size + 1))
    left = int(rng.integers(arr.shape[1] - image_size + 1))
    return arr[top:top + image_size, left:left + image_size]


def _collate(items):
    images = th.from_numpy(np.stack([it[0] for it in items]))
    cond = {k: th.from_numpy(np.stack([it[1][k] for it in items])) for k in items[0][1]}
    skipped = [p for it in items for p in it[2]]
    return images, cond, skipped


def _ignore_stop_signals(worker_id):
    """Decoding workers leave SIGINT/SIGTERM to the training process, which saves a checkpoint and exits
    (a worker killed by the signal would make the main process fail before it could save). Workers
    still end when their loader is closed (see _close_streams) or when the training process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_OPEN_STREAMS = weakref.WeakSet()


@atexit.register
def _close_streams():
    """Stop the decoding workers before multiprocessing's exit hook joins them (they ignore SIGTERM)."""
    for stream in list(_OPEN_STREAMS):
        stream.close()


class ImageStream:
    """Endless, resumable iterator of batches over an ImageDataset (see load_data)."""

    def __init__(self, dataset, batch_size, shuffle, seed, num_workers, class_names):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.num_workers, self.class_names = tuple(seed), num_workers, class_names
        self.epoch, self.batch_index = 0, 0
        self.skipped_files = set()
        self._batches = None
        _OPEN_STREAMS.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:
            self._batches = self._epoch_batches()
        try:
            images, cond, skipped = next(self._batches)
        except StopIteration:
            self.epoch, self.batch_index = self.epoch + 1, 0
            self._batches = self._epoch_batches()
            images, cond, skipped = next(self._batches)
        self.batch_index += 1
        self._report(skipped)
        return images, cond

    def _report(self, skipped):
        """Warn once per unreadable file (the log reaches log.txt); remember it in skipped_files."""
        for path, reason in skipped:
            if path not in self.skipped_files:
                self.skipped_files.add(path)
                logger.warn(f"skipping unreadable image {path!r} ({reason}); reported once, skipped every epoch")

    def _epoch_batches(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng(self.seed + (self.epoch,)).permutation(n)
        else:
            order = np.arange(n)
        usable = (n // self.batch_size) * self.batch_size
        keys = [(self.epoch, int(i)) for i in order[self.batch_index * self.batch_size:usable]]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=keys, drop_last=True,
                            num_workers=self.num_workers, collate_fn=_collate, generator=th.Generator(),
                            worker_init_fn=_ignore_stop_signals)
        return iter(loader)

    def close(self):
        """Shut down the decoding workers (a later next() starts new ones)."""
        self._batches = None

    def state_dict(self):
        """The position of the next batch: {"epoch", "batch"}."""
        return {"epoch": self.epoch, "batch": self.batch_index}

    def load_state_dict(self, state):
        """Continue from a position saved by state_dict()."""
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch"])
        self._batches = None


class LowResConditioned:
    """Wraps a batch stream and adds model_kwargs["low_res"]: the batch area-downsampled to small_size."""

    def __init__(self, data, small_size):
        self.data, self.small_size = data, small_size

    def __iter__(self):
        return self

    def __next__(self):
        large_batch, model_kwargs = next(self.data)
        model_kwargs["low_res"] = F.interpolate(large_batch, self.small_size, mode="area")
        return large_batch, model_kwargs

    def __getattr__(self, name):
        return getattr(self.data, name)


# The masks' generator: seeded by (seed, rank, epoch, batch, MASK_STREAM); the salt keeps it apart from the
# crops' generators, seeded by (seed, rank, epoch, index).
MASK_STREAM = 0x6D61736B


def check_mask_distribution(unknown_prob, min_area, max_area):
    """Refuse (UsageError) random_inpaint_mask's parameters out of their ranges."""
    if not 0 <= unknown_prob <= 1:
        raise UsageError(f"--inpaint_unknown_prob {unknown_prob}: a probability, in [0, 1]")
    if not 0 < min_area <= max_area <= 1:
        raise UsageError(f"--inpaint_min_area {min_area}, --inpaint_max_area {max_area}: the unknown share of the "
                         "image needs 0 < min <= max <= 1")


def random_inpaint_mask(rng, height, width, unknown_prob=0.25, min_area=0.1, max_area=0.75):
    """A training mask [height, width] bool, True = known pixel, drawn from the numpy Generator rng:

    - with probability unknown_prob, every pixel unknown (the model is then a text-to-image model);
    - otherwise a share a ~ U[min_area, max_area] of the image is unknown: one axis-aligned rectangle of
      that area (inpainting), or, half the time, everything but a rectangle of area 1 - a (outpainting).
      The rectangle's height / width ratio is log-uniform in [1/4, 4] (a side longer than the image is cut
      to it, the other lengthened to keep the area), its position uniform.
    """
    if rng.random() < unknown_prob:
        return np.zeros((height, width), dtype=bool)
    unknown = rng.uniform(min_area, max_area)
    outpaint = rng.random() < 0.5
    area = 1 - unknown if outpaint else unknown
    ratio = np.exp(rng.uniform(-np.log(4), np.log(4)))
    rect_h, rect_w = np.sqrt(area * ratio), np.sqrt(area / ratio)  # shares of the sides
    if rect_h > 1:
        rect_h = 1.0
    elif rect_w > 1:
        rect_h = area
    rows = int(np.clip(round(rect_h * height), 1, height))
    cols = int(np.clip(round(area * height * width / rows), 1, width))
    top, left = int(rng.integers(height - rows + 1)), int(rng.integers(width - cols + 1))
    inside = np.zeros((height, width), dtype=bool)
    inside[top:top + rows, left:left + cols] = True
    return inside if outpaint else ~inside


class InpaintMasked:
    """Wraps a load_data stream (or a wrapper of one) and adds model_kwargs["inpaint_mask"] [N, 1, H, W]
    (1 = known pixel, 0 = erased; random_inpaint_mask's distribution) and model_kwargs["inpaint_image"], the
    batch times its mask: GLIDE's inpainting fine-tuning. The masks of a batch are drawn from a generator seeded
    by the stream's seed and the batch's position (epoch, batch), so a resumed run draws the same masks."""

    def __init__(self, data, unknown_prob=0.25, min_area=0.1, max_area=0.75):
        check_mask_distribution(unknown_prob, min_area, max_area)
        self.data, self.distribution = data, dict(unknown_prob=unknown_prob, min_area=min_area, max_area=max_area)

    def __iter__(self):
        return self

    def __next__(self):
        images, model_kwargs = next(self.data)
        position = self.data.state_dict()  # of the batch just drawn
        rng = np.random.default_rng(tuple(self.data.seed) + (position["epoch"], position["batch"], MASK_STREAM))
        masks = [random_inpaint_mask(rng, *images.shape[2:], **self.distribution) for _ in range(len(images))]
        known = th.from_numpy(np.stack(masks)[:, None]).to(images.dtype)
        model_kwargs.update(inpaint_image=images * known, inpaint_mask=known)
        return images, model_kwargs

    def __getattr__(self, name):
        return getattr(self.data, name)
