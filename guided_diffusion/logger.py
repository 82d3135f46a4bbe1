"""Run logging as the release does it: key/value rows to stdout, `log.txt` and `progress.csv` in the log
directory (`OPENAI_LOGDIR`, else a dated folder in the temp dir), plus free-text lines.

Rank 0 writes the shared files; other ranks write only `log-rankNNN.txt`. Values logged with
`logkv_mean` are averaged over calls and, at `dumpkvs`, over ranks (weighted by their counts).
Tensors may be logged: they are converted to numbers only at `dumpkvs`, so logging costs no host sync.
"""

import datetime
import os
import sys
import tempfile

import torch as th
import torch.distributed as dist

from . import dist_util


def _to_number(value):
    return value.item() if isinstance(value, th.Tensor) else value


def _format(value):
    value = _to_number(value)
    return f"{value:<8.3g}" if isinstance(value, float) else str(value)


class HumanOutput:
    """Writes each row as a boxed two-column table (stdout, log.txt)."""

    def __init__(self, stream, owns_stream):
        self.stream, self.owns_stream = stream, owns_stream

    def write_kvs(self, kvs):
        if not kvs:
            return
        rows = [(k, _format(v)) for k, v in sorted(kvs.items())]
        kw = max(len(k) for k, _ in rows)
        vw = max(len(v) for _, v in rows)
        dashes = "-" * (kw + vw + 7)
        lines = [dashes] + [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows] + [dashes]
        self.write_text("\n".join(lines))

    def write_text(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.owns_stream:
            self.stream.close()


class CsvOutput:
    """progress.csv: one row per dump; a new key rewrites the header and pads earlier rows.

    An existing file (a resumed run logging to the same folder) is continued, not truncated.
    """

    def __init__(self, path):
        self.path, self.keys = path, []
        if os.path.exists(path):
            with open(path) as f:
                header = f.readline().strip()
            self.keys = header.split(",") if header else []
        else:
            open(path, "w").close()

    def write_kvs(self, kvs):
        new_keys = sorted(k for k in kvs if k not in self.keys)
        if new_keys:
            with open(self.path) as f:
                old_rows = f.read().splitlines()[1:]
            self.keys += new_keys
            pad = "," * len(new_keys)
            with open(self.path, "w") as f:
                f.write(",".join(self.keys) + "\n")
                f.writelines(row + pad + "\n" for row in old_rows)
        with open(self.path, "a") as f:
            f.write(",".join(str(_to_number(kvs[k])) if k in kvs else "" for k in self.keys) + "\n")

    def write_text(self, text):
        pass

    def close(self):
        pass


class Logger:
    """Accumulates key/values between dumps and forwards rows and text to its outputs."""

    def __init__(self, dir, outputs):
        self.dir, self.outputs = dir, outputs
        self.values, self.mean_sums, self.mean_counts = {}, {}, {}

    def logkv(self, key, val):
        self.values[key] = val

    def logkv_mean(self, key, val, n=1):
        if isinstance(val, th.Tensor):
            val = val.detach()
        self.mean_sums[key] = self.mean_sums.get(key, 0.0) + val * n
        self.mean_counts[key] = self.mean_counts.get(key, 0) + n

    def dumpkvs(self):
        row = dict(self.values)
        row.update(_mean_over_ranks(self.mean_sums, self.mean_counts))
        row = {k: _to_number(v) for k, v in row.items()}
        if dist_util.get_rank() == 0:
            for out in self.outputs:
                out.write_kvs(row)
        self.values, self.mean_sums, self.mean_counts = {}, {}, {}
        return row

    def log(self, *args):
        text = " ".join(str(a) for a in args)
        for out in self.outputs:
            out.write_text(text)

    def close(self):
        for out in self.outputs:
            out.close()


def _mean_over_ranks(sums, counts):
    """{key: mean} pooled over ranks (each contributes its sum and count); keys never counted are left out."""
    total = {k: (float(_to_number(sums[k])), float(_to_number(counts[k]))) for k in sums}
    if dist_util.get_world_size() > 1:
        gathered = [None] * dist_util.get_world_size()
        dist.all_gather_object(gathered, total)
        total = {}
        for part in gathered:
            for k, (s, c) in part.items():
                ts, tc = total.get(k, (0.0, 0.0))
                total[k] = (ts + s, tc + c)
    return {k: s / c for k, (s, c) in total.items() if c > 0}


def default_dir():
    """OPENAI_LOGDIR, else rank 0's dated folder in the temp dir (shared with the other ranks: call it on
    every rank)."""
    if os.environ.get("OPENAI_LOGDIR"):
        return os.environ["OPENAI_LOGDIR"]
    stamp = datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
    name = [os.path.join(tempfile.gettempdir(), stamp)]
    if dist_util.get_world_size() > 1:
        dist.broadcast_object_list(name, src=0)
    return name[0]


def _make_output(fmt, dir, suffix):
    if fmt == "stdout":
        return HumanOutput(sys.stdout, owns_stream=False)
    if fmt == "log":
        return HumanOutput(open(os.path.join(dir, f"log{suffix}.txt"), "a"), owns_stream=True)
    if fmt == "csv":
        return CsvOutput(os.path.join(dir, f"progress{suffix}.csv"))
    raise ValueError(f"unknown log format {fmt!r}; use stdout, log or csv")


_current = None


def configure(dir=None, format_strs=None, log_suffix=""):
    """Start logging to `dir` (default: OPENAI_LOGDIR, else a dated temp folder).

    format_strs: list of "stdout", "log", "csv" (default: all three on rank 0, "log" on other ranks,
    which write log-rankNNN.txt).
    """
    global _current
    dir = os.path.expanduser(dir or default_dir())
    os.makedirs(dir, exist_ok=True)
    rank = dist_util.get_rank()
    if rank > 0:
        log_suffix = f"{log_suffix}-rank{rank:03d}"
    if format_strs is None:
        format_strs = ["stdout", "log", "csv"] if rank == 0 else ["log"]
    if _current is not None:
        _current.close()
    _current = Logger(dir, [_make_output(f, dir, log_suffix) for f in format_strs])
    log(f"Logging to {dir}")


def _get():
    if _current is None:
        configure()
    return _current


def logkv(key, val):
    """Record `val` under `key` for the next row (the last value wins)."""
    _get().logkv(key, val)


def logkv_mean(key, val, n=1):
    """Record `val` (a number or a 0-d tensor), weighted by `n` samples, into the mean of `key`."""
    _get().logkv_mean(key, val, n)


def dumpkvs():
    """Write the accumulated row (means averaged over ranks; call it on every rank) and return it."""
    return _get().dumpkvs()


def log(*args):
    """Write a line of text to stdout and log.txt (rank 0) or log-rankNNN.txt (other ranks)."""
    _get().log(*args)


def warn(*args):
    """Like log, prefixed with WARNING."""
    log("WARNING:", *args)


def get_dir():
    """The current log directory."""
    return _get().dir
