"""`python FILE args` or `python -c CODE args` for the tests, about 30 times faster to start: a server
process imports torch and this project once, then forks a fresh child per run.

A child is a new process as far as a script can tell: its own pid, stdin from /dev/null, stdout and
stderr to files, the requested environment and working directory, sys.argv and sys.path[0] as the
interpreter would set them, atexit handlers run and the exit code returned as subprocess.run returns it
(-N for a signal). The server never runs a torch operation before forking, so no thread pool is forked.
What the interpreter reads only at start-up (PYTHON* variables, the OpenMP thread count) is the
server's: runs that change it go to a real subprocess (_train_helpers.run_python decides).
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile


def serve():
    """The server loop: one JSON request per stdin line -> {"pid"} line, then {"returncode"} line."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import PIL.Image  # noqa: F401

    import guided_diffusion.editing.run  # noqa: F401 (the package's modules, as the scripts import them)
    import guided_diffusion.sampling  # noqa: F401
    import guided_diffusion.train_util  # noqa: F401

    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies, flush=True)


def _run_child(request):
    """Become `python *request["args"]` and exit with its code (never returns)."""
    import atexit
    import runpy
    import traceback

    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdin = open(0, closefd=False)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    args = request["args"]
    code = 0
    try:
        if args[0] == "-c":
            sys.argv, sys.path[0] = ["-c", *args[2:]], ""
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv, sys.path[0] = list(args), os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else (stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class WarmPython:
    """A lazily started server (see the module docstring); run() works like subprocess.run(capture_output,
    text) for `python *args`."""

    def __init__(self, python, env, cwd):
        self.python, self.env, self.cwd = python, dict(env), cwd
        self.server, self.pending = None, b""

    def run(self, args, env, timeout):
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen([self.python, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=self.env, cwd=self.cwd, text=True)
            self.pending = b""
        with tempfile.TemporaryDirectory() as outputs:
            request = dict(args=list(map(str, args)), env=env, cwd=str(self.cwd),
                           stdout=os.path.join(outputs, "stdout"), stderr=os.path.join(outputs, "stderr"))
            print(json.dumps(request), file=self.server.stdin, flush=True)
            pid = self._reply(None)["pid"]
            try:
                returncode = self._reply(timeout)["returncode"]
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._reply(None)
                raise
            with open(request["stdout"]) as out, open(request["stderr"]) as err:
                return subprocess.CompletedProcess([self.python, *request["args"]], returncode, out.read(), err.read())

    def _reply(self, timeout):
        """The server's next reply line (read from its pipe unbuffered, so that select sees what is left)."""
        fd = self.server.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.python, timeout)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the warm Python server exited")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait()


if __name__ == "__main__":
    serve()
