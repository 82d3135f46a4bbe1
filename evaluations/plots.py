"""The trade-offs in pictures: FID / precision / recall against guidance scale, FID against model
evaluations per sampler (from a sweep table, see scripts/sweep.py), and training curves from a run's
progress.csv. PNG files through matplotlib's Agg backend (no display needed).

    python evaluations/plots.py sweep OUT_DIR/sweep.json [--out_dir OUT_DIR]
    python evaluations/plots.py training RUN_DIR/progress.csv [--out RUN_DIR/training.png] [--keys loss,mse,vb]
"""

import argparse
import csv
import json
import math
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

from guided_diffusion.errors import ArgumentParser, run  # noqa: E402

TRAINING_KEYS = ("loss", "mse", "vb")  # what image_train logs (mse and vb with a learned variance)
GUIDANCE_METRICS = (("fid", "FID"), ("precision", "precision"), ("recall", "recall"))


def _group(rows, *keys):
    """{tuple of row[key] for keys: [rows]} in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_guidance(rows, path):
    """FID, precision and recall against guidance scale: one line per (guidance kind, sampler, steps).

    rows: sweep table rows (dicts with guidance, scale, sampler, steps, fid, precision, recall); rows
    whose guidance is "none" are left out. Returns {label: [(scale, fid, precision, recall), ...]}.
    """
    lines = {}
    for (kind, sampler, steps), group in _group([r for r in rows if r["guidance"] != "none"],
                                               "guidance", "sampler", "steps").items():
        points = sorted((r["scale"],) + tuple(r[m] for m, _ in GUIDANCE_METRICS) for r in group)
        lines[f"{kind} ({sampler}, {steps} steps)"] = points
    if not lines:
        raise ValueError("no guided runs in the table: give --classifier_scales and/or --guidance_scales")
    figure, axes = plt.subplots(1, len(GUIDANCE_METRICS), figsize=(4 * len(GUIDANCE_METRICS), 3.4))
    for column, (axis, (_, title)) in enumerate(zip(axes, GUIDANCE_METRICS), start=1):
        for label, points in lines.items():
            shown = [(p[0], p[column]) for p in points if p[column] is not None]
            if shown:
                axis.plot(*zip(*shown), marker="o", label=label)
        axis.set_xlabel("guidance scale")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(figure, path)
    return lines


def plot_samplers(rows, path):
    """FID against model evaluations per image (log scale): one line per sampler, unguided runs.

    Returns {sampler: [(nfe, fid), ...]}.
    """
    lines = {sampler: sorted((r["nfe"], r["fid"]) for r in group)
             for (sampler,), group in _group([r for r in rows if r["guidance"] == "none"], "sampler").items()}
    if not lines:
        raise ValueError("no unguided runs in the table: give --samplers and --steps")
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for sampler, points in lines.items():
        axis.plot(*zip(*points), marker="o", label=sampler)
    axis.set_xscale("log")
    nfes = sorted({nfe for points in lines.values() for nfe, _ in points})
    axis.set_xticks(nfes, [f"{nfe:g}" for nfe in nfes])
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("model evaluations per image")
    axis.set_ylabel("FID")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    _save(figure, path)
    return lines


def read_progress(path):
    """progress.csv (guided_diffusion/logger.py) -> {column: [float or None per row]}."""
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise ValueError(f"{path} has no rows: has the run logged (--log_interval) yet?")
    return {key: [float(row[key]) if row[key] not in ("", None) else None for row in table] for key in table[0]}


def plot_training(progress_path, path, keys=TRAINING_KEYS):
    """One panel per logged key (log scale when positive) against "step", from a run's progress.csv.

    Keys the run did not log are left out. Returns {key: ([step, ...], [value, ...])}, rows without
    the key skipped.
    """
    columns = read_progress(progress_path)
    if "step" not in columns:
        raise ValueError(f"{progress_path} has no 'step' column (columns: {sorted(columns)})")
    curves = {}
    for key in keys:
        points = [(s, v) for s, v in zip(columns["step"], columns.get(key, [])) if v is not None and s is not None]
        if points:
            curves[key] = tuple(list(axis) for axis in zip(*points))
    if not curves:
        raise ValueError(f"{progress_path} logs none of {list(keys)} (columns: {sorted(columns)})")
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for axis, (key, (steps, values)) in zip(axes[0], curves.items()):
        axis.plot(steps, values)
        if min(values) > 0 and all(math.isfinite(v) for v in values):
            axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_title(key)
        axis.grid(alpha=0.3, which="both")
    _save(figure, path)
    return curves


def plot_sweep(rows, out_dir):
    """The sweep's PNGs in out_dir (guidance.png and/or samplers.png, for the runs it has); their paths."""
    plots = {"guidance.png": (plot_guidance, any(r["guidance"] != "none" for r in rows)),
             "samplers.png": (plot_samplers, any(r["guidance"] == "none" for r in rows))}
    written = [os.path.join(out_dir, name) for name, (_, wanted) in plots.items() if wanted]
    for path in written:
        plots[os.path.basename(path)][0](rows, path)
    return written


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="plots of a sweep table (sweep.json)")
    sweep.add_argument("table", help="sweep.json written by scripts/sweep.py")
    sweep.add_argument("--out_dir", default="", help="where the PNGs go (default: beside the table)")
    training = commands.add_parser("training", help="training curves from progress.csv")
    training.add_argument("progress", help="progress.csv of a training run")
    training.add_argument("--out", default="", help="PNG path (default: training.png beside progress.csv)")
    training.add_argument("--keys", default=",".join(TRAINING_KEYS),
                          help="comma-separated columns to plot, e.g. train_loss,val_loss for classifier_train "
                          f"(default: {','.join(TRAINING_KEYS)})")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        with open(args.table) as f:
            rows = json.load(f)
        written = plot_sweep(rows, args.out_dir or os.path.dirname(os.path.abspath(args.table)))
    else:
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.progress)), "training.png")
        plot_training(args.progress, out, keys=[key for key in args.keys.split(",") if key])
        written = [out]
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    run(main)
