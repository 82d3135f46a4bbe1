"""Test helpers shared by the test files: running Python scripts in subprocesses (alone or under
mpiexec) and keeping in-process torch work on one thread."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))


def run_python(args, ranks=1, env=None, check=True, timeout=300):
    """Runs `python *args` (under `mpiexec -n ranks` when ranks > 1) with the repository importable and
    one thread per process; returns the CompletedProcess (stdout, stderr as text). check: raise with
    both outputs on a non-zero exit."""
    command = [sys.executable, *map(str, args)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(name="run_python", scope="session")
def run_python_fixture():
    """run_python(args, ranks=1, env=None, check=True, timeout=300) -> CompletedProcess (see above)."""
    return run_python


@pytest.fixture(scope="session")
def run_script():
    """run_script(name, args, logdir, ranks=1, check=True): scripts/{name}.py with OPENAI_LOGDIR=logdir
    (the sampling scripts and image_nll with --progress False) -> CompletedProcess."""

    def run(name, args, logdir, ranks=1, check=True):
        quiet = ["--progress", "False"] if "sample" in name or name == "image_nll" else []
        return run_python([REPO / "scripts" / f"{name}.py", *args, *quiet], ranks=ranks,
                          env={"OPENAI_LOGDIR": str(logdir)}, check=check)

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process torch work on one thread for the module: on a busy 2-core machine two threads are
    many times slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)
