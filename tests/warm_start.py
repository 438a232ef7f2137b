"""Commands forked from a warm interpreter. The tests start `python -m spfde.<command>` dozens of times, and a fresh
interpreter spends ~3 s of CPU importing torch, torch._dynamo, torchvision and Hydra before the command's first
line: a large share of a 2-core CI machine's suite. Each pytest worker keeps one server process that imported those
libraries once; a command is a child forked from it, with its own argv, working directory, environment, sys.path,
stdout/stderr and exit status, which imports spfde afresh and runs the module as `python -m` would (its atexit
handlers included).

What a warm child cannot show, a fresh interpreter still tests: what a command imports at start-up and how long
that takes (tests/test_startup.py), interpreter flags (`python_flags`), environment variables read while those
libraries are imported (OpenMP keeps the server's OMP_NUM_THREADS, which the workers set to what every command
gets), and whatever coverage measures: under `make coverage` (or SPFDE_TEST_FRESH_PROCESSES=1) every command is a
fresh interpreter."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# libraries every command imports before its first line, and no module of this project (spfde is imported afresh
# in each child, from the checkout its PYTHONPATH names). Not scikit-learn: the digits come from the session's
# data cache (tests/conftest.py), so a command imports it only when that cache has no split yet.
PRELOAD = ("torch", "torch._dynamo", "torchvision", "hydra", "hydra.utils", "omegaconf", "yaml")

SERVER = r"""
import importlib, json, os, sys
for name in PRELOAD:
    importlib.import_module(name)
requests, replies = sys.stdin.buffer, sys.stdout
while True:
    line = requests.readline()
    if not line:
        break
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run_request(request)
    print(json.dumps({"pid": pid}), file=replies, flush=True)
    print(json.dumps({"status": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), file=replies, flush=True)
"""


def run_request(request: dict) -> None:
    """In the forked child: become `python -m <module> <args>` in its working directory with its environment."""
    import atexit
    import runpy

    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    env = request["env"]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams, as an interpreter opens them
    sys.stdout = open(1, "w", buffering=1 if env.get("PYTHONUNBUFFERED") else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(env)
    # sys.path as `python -m` builds it: the working directory, PYTHONPATH, then the interpreter's own folders
    own = [p for p in sys.path if p.startswith((sys.prefix, sys.base_prefix))]
    sys.path[:] = [os.getcwd(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p), *own]
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - as an interpreter does: the traceback on stderr, exit status 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr, flush=True)
            code = 1
        os._exit(code or 0)


_server: subprocess.Popen | None = None


def available() -> bool:
    """False while coverage measures (its subprocess hook starts with an interpreter, which a forked child never
    does) or with SPFDE_TEST_FRESH_PROCESSES=1."""
    coverage = sys.modules.get("coverage")
    measuring = (coverage is not None and coverage.Coverage.current() is not None) or any(
        os.environ.get(name) for name in ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"))
    return not measuring and os.environ.get("SPFDE_TEST_FRESH_PROCESSES") != "1"


def server() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        source = Path(__file__).read_text() + SERVER  # this module, then the loop
        _server = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, bufsize=0)
        _server.replies = b""  # what was read of the replies and not yet taken, whole lines or not
    return _server


def reply(proc: subprocess.Popen, deadline: float | None) -> dict | None:
    """The server's next reply line, or None when the deadline passes first. Read from the pipe itself, never
    through a buffered reader: a line a reader had taken in already would be invisible to select."""
    while b"\n" not in proc.replies:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([proc.stdout], [], [], wait)
        if not ready:
            return None
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError("the warm-start server died")
        proc.replies += chunk
    line, proc.replies = proc.replies.split(b"\n", 1)
    return json.loads(line)


def run(module: str, args: list[str], cwd: Path, env: dict, timeout: float | None) -> subprocess.CompletedProcess:
    """What `subprocess.run([python, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)` returns, from a child forked off the warm server."""
    command = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryDirectory(prefix="spfde-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        proc = server()
        request = {"module": module, "args": list(args), "cwd": str(cwd), "env": dict(env), "out": str(out),
                   "err": str(err)}
        line = memoryview((json.dumps(request) + "\n").encode())
        while line:  # an unbuffered pipe may take a long request (the whole environment) in parts
            line = line[proc.stdin.write(line):]
        pid = reply(proc, None)["pid"]
        deadline = None if timeout is None else time.monotonic() + timeout
        done = reply(proc, deadline)
        if done is None:  # as subprocess.run does on a timeout: kill the child, wait for it, raise
            os.kill(pid, signal.SIGKILL)
            reply(proc, None)
            raise subprocess.TimeoutExpired(command, timeout)
        read = lambda path: path.read_text(errors="replace") if path.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess(command, done["status"], read(out), read(err))
