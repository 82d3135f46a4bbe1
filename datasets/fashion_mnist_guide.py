"""A second clean Fashion-MNIST classifier, the one that *guides* (through the diffusion model, with
guidance.CleanImageGuidance); the judge (fashion_mnist_judge.py) only scores.

It is trained apart from the judge: another architecture (SiLU and average pooling, so that its input
gradient is smooth, and other widths; the judge has ReLU and max pooling) and another
seed, on the same real training images, never on noise. So a guided sample cannot score well with the
judge just by fooling the classifier that steered it.

    python datasets/fashion_mnist_guide.py --cache data/fashion_guide_28px.pt   # train once, print the accuracy
"""

import argparse
import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist_judge import load_or_train  # noqa: E402

GUIDE_SEED = 1  # the judge trains from seed 0


class GuideNet(nn.Module):
    """Two 3x3 conv / SiLU / average-pool stages (24 and 48 channels) and a two-layer SiLU head:
    [N, 1, S, S] in [-1, 1] -> [N, 10] logits (S divisible by 4)."""

    def __init__(self, image_size=28):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the guide classifier needs an image size divisible by 4, got {image_size}")
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(24, 48, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(48 * (image_size // 4) ** 2, 96), nn.SiLU(), nn.Linear(96, 10),
        )

    def forward(self, x):
        return self.net(x)


def load_or_train_guide(cache_path, image_size=28, log=print):
    """The guide classifier cached at cache_path (trained from GUIDE_SEED first if missing): (net, test acc)."""
    return load_or_train(cache_path, image_size, log=log, build=GuideNet, seed=GUIDE_SEED)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="data/fashion_guide_28px.pt", help="where the trained classifier is kept")
    parser.add_argument("--image_size", type=int, default=28, help="image side in pixels (28: Fashion-MNIST's own)")
    args = parser.parse_args()
    _, accuracy = load_or_train_guide(args.cache, args.image_size)
    print(f"guide classifier: {accuracy:.3f} accuracy on the 10k real test images ({args.cache})")


if __name__ == "__main__":
    main()
