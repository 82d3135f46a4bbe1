"""The trade-offs in pictures: FID (with its spread) / judge accuracy / precision / recall against
guidance scale, FID against model evaluations per sampler and step schedule, with the real-data floor
as a band (from a sweep table, see scripts/sweep.py), and training curves from a run's progress.csv.
PNG files through matplotlib's Agg backend (no display needed).

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
GUIDANCE_METRICS = (("fid", "FID"), ("accuracy", "judge accuracy"), ("precision", "precision"), ("recall", "recall"))
GUIDANCE_POINT = ("scale", "fid", "fid_low", "fid_high", "accuracy", "precision", "recall")  # plot_guidance's points


def _group(rows, *keys):
    """{tuple of row.get(key) for keys: [rows]} in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _setting(row):
    """A run's sampler, its options and its step schedule, as a legend label."""
    options = f" [{row['options']}]" if row.get("options") else ""
    return f"{row['sampler']}{options}, {row.get('spacing') or 'even'}"


def _with_bars(axis, points, label):
    """Plot (x, y, low, high) points as a line with error bars from low to high (None: no bar)."""
    x, y, low, high = zip(*points)
    bars = None
    if all(v is not None for v in low + high):
        bars = [[b - a for a, b in zip(low, y)], [b - a for a, b in zip(y, high)]]
    axis.errorbar(x, y, yerr=bars, marker="o", capsize=3, label=label)


def _floor_band(axis, rows):
    """The floor rows' FID (real images against the reference) as a dashed line in a band from
    fid_low to fid_high; returns the floor's FID or None when the table has no floor."""
    floors = [r for r in rows if r["sweep"] == "floor"]
    if not floors:
        return None
    floor = floors[0]
    if floor.get("fid_low") is not None:
        axis.axhspan(floor["fid_low"], floor["fid_high"], color="grey", alpha=0.25)
    axis.axhline(floor["fid"], color="grey", linestyle="--", label=f"real images ({floor['num_samples']}): floor")
    return floor["fid"]


def plot_guidance(rows, path):
    """FID (with its spread), judge accuracy (when measured), precision and recall against guidance
    scale: one row of panels per guidance kind, one line per sampler, schedule and step count; the
    floor as a band on the FID panels.

    rows: sweep table rows (scripts/sweep.py's COLUMNS; tables written before the spread, the schedule
    and the judge were recorded plot without them); only rows of the "guidance" sweep are lines.
    Returns {(kind, label): [(scale, fid, fid_low, fid_high, accuracy, precision, recall), ...]}.
    """
    lines = {}
    for (kind, *_), group in _group([r for r in rows if r["sweep"] == "guidance"],
                                    "guidance", "sampler", "options", "spacing", "steps").items():
        label = f"{_setting(group[0])}, {group[0]['steps']} steps"
        lines[kind, label] = sorted(tuple(r.get(key) for key in GUIDANCE_POINT) for r in group)
    if not lines:
        raise ValueError("no guided runs in the table: give --classifier_scales and/or --guidance_scales")
    metrics = [(GUIDANCE_POINT.index(key), title) for key, title in GUIDANCE_METRICS
               if any(point[GUIDANCE_POINT.index(key)] is not None for points in lines.values() for point in points)]
    kinds = list(dict.fromkeys(kind for kind, _ in lines))
    figure, axes = plt.subplots(len(kinds), len(metrics), figsize=(4 * len(metrics), 3.4 * len(kinds)), squeeze=False)
    for row_axes, kind in zip(axes, kinds):
        for axis, (column, title) in zip(row_axes, metrics):
            for (line_kind, label), points in lines.items():
                shown = [p for p in points if p[column] is not None]
                if line_kind != kind or not shown:
                    continue
                if title == "FID":
                    _with_bars(axis, [p[:4] for p in shown], label)
                else:
                    axis.plot([p[0] for p in shown], [p[column] for p in shown], marker="o", label=label)
            if title == "FID":
                _floor_band(axis, rows)
            axis.set_xlabel("classifier scale" if kind == "classifier" else "guidance scale W")
            axis.set_title(f"{title}, {kind} guidance")
            axis.grid(alpha=0.3)
        row_axes[0].legend(fontsize="small")
    _save(figure, path)
    return lines


def plot_samplers(rows, path):
    """FID (with its spread as error bars) against model evaluations per image (log scale): one line
    per sampler and step schedule, unguided runs; the floor as a band.

    Returns {label: [(nfe, fid, fid_low, fid_high), ...]}.
    """
    lines = {_setting(group[0]): sorted((r["nfe"], r["fid"], r.get("fid_low"), r.get("fid_high")) for r in group)
             for group in _group([r for r in rows if r["sweep"] == "samplers"],
                                 "sampler", "options", "spacing").values()}
    if not lines:
        raise ValueError("no unguided runs in the table: give --samplers and --steps")
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for label, points in lines.items():
        _with_bars(axis, points, label)
    _floor_band(axis, rows)
    axis.set_xscale("log")
    nfes = []
    for nfe in sorted({point[0] for points in lines.values() for point in points}):
        if not nfes or nfe > nfes[-1] * 1.1:  # labels 49 and 50 would print on top of each other
            nfes.append(nfe)
    axis.set_xticks(nfes, [f"{nfe:g}" for nfe in nfes])
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("model evaluations per image")
    axis.set_ylabel("FID")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")
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
    plots = {"guidance.png": (plot_guidance, any(r["sweep"] == "guidance" for r in rows)),
             "samplers.png": (plot_samplers, any(r["sweep"] == "samplers" for r in rows))}
    written = [os.path.join(out_dir, name) for name, (_, wanted) in plots.items() if wanted]
    os.makedirs(out_dir, exist_ok=True)
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
