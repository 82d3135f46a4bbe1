"""A clean Fashion-MNIST classifier that judges samples: does each image show the class it was asked for?

It is trained on the real 60k training images (never on noisy ones, never on samples) and is separate from
the noisy classifier that guides sampling, so a guided sample cannot score well just by fooling its guide.
A small CNN: about 0.9 accuracy on the 10k real test images after two epochs (under a minute on 2 CPU cores).

    python datasets/fashion_mnist_judge.py --cache data/judge_28px.pt samples_100x28x28x3.npz [more.npz ...]

prints the requested-class accuracy of each sample file (`arr_0` uint8 [N, H, W, 3], `arr_1` labels [N]) and
with `--grids` writes beside each one `class_grid.png`: one row per class (0-tshirt at the top).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import CLASS_NAMES, DATA_DIR, load_split  # noqa: E402
from guided_diffusion.errors import ArgumentParser, run  # noqa: E402


class Judge(nn.Module):
    """Two conv/pool stages and a two-layer head: [N, 1, S, S] in [-1, 1] -> [N, 10] logits (S divisible by 4).

    widths: the channels of the two stages and the head's hidden units; activation and pool: the layer
    classes (the judge's ReLU and max pooling; fashion_mnist_guide.py builds another network from them).
    """

    def __init__(self, image_size=28, widths=(32, 64, 128), activation=nn.ReLU, pool=nn.MaxPool2d):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the judge needs an image size divisible by 4, got {image_size}")
        self.image_size = image_size
        first, second, hidden = widths
        self.net = nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1), activation(), pool(2),
            nn.Conv2d(first, second, 3, padding=1), activation(), pool(2),
            nn.Flatten(), nn.Linear(second * (image_size // 4) ** 2, hidden), activation(), nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.net(x)


def to_input(images):
    """uint8 [N, S, S] grey or [N, S, S, C] (channels averaged) -> float32 [N, 1, S, S] in [-1, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    if x.dim() == 4:
        x = x.mean(dim=3)
    return (x / 127.5 - 1).unsqueeze(1)


@torch.no_grad()
def predict(judge, images, batch_size=1000):
    """Predicted classes [N] (int64) of uint8 images [N, S, S] or [N, S, S, C]."""
    judge.eval()
    x = to_input(images)
    if x.shape[-1] != judge.image_size or x.shape[-2] != judge.image_size:
        raise ValueError(f"images are {x.shape[-2]}x{x.shape[-1]} but the judge was trained at "
                         f"{judge.image_size}x{judge.image_size}: build it with image_size={x.shape[-1]}")
    return torch.cat([judge(chunk).argmax(dim=1) for chunk in x.split(batch_size)])


def accuracy(judge, images, labels):
    """Fraction of images [N, S, S(, C)] that the judge puts in their class labels [N]."""
    labels = torch.as_tensor(np.array(labels), dtype=torch.int64)
    return (predict(judge, images) == labels).float().mean().item()


def train_judge(image_size=28, epochs=2, batch_size=128, lr=2e-3, seed=0, source_dir=DATA_DIR, build=Judge):
    """Train a Judge (or another classifier: build(image_size) -> a module [N, 1, S, S] in [-1, 1] -> [N, 10]
    logits with an image_size attribute) on the real training split from `seed`; returns (classifier,
    accuracy on the real test split)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = load_split("train", image_size, source_dir)
    x, y = to_input(images), torch.from_numpy(labels.astype(np.int64))
    judge = build(image_size)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order[: len(x) // batch_size * batch_size].split(batch_size):
            loss = nn.functional.cross_entropy(judge(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    test_images, test_labels = load_split("t10k", image_size, source_dir)
    return judge, accuracy(judge, test_images, test_labels)


def load_or_train(cache_path, image_size=28, source_dir=DATA_DIR, log=print, build=Judge, seed=0):
    """The judge (or the classifier of build, trained from seed; see train_judge) cached at cache_path, trained
    and saved there first if missing; returns (classifier, test acc)."""
    name = build.__name__.replace("_", " ")
    if cache_path and os.path.exists(cache_path):
        saved = torch.load(cache_path, weights_only=True)
        if saved["image_size"] == image_size:
            judge = build(image_size)
            judge.load_state_dict(saved["state_dict"])
            return judge, saved["test_accuracy"]
        log(f"{cache_path} holds a {saved['image_size']} px {name}; training one for {image_size} px")
    judge, test_acc = train_judge(image_size, source_dir=source_dir, seed=seed, build=build)
    log(f"{name}: trained on real Fashion-MNIST (seed {seed}), test accuracy {test_acc:.3f}")
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        torch.save(dict(image_size=image_size, test_accuracy=test_acc, state_dict=judge.state_dict()), cache_path)
    return judge, test_acc


def read_samples(path):
    """A sampling script's npz -> (images uint8 [N, H, W, C], requested labels [N]); clear errors otherwise."""
    with np.load(path) as f:
        if "arr_0" not in f or "arr_1" not in f:
            raise ValueError(f"{path} holds {sorted(f.keys())}, not arr_0 (images) and arr_1 (labels): "
                             f"pass samples of a class-conditional model (image_sample.py --class_cond True)")
        images, labels = f["arr_0"], f["arr_1"]
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        raise ValueError(f"{path}: expected arr_0 uint8 [N, H, W, C] and arr_1 [N], got {images.dtype} "
                         f"{images.shape} and {labels.shape}")
    return images, labels


def score_samples(judge, path):
    """Requested-class accuracy of a samples npz, overall and per class: (float, {class_name: float})."""
    images, labels = read_samples(path)
    hits = (predict(judge, images) == torch.as_tensor(labels, dtype=torch.int64)).numpy()
    per_class = {CLASS_NAMES[c]: float(hits[labels == c].mean()) for c in np.unique(labels)}
    return float(hits.mean()), per_class


def class_grid(images, labels, per_row=10, pad=2):
    """uint8 [N, H, W, C] with labels [N] -> uint8 [rows, cols] grey grid: row c holds the first per_row images
    asked for class c (black where fewer), `pad` black pixels between tiles."""
    classes = range(len(CLASS_NAMES))
    n, h, w, _ = images.shape
    grid = np.zeros((len(classes) * (h + pad) + pad, per_row * (w + pad) + pad), dtype=np.uint8)
    for c in classes:
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_row]):
            top, left = pad + c * (h + pad), pad + k * (w + pad)
            grid[top:top + h, left:left + w] = images[i].mean(axis=2).astype(np.uint8)
    return grid


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", nargs="+", help="npz files written by image_sample.py / classifier_sample.py")
    parser.add_argument("--cache", default="data/fashion_judge.pt", help="where the trained judge is kept")
    parser.add_argument("--json", default="", help="also write the accuracies to this JSON file")
    parser.add_argument("--grids", action="store_true", help="write class_grid.png beside each npz")
    args = parser.parse_args()
    image_size = read_samples(args.samples[0])[0].shape[1]
    judge, test_acc = load_or_train(args.cache, image_size)
    results = dict(judge_test_accuracy=test_acc, samples={})
    for path in args.samples:
        acc, per_class = score_samples(judge, path)
        results["samples"][path] = dict(accuracy=acc, per_class=per_class)
        print(f"{acc:.3f} requested-class accuracy (judge: {test_acc:.3f} on real test images): {path}")
        if args.grids:
            grid_path = os.path.join(os.path.dirname(path), "class_grid.png")
            Image.fromarray(class_grid(*read_samples(path))).save(grid_path)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    run(main)
