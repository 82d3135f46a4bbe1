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
from fashion_mnist_judge import Judge, load_or_train  # noqa: E402

GUIDE_SEED = 1  # the judge trains from seed 0


def guide_net(image_size=28):
    """The guide classifier: the judge's layout with SiLU, average pooling and widths 24, 48, 96:
    [N, 1, S, S] in [-1, 1] -> [N, 10] logits (S divisible by 4)."""
    return Judge(image_size, widths=(24, 48, 96), activation=nn.SiLU, pool=nn.AvgPool2d)


def load_or_train_guide(cache_path, image_size=28, log=print):
    """The guide classifier cached at cache_path (trained from GUIDE_SEED first if missing): (net, test acc)."""
    return load_or_train(cache_path, image_size, log=log, build=guide_net, seed=GUIDE_SEED)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="data/fashion_guide_28px.pt", help="where the trained classifier is kept")
    parser.add_argument("--image_size", type=int, default=28, help="image side in pixels (28: Fashion-MNIST's own)")
    args = parser.parse_args()
    _, accuracy = load_or_train_guide(args.cache, args.image_size)
    print(f"guide classifier: {accuracy:.3f} accuracy on the 10k real test images ({args.cache})")


if __name__ == "__main__":
    main()
