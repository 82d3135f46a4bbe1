"""The release's metric math on Inception activations: FID/sFID, Inception Score, precision/recall."""

import warnings

import numpy as np
import torch as th
from scipy import linalg
from scipy.special import xlogy

IS_SPLIT_SIZE = 5000  # samples per Inception Score split
NHOOD_SIZE = 3  # k of the k-NN manifold radii
BLOCK_SIZE = 10000  # rows/columns per pairwise-distance block


def statistics(activations):
    """Activations [N, D] -> (mu [D], sigma [D, D]) float64, sigma the unbiased covariance."""
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2 or len(activations) < 2:
        raise ValueError(f"need activations [N>=2, D], got shape {activations.shape}")
    return activations.mean(axis=0), np.cov(activations, rowvar=False)


def _real_sqrtm_of_product(sigma1, sigma2, eps):
    """The real matrix square root of sigma1 sigma2 [D, D] (see frechet_distance for the fallbacks)."""
    root = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(root).all():
        warnings.warn(f"FID: sqrtm of the covariance product is singular; adding {eps} to the diagonals")
        jitter = eps * np.eye(len(sigma1))
        root = linalg.sqrtm((sigma1 + jitter).dot(sigma2 + jitter))
    if not np.iscomplexobj(root):
        return root
    imaginary = np.abs(root.imag)
    if not imaginary.diagonal().max() <= 1e-3:  # NaN fails too
        raise ValueError(f"FID: imaginary component {imaginary.max()} in sqrtm")
    return root.real


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-8):
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as released.

    A non-finite sqrtm is retried with eps added to both diagonals; an imaginary part above 1e-3 on
    the diagonal is an error. Tiny negative results (round-off) are returned as they are.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape} "
            "(stored statistics must come from the same Inception feature: 2048 for FID, 2023 for sFID)"
        )
    shift = mu1 - mu2
    cross = np.trace(_real_sqrtm_of_product(sigma1, sigma2, eps))
    return float(shift.dot(shift) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def inception_score(probs, split_size=IS_SPLIT_SIZE):
    """exp(E[KL(p(y|x) || p(y))]) per split of ``split_size`` rows, averaged. probs: [N, K]."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        kl = xlogy(part, part) - xlogy(part, marginal)  # 0 log 0 = 0
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def pairwise_distances(u, v, half=True):
    """Squared Euclidean distances [len(u), len(v)] float32, as the release computes them.

    In half precision (fp16 operands and products) when ``half``; the whole block is recomputed in
    float32 if any fp16 value is not finite.
    """
    def block(dtype):
        a, b = u.to(dtype), v.to(dtype)
        d = (a * a).sum(1, keepdim=True) - 2 * (a @ b.T) + (b * b).sum(1)[None]
        return d.clamp_min(0).float()

    if half:
        dist = block(th.float16)
        if bool(th.isfinite(dist).all()):
            return dist
    return block(th.float32)


def manifold_radii(features, k=NHOOD_SIZE, block=BLOCK_SIZE, half=True):
    """Squared distance of each point to its k-th nearest other point. features: [N, D] tensor -> [N]."""
    radii = []
    for start in range(0, len(features), block):
        rows = features[start : start + block]
        columns = range(0, len(features), block)
        dist = th.cat([pairwise_distances(rows, features[c : c + block], half) for c in columns], 1)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself
    return th.cat(radii)


def precision_recall(ref, sample, k=NHOOD_SIZE, block=BLOCK_SIZE, half=True, device="cpu"):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN radii, as released.

    Precision: fraction of samples inside some reference point's k-NN ball; recall: fraction of
    reference points inside some sample's ball. ref: [N, D], sample: [M, D] arrays -> (precision, recall).
    """
    ref = th.as_tensor(np.asarray(ref, dtype=np.float32), device=device)
    sample = th.as_tensor(np.asarray(sample, dtype=np.float32), device=device)
    if ref.ndim != 2 or sample.ndim != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {tuple(ref.shape)} and {tuple(sample.shape)}")
    if min(len(ref), len(sample)) <= k:
        raise ValueError(f"precision/recall need more than k={k} points per set")
    ref_radii = manifold_radii(ref, k, block, half)
    sample_radii = manifold_radii(sample, k, block, half)
    ref_covered = th.zeros(len(ref), dtype=th.bool, device=device)
    sample_covered = th.zeros(len(sample), dtype=th.bool, device=device)
    for r in range(0, len(ref), block):
        for s in range(0, len(sample), block):
            dist = pairwise_distances(ref[r : r + block], sample[s : s + block], half)
            ref_covered[r : r + block] |= (dist <= sample_radii[None, s : s + block]).any(1)
            sample_covered[s : s + block] |= (dist <= ref_radii[r : r + block, None]).any(0)
    return float(sample_covered.double().mean()), float(ref_covered.double().mean())
