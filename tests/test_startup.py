"""The commands that do not train start without torch (nor torchvision or wandb): each runs in a fresh process that
says, as it exits, which modules of those packages it loaded. How fast they start is measured by
`spfde.bench.startup`, not here (timings are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spfde.bench.startup import copy_sweep, train_tiny_sweep
from spfde.results.runs import MethodFacts, method_facts, methods_from_source
from tests.helpers import REPO

HEAVY = ("torch", "torchvision", "wandb")
MARK = "heavy modules at exit: "
# runs the module as `python -m` does, then (however it ends: --help exits) prints the heavy modules it loaded
WRAPPER = f"""
import json, runpy, sys
module, sys.argv[1:] = sys.argv[1], sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print({MARK!r} + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})), file=sys.stderr)
"""
COMPLETION = {"COMP_LINE": "spfde-run sparsity=r", "COMP_POINT": "20"}  # what bash hands Hydra at a Tab


def run_module(module: str, args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python -m module args` in a fresh process, and the modules of torch, torchvision and wandb it loaded."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", **env})
    lines = [line for line in proc.stderr.splitlines() if line.startswith(MARK)]
    assert lines, f"the wrapper said nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc, json.loads(lines[-1][len(MARK):])


@pytest.mark.parametrize(("module", "args", "env", "says"), [
    ("spfde.status", ["--help"], {}, "usage: python -m spfde.status"),
    ("spfde.report", ["--help"], {}, "usage: python -m spfde.report"),
    ("spfde.dashboard", ["--help"], {}, "usage: python -m spfde.dashboard"),
    ("spfde.analyze", ["--help"], {}, "usage: python -m spfde.analyze"),
    ("spfde.plan", ["--help"], {}, "usage: python -m spfde.plan"),
    ("spfde.run", ["--help"], {}, "spfde-run (= python -m spfde.run)"),
    ("spfde.run", ["-sc", "query=bash"], COMPLETION, "sparsity=rigl"),
    ("spfde.bench", ["--help"], {}, "usage: python -m spfde.bench"),
], ids=["status", "report", "dashboard", "analyze", "plan", "run", "run-completion", "bench"])
def test_help_and_tab_completion_load_no_torch(tmp_path, module, args, env, says):
    proc, heavy = run_module(module, args, tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert says in proc.stdout
    assert heavy == []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep of 3 jobs copied from one tiny trained run (Hydra's multirun.yaml; the third without summary.json)."""
    folder = tmp_path_factory.mktemp("startup")
    return copy_sweep(train_tiny_sweep(folder), folder / "sweep", runs=3, partial_every=3)


@pytest.mark.slow  # trains the tiny run once (~20 s)
def test_status_and_report_of_a_sweep_load_no_torch(sweep, tmp_path):
    proc, heavy = run_module("spfde.status", [str(sweep)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep {sweep}: 3 jobs, basic launcher" in proc.stdout and "total: 2 finished, 1 stopped" in proc.stdout
    assert heavy == []
    proc, heavy = run_module("spfde.report", [str(sweep), "--out", str(tmp_path / "report")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs in 1 groups" in proc.stdout and "| MEST (EM&S) |" in proc.stdout  # the label, read without torch
    assert (tmp_path / "report" / "index.html").exists()
    assert heavy == []


def test_the_reports_method_facts_read_from_source_are_the_method_classes():
    """spfde.results.runs reads each method's label, uses_ratio and spfde_base from spfde/sparse's source (no torch);
    they must be what the classes say."""
    from spfde.sparse import METHODS

    classes = {name: MethodFacts(name, m.label, m.uses_ratio, m.spfde_base) for name, m in METHODS.items()}
    assert methods_from_source() == classes and method_facts() == classes
    assert list(methods_from_source()) == list(METHODS)  # in the registry's order


@pytest.mark.parametrize("task", [["epochs=10", "'freeze=0,0.2'", "launcher=slurm"],
                                  ["'freeze=0,0.2'", f"experiment_name={'long' * 40}"]], ids=["plain", "hashed"])
def test_the_job_list_without_resolving_each_subdir_is_the_one_omegaconf_resolves(tmp_path, monkeypatch, task):
    """spfde.results.status names the jobs of a sweep whose subdir is conf/config.yaml's with spfde.config.run_name
    directly (resolving the interpolation for each of 75 jobs took a second): the same names as OmegaConf gives."""
    import spfde.results.status as status
    from tests.results.test_status import MULTIRUN, make_sweep

    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "multirun.yaml").write_text(MULTIRUN.replace("task: [epochs=10, 'freeze=0,0.2', launcher=slurm]",
                                                          f"task: [{', '.join(task)}]"))
    direct = status.sweep_jobs(sweep)
    monkeypatch.setattr(status, "RUN_NAME_SUBDIR", "not this sweep's subdir")  # the general way: OmegaConf
    assert direct is not None and len(direct) == 4 and direct == status.sweep_jobs(sweep)
    assert all(len(name) <= 111 for name in direct)  # long names are cut and hashed (spfde.config.run_name)
