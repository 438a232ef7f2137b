"""An installable package: the wheel carries the configs and the console scripts; installed outside the
checkout it runs the quickstart from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

TOP_LEVEL_SKIP = {".git", ".venv", "outputs", "data", "wandb", "build", "dist", ".pytest_cache", ".ruff_cache"}


def skip(directory: str, names: list[str]) -> set[str]:
    """What the copy of the checkout leaves out: run outputs and environments at the top, caches anywhere."""
    top = TOP_LEVEL_SKIP if Path(directory) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


def sh(args: list, cwd: Path, **env) -> subprocess.CompletedProcess:
    # no PYTHONPATH: the installed package, not the checkout, must answer
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, "WANDB_MODE": "offline", **env})
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_the_quickstart(tmp_path):
    import torch

    source = tmp_path / "src"  # a copy, so that building leaves the checkout clean
    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    before = set(source.iterdir())
    # built as the README says (`pip wheel --no-deps .` in the checkout): whatever it leaves there, the wheel
    # included, is ignored by git
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "."], cwd=source)
    for left in set(source.iterdir()) - before:
        name = left.name + ("/" if left.is_dir() else "")
        ignored = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", "--no-index", name])
        assert ignored.returncode == 0, f"pip wheel leaves {name} in the checkout and git does not ignore it"
    (wheel,) = source.glob("spfde-*.whl")
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip()
    # reuse the installed dependencies (torch, hydra, wandb, ...) instead of downloading them again
    Path(site, "_deps.pth").write_text(str(Path(torch.__file__).parent.parent) + "\n")
    sh([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = sh([python, "-c", "import spfde.config as c; print(c.__file__, c.CONF_DIR)"], cwd=elsewhere).stdout
    assert str(venv) in where and str(REPO) not in where  # the wheel's code and its packaged configs
    bin_dir = venv / "bin"
    for script in ("spfde-run", "spfde-plan", "spfde-report", "spfde-analyze", "spfde-dashboard", "spfde-status"):
        assert (bin_dir / script).exists(), script
    # the user's own configs (SPFDE_CONFIG_DIR) work with the installed wheel: the precheck and the run see the
    # launcher (it changes nothing in a single run, and not the run directory's name)
    user_config = tmp_path / "my-config"
    shutil.copytree(REPO / "docs" / "config", user_config)
    cluster = sh([bin_dir / "spfde-run", "launcher=mycluster", "--cfg=hydra", "--package=hydra.launcher"],
                 cwd=elsewhere, SPFDE_CONFIG_DIR=user_config).stdout
    assert "partition: gpu" in cluster and "account: myproj" in cluster and "SlurmLauncher" in cluster
    run = sh([bin_dir / "spfde-run", "experiment=quickstart", "model.depth=8", "epochs=1", "logger=none",
              "progress=false", "launcher=mycluster"], cwd=elsewhere, SPFDE_CONFIG_DIR=user_config)
    assert "done: test acc" in run.stdout + run.stderr
    run_dir = elsewhere / "outputs" / "runs" / "epochs=1,experiment=quickstart,model.depth=8"
    assert (run_dir / "summary.json").exists()
    assert "total: 1 finished" in sh([bin_dir / "spfde-status", "outputs/runs"], cwd=elsewhere).stdout
    assert "4 jobs" in sh([bin_dir / "spfde-plan", "-m", "+sweep=smoke"], cwd=elsewhere).stdout  # sweeps shipped
    sh([bin_dir / "spfde-dashboard", "smoke"], cwd=elsewhere)
    assert (elsewhere / "outputs" / "sweeps" / "smoke" / "dashboard.json").exists()
    completion = sh([bin_dir / "spfde-run", "-sc", "query=bash"], cwd=elsewhere, COMP_LINE="spfde-run sparsity=r",
                    COMP_POINT="21")  # Hydra's tab completion works for the console script
    assert "sparsity=rigl" in completion.stdout
