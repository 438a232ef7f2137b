"""The command line as a user meets it: tab completion answers without loading torch, --help says what
`dataset_recipe` is, a user config directory (SPFDE_CONFIG_DIR) adds launchers that every check sees, and the
README and Makefile commands of the set-up and the smoke sweep do what they say."""

from __future__ import annotations

import re
import subprocess

import pytest

from spfde.checks.command_line import precheck_overrides
from spfde.config import ConfigError, compose_config, group_options
from tests.helpers import REPO, run_cli

USER_CONFIG = REPO / "docs" / "config"  # holds launcher/mycluster.yaml, the README's example
HEAVY = ("torch", "wandb", "torchvision", "matplotlib", "spfde.training.loop", "spfde.data")


def test_tab_completion_imports_no_torch(tmp_path, monkeypatch):
    """Hydra's completion (`eval "$(spfde-run -sc install=bash)"`, then Tab) runs `spfde-run -sc query=bash` with the
    partial line in COMP_LINE at every Tab: it answers from the config alone, without torch, wandb or the training
    modules (which took ~5 s a Tab)."""
    monkeypatch.setenv("COMP_LINE", "spfde-run sparsity=r")
    monkeypatch.setenv("COMP_POINT", "20")
    proc = run_cli(["-sc", "query=bash"], cwd=tmp_path, python_flags=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["sparsity=rigl"]
    # -X importtime: one stderr line per imported module, "import time: self | cumulative | <indent>name"
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not {m for m in imported if m.startswith(HEAVY)}


@pytest.mark.slow
def test_help_says_that_dataset_recipe_is_not_a_choice_and_shows_only_keys_that_apply(tmp_path):
    """The page lists every group and prints the composed config without the `???` options of the sparse
    methods that are not selected (MEST by default): only its own sub-config is left under `sparsity`."""
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert re.search(r"^dataset_recipe: imagenet$", groups, re.M)
    assert re.search(r"^sparsity: deepr, dense, .*rigl, .*$", groups, re.M)
    assert "(dataset_recipe is not a choice: the data set picks it" in groups
    assert proc.stdout.startswith("spfde-run (= python -m spfde.run)")
    config = proc.stdout.split("== Config ==")[1]
    assert "???" not in config
    assert "sparsity:\n  name: mest\n" in config and "  mest:\n    mode: ems\n" in config
    assert not re.search(r"^  (rigl|set|snip|grasp|itop|deepr|dsr|snfs):$", config, re.M)
    assert "\nrun_dir: ${hydra:runtime.output_dir}\n" in config  # interpolations print as written


@pytest.mark.slow  # the checks build the model on the meta device: ~1 s in the suite, ~9 s alone (imports)
def test_a_user_config_dir_adds_a_launcher_that_the_checks_see(monkeypatch):
    """launcher=mycluster from $SPFDE_CONFIG_DIR composes (on top of conf/launcher/slurm.yaml) and passes the
    precheck of a run and of a sweep; so does `hydra.searchpath=[file://...]` on the command line."""
    run = ["experiment=quickstart", "model.depth=8", "launcher=mycluster"]
    with pytest.raises(ConfigError, match="launcher=mycluster is not an option of 'launcher'"):
        precheck_overrides(run)
    precheck_overrides([*run, f"hydra.searchpath=[file://{USER_CONFIG}]"])

    monkeypatch.setenv("SPFDE_CONFIG_DIR", str(USER_CONFIG))
    launcher = compose_config(["launcher=mycluster"], with_hydra=True).hydra.launcher
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "myproj", 1440)
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout == 20  # from slurm.yaml
    assert group_options("launcher") == ["local", "mycluster", "slurm"]
    precheck_overrides(run)
    precheck_overrides(["-m", *run])  # a sweep's jobs are checked the same way

    monkeypatch.setenv("SPFDE_CONFIG_DIR", str(USER_CONFIG / "no-such-dir"))
    with pytest.raises(ConfigError, match="SPFDE_CONFIG_DIR=.*no-such-dir is not a directory"):
        precheck_overrides(["experiment=quickstart"])


def test_a_user_sweep_preset_gets_a_dashboard(tmp_path, monkeypatch):
    from spfde.results.dashboard import sweep_info

    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /experiment: quickstart\n"
        "hydra:\n  sweep:\n    dir: outputs/sweeps/mine\n  sweeper:\n    params:\n      freeze: 0,0.1,0.2\n")
    monkeypatch.setenv("SPFDE_CONFIG_DIR", str(tmp_path / "conf"))
    info = sweep_info("mine")
    assert (info["group"], info["runs"], info["varies"]) == ("mine", 3, {"freeze": ["0", "0.1", "0.2"]})


def test_the_readme_set_up_says_to_activate_the_environment():
    setup = (REPO / "README.md").read_text().split("## Set-up")[1].split("\n## ")[0]
    assert "make install" in setup and "make test" in setup
    assert setup.count("source .venv/bin/activate") == 1


def test_make_sweep_smoke_runs_the_sweep_once_and_prints_its_report_once():
    """The after-sweep callback writes and prints the report; the target runs nothing else (it ran the report
    a second time). The preset logs to wandb (offline): its README dashboard filters on its runs."""
    dry = subprocess.run(["make", "-n", "sweep-smoke", "PY=python"], cwd=REPO, capture_output=True, text=True)
    commands = [line for line in dry.stdout.splitlines() if "spfde." in line]
    assert commands == ["python -m spfde.run -m +sweep=smoke launcher=local"], dry.stdout
    cfg = compose_config(["+sweep=smoke", "launcher=local"], with_hydra=True)
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert "ReportAfterSweep" in cfg.hydra.callbacks.report._target_
