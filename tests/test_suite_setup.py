"""The test suite's own setup (tests/conftest.py) under pytest-xdist, on a small suite of its own: a fixture built
once per module is built once, and the tests that need the whole machine run on one worker, one after another."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("xdist")

MODULE_FIXTURE = """
import os, time, pytest

@pytest.fixture(scope="module")
def trained():
    with open(os.environ["SUITE_LOG"], "a") as log:
        log.write("built\\n")
    return 1

@pytest.mark.parametrize("i", range(6))
def test_uses_the_fixture(trained, i):
    time.sleep(0.05)
"""
WHOLE_MACHINE = """
import os, time, pytest

@pytest.mark.whole_machine
@pytest.mark.parametrize("i", range(4))
def test_needs_the_machine(i):
    with open(os.environ["SUITE_LOG"], "a") as log:
        log.write(f"start {os.environ['PYTEST_XDIST_WORKER']} {time.time()}\\n")
    time.sleep(0.1)
    with open(os.environ["SUITE_LOG"], "a") as log:
        log.write(f"end {os.environ['PYTEST_XDIST_WORKER']} {time.time()}\\n")
"""
PLAIN = """
import time, pytest

@pytest.mark.parametrize("i", range(8))
def test_plain(i):
    time.sleep(0.05)
"""


@pytest.mark.slow
def test_xdist_keeps_module_fixtures_and_whole_machine_tests_on_one_worker(tmp_path):
    suite = tmp_path / "tests"
    suite.mkdir()
    (suite / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_fixture.py").write_text(MODULE_FIXTURE)
    (suite / "test_machine_a.py").write_text(WHOLE_MACHINE)
    (suite / "test_machine_b.py").write_text(WHOLE_MACHINE)
    (suite / "test_plain.py").write_text(PLAIN)
    log = tmp_path / "log"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                           "-q", "tests"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SUITE_LOG": str(log)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = log.read_text().splitlines()
    assert lines.count("built") == 1
    spans = [line.split() for line in lines if line.startswith(("start", "end"))]
    assert len({worker for _, worker, _ in spans}) == 1  # all eight on one worker
    events = [kind for kind, _, _ in sorted(spans, key=lambda s: float(s[2]))]
    assert events == ["start", "end"] * 8  # one after another


# a command as the warm-start server must run it: what `python -m` gives a module, seen from inside it
COMMAND = """
import atexit, os, sys
print("argv", sys.argv[1:])
print("cwd", os.getcwd(), "path0", sys.path[0], "pythonpath first", sys.path[1] == os.environ["EXTRA_PATH"])
print("env", os.environ.get("ONLY_HERE"), "name", __name__, "main", sys.modules["__main__"].__file__ == __file__)
print("spfde imported", "spfde" in sys.modules, "torch imported", "torch" in sys.modules)
atexit.register(lambda: print("atexit ran", flush=True))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_warm_started_command_sees_what_a_fresh_interpreter_gives_it(tmp_path, code):
    """tests/warm_start.py forks the commands of run_cli from a server that imported torch and Hydra: the module
    gets the same argv, working directory, sys.path, environment, __main__, stdout/stderr, atexit handlers and exit
    status as under a fresh `python -m`, and no module of this project comes from the server."""
    from tests import warm_start

    (tmp_path / "warm_probe.py").write_text(COMMAND)
    extra = tmp_path / "extra"
    extra.mkdir()
    env = {**os.environ, "ONLY_HERE": "yes", "EXTRA_PATH": str(extra), "PYTHONPATH": str(extra)}
    fresh = subprocess.run([sys.executable, "-m", "warm_probe", str(code), "a b"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    warm = warm_start.run("warm_probe", [str(code), "a b"], tmp_path, env, timeout=120)
    assert warm.returncode == fresh.returncode == code
    assert warm.stderr == fresh.stderr == "to stderr\n"
    assert warm.stdout.replace("torch imported True", "torch imported False") == fresh.stdout
    assert "spfde imported False" in warm.stdout and "atexit ran" in warm.stdout
    with pytest.raises(subprocess.TimeoutExpired):  # a timeout kills the child, as subprocess.run does
        warm_start.run("warm_probe", ["0"], tmp_path, {**env, "PYTHONPATH": f"{extra}"}, timeout=0)
