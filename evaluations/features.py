"""A cheap stand-in for the Inception network, for tests and smoke runs of the evaluation pipeline.

Any feature extractor the evaluator accepts has InceptionV3's interface:

- ``model(images)``: uint8-range [N, H, W, 3] tensor -> (pool [N, D], spatial [N, S]) float32;
- ``feature_dims = (D, S)``; ``has_softmax`` and, when True, ``softmax(pool)`` -> [N, K].

The numbers computed on these features are *not* FID, precision or recall as reported in papers.
"""

import torch as th
import torch.nn.functional as F


class PixelFeatures:
    """pool: the mean colour of each cell of a 2x2 grid (12 values); spatial: each channel's mean and
    standard deviation (6 values); all in [0, 1] units. No softmax, so no Inception Score."""

    feature_dims = (12, 6)
    has_softmax = False

    def __call__(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255.0
        pool = F.adaptive_avg_pool2d(x, 2).flatten(1)
        spatial = th.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        return pool, spatial
