"""Time to evaluate a sample batch against a reference batch (default: 50k 64x64 vs 10k), per phase.

    python benchmarks/bench_evaluator.py                          # GPU: the issue's target case
    python benchmarks/bench_evaluator.py --num_samples 64 --num_ref 64 --device cpu   # CPU smoke run

The batches are random uint8 images written to a temporary folder; the figures are the time of
Inception activations (both batches), statistics + FID + sFID, and precision/recall, plus the time
to read the reference from its `--save_stats` file instead (the cache; not part of the total).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch as th

from evaluations import metrics
from evaluations.evaluator import npz_activations, reference_stats
from evaluations.stats import BatchStats
from evaluations.weights import load_inception


def write_batch(path, count, size, seed):
    images = np.random.RandomState(seed).randint(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(path, arr_0=images)


def timed(label, fn, *args, **kwargs):
    if th.cuda.is_available():
        th.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if th.cuda.is_available():
        th.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"{label:<34} {elapsed:9.2f} s", flush=True)
    return result, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=50000)
    parser.add_argument("--num_ref", type=int, default=10000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--inception_path", default="")
    args = parser.parse_args()
    device_name = th.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device={device_name} torch={th.__version__} samples={args.num_samples} ref={args.num_ref} "
          f"size={args.image_size} batch={args.batch_size}")
    model = load_inception(args.inception_path or None, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, sample_path = os.path.join(tmp, "ref.npz"), os.path.join(tmp, "sample.npz")
        write_batch(ref_path, args.num_ref, args.image_size, 0)
        write_batch(sample_path, args.num_samples, args.image_size, 1)
        ref, total = timed("activations (reference)", npz_activations, model, ref_path, args.batch_size, args.device)
        stats_path = os.path.join(tmp, "ref_stats.npz")
        BatchStats.from_activations(ref).save(stats_path)
        timed("reference from its --save_stats file", reference_stats, stats_path, model)  # not in the total
        sample, t = timed("activations (samples)", npz_activations, model, sample_path, args.batch_size, args.device,
                          with_softmax=model.has_softmax)
        total += t

        def fids():
            return BatchStats.from_activations(sample).frechet_distances(BatchStats.from_activations(ref))

        (fid, sfid), t = timed("statistics + FID + sFID", fids)
        total += t
        (precision, recall), t = timed("precision/recall", metrics.precision_recall, ref["pool"], sample["pool"],
                                       device=args.device)
        total += t
    print(f"{'total':<34} {total:9.2f} s   (FID {fid:.3f}, sFID {sfid:.3f}, P {precision:.4f}, R {recall:.4f})")


if __name__ == "__main__":
    main()
