"""A run's metric columns in one call: the evaluator's metrics against a fixed reference, the FID's bootstrap
spread, and a requested-class accuracy (scripts/sweep.py's rows, datasets/fashion_mnist_caption_judge.py)."""

import numpy as np

from evaluations import evaluator
from evaluations.bootstrap import FidBootstrap
from evaluations.stats import BatchStats


class Scorer:
    """A run's metric columns: the evaluator's five metrics against the reference (BatchStats), the
    FID's bootstrap spread (`rounds` resamples, 0: none) and the requested-class accuracy
    judge(images, labels) -> float (None: no accuracy)."""

    def __init__(self, reference, extractor, batch_size, device, rounds=0, seed=0, judge=None):
        self.reference, self.extractor, self.batch_size, self.device = reference, extractor, batch_size, device
        self.bootstrap = FidBootstrap(reference.mu, reference.sigma) if rounds else None
        self.rounds, self.seed, self.judge = rounds, seed, judge

    def __call__(self, images, labels=None, features_path=None):
        """Metrics of uint8 [N, H, W, 3] images; accuracy against the labels [N] they were asked for (None:
        no accuracy). With a features_path, the pool_3 features [N, D] and the labels go there (an npz)."""
        batches = (images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size))
        acts = evaluator.batch_activations(self.extractor, batches, self.device,
                                           with_softmax=self.extractor.has_softmax)
        if features_path:
            np.savez(features_path, pool_3=acts["pool"], **({} if labels is None else {"labels": labels}))
        results = evaluator.compare(self.reference, BatchStats.from_activations(acts), acts.get("probs"), self.device)
        results |= dict(fid_std=None, fid_low=None, fid_high=None, accuracy=None)
        if self.bootstrap is not None:
            results |= self.bootstrap.spread(acts["pool"], results["fid"], self.rounds, self.seed)
        if self.judge is not None and labels is not None:
            results["accuracy"] = self.judge(images, labels)
        return results
