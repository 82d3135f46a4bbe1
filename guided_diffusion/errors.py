"""How every command line ends on an error: one line `script.py: error: <what and the fix>` on stderr,
printed by one rank, and exit code 2 for a usage error (a bad or contradictory flag, a missing or
foreign file, a bad data folder) or 1 for a run that had to stop (a full disk, non-finite training
steps). `--debug` or GUIDED_DIFFUSION_DEBUG=1 shows the traceback as well. Any other exception is a bug
and keeps its traceback.

The project raises ValueError (UsageError, CheckpointFileError, BatchFileError, ...) and
FileNotFoundError / FileExistsError for bad input, so those are usage errors here. This module imports
nothing of the project: scripts/, evaluations/ and datasets/ all end through `run`.
"""

import argparse
import errno
import os
import sys
import traceback

USAGE_EXIT = 2
STOPPED_EXIT = 1
DEBUG_FLAG = "--debug"
DEBUG_ENV = "GUIDED_DIFFUSION_DEBUG"
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# The rank a launcher gives a process before torch.distributed starts (torchrun, Open MPI, MPICH, PMIx).
LAUNCHER_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
# How gloo's collectives fail when another rank has exited (NCCL raises torch.distributed.DistError).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


class UsageError(ValueError):
    """A bad flag, file or folder; the message names it and the fix (exit code 2)."""


class RunStopped(RuntimeError):
    """A run that had to stop; the message says what was kept and how to go on (exit code 1)."""


def exit_code(error):
    """2 for a usage error, 1 for a stopped run (RunStopped, a full disk), None for anything else."""
    if isinstance(error, RunStopped) or (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS):
        return STOPPED_EXIT
    if isinstance(error, USAGE_ERRORS):
        return USAGE_EXIT
    return None


def message(error):
    """The error's text for the one line: an OSError without its "[Errno N]" prefix."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error)


def rank():
    """This process's rank: torch.distributed's once it has started, else the launcher's (0 alone)."""
    dist = sys.modules.get("torch.distributed")  # not imported here: datasets/ runs without torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return next((int(os.environ[name]) for name in LAUNCHER_RANK_VARS if os.environ.get(name, "").isdigit()), 0)


def lost_peer(error):
    """Whether error is a collective failing because another rank left (that rank has the cause)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in PEER_GONE)


def run(main):
    """A script's entry point: main(), with its usage errors and stops as one line on rank 0.

    Every rank exits with the error's code (2 usage, 1 stopped). A collective that fails because another
    rank left ends its rank with code 1: silently, or on rank 0 with a line saying so. With --debug (or
    GUIDED_DIFFUSION_DEBUG=1) every rank prints its traceback as well. Other exceptions propagate.
    """
    debug = DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main()
    except Exception as error:
        code = exit_code(error)
        if lost_peer(error):
            code, error = STOPPED_EXIT, RuntimeError(f"another rank stopped; rerun with {DEBUG_FLAG} to see each "
                                                     "rank's error")
        if code is None:
            raise
        if debug:
            traceback.print_exc()
        if rank() == 0:
            print(f"{os.path.basename(sys.argv[0])}: error: {message(error)}", file=sys.stderr, flush=True)
        sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with --debug, whose errors are one line (`prog: error: message`, no usage block)
    printed on rank 0; every rank exits with code 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true",
                          help=f"on an error, show the traceback too (or set {DEBUG_ENV}=1) (default: False)")

    def error(self, text):
        if rank() == 0:
            print(f"{self.prog}: error: {text}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT)
