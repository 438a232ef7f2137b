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
