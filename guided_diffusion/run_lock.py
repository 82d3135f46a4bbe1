"""One training run per log dir: `<log dir>/run.lock`, locked by the run's rank 0 for the life of its process.

The lock is the operating system's (a POSIX record lock, fcntl), so it ends with the process however that
ends: a run killed with SIGKILL, or whose host crashed (on NFS, once the server's lease on the lock
expires), leaves no lock, only its record in the file. The file itself is never deleted (deleting it would
let a waiting run and a new one lock two different files); a run that ends normally empties it, so a
record found in an unlocked file is that of a run that was killed, and the next run takes over with a
warning naming it. Only this module opens the file in the holding process: closing any descriptor of a
locked file drops a POSIX lock.
"""

import atexit
import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = "run.lock"
_held = {}  # real path of a log dir -> the descriptor holding its lock (open until this process ends)


class LogDirInUse(FileExistsError):
    """Another live run holds the log dir's lock."""


def acquire(log_dir):
    """Create log_dir if needed and lock it for this process's life (a second call for it does nothing).

    Returns warnings for the caller to log once logging has started: a killed run's lock taken over, or
    a file system without locks. Raises LogDirInUse naming the live holder (host, pid, start time).
    """
    os.makedirs(log_dir, exist_ok=True)
    key = os.path.realpath(log_dir)
    if key in _held:
        return []
    path = os.path.join(log_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_record(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            return [f"cannot lock {path} ({os.strerror(exc.errno)}): a second run started in {log_dir} "
                    f"would not be refused"]
        raise LogDirInUse(f"{log_dir} is in use by another training run ({describe(holder)}; lock {path}): "
                          f"set OPENAI_LOGDIR to another folder, or wait until that run ends") from None
    previous = _read_record(fd)
    _write_record(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv)})
    _held[key] = fd
    if not previous:
        return []
    return [f"took over {path} from a run that is gone ({describe(previous)}), killed before it could "
            f"release it"]


def describe(record):
    """"host H, pid P, started T" of a lock record (unknown parts named so)."""
    return ", ".join(f"{key} {record.get(key, 'unknown')}" for key in ("host", "pid", "started"))


def _read_record(fd):
    """The holder record in the lock file ({} when empty or unreadable, e.g. a holder still writing it)."""
    try:
        return json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _write_record(fd, record):
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


@atexit.register
def _release_all():
    """A run that ends (normally, by an exception or by a handled signal) leaves an empty, unlocked file."""
    for fd in _held.values():
        os.ftruncate(fd, 0)
    _held.clear()
