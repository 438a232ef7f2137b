"""Feedback while it runs: the epoch line, the start-of-run plan, `spfde.planning.plan --help` and `-m`, ad-hoc sweep
directories, the report after a sweep and SLURM job names."""

from __future__ import annotations

import logging
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spfde.config import CONF_DIR, register_configs, register_resolvers
from spfde.plan import main as plan_main
from spfde.planning.plan import build_plan
from spfde.run import adhoc_sweep_dir
from spfde.training.freeze import FreezePlan
from spfde.training.log import RunLogger, format_epoch
from tests.helpers import make_cfg, quick_overrides, read_metrics, run_cli

RECORD = {"epoch": 3, "train/loss": 1.0, "train/acc": 0.5, "test/loss": 1.1, "test/acc": 0.4, "test/best_acc": 0.45,
          "sparsity/overall": 0.9, "flops/epoch": 1e9, "lr": 0.01, "time/epoch_s": 10.0, "time/samples_per_s": 100.0,
          "time/elapsed_s": 30.0, "freeze/frozen_blocks": 2, "sieve/partial_size": 1150}


def test_epoch_line_shows_frozen_blocks_partial_set_and_eta():
    line = format_epoch(RECORD, 10, blocks=5, dataset_size=1437)
    assert "frozen 2/5 blocks" in line and "data 1150/1437" in line and line.endswith("ETA 1m10s")  # 7 x 10 s
    unsieved = {k: v for k, v in RECORD.items() if not k.startswith("sieve/")}
    assert "data 1437/1437" in format_epoch(unsieved, 10, blocks=5, dataset_size=1437)


def test_run_start_prints_the_freeze_plan_and_the_sieve_setting(tmp_path, caplog):
    cfg = make_cfg(quick_overrides("freeze=0.2", "sieve=0.2", "sieve_update=0.1"))
    plan = FreezePlan(scheme="single_shot", candidates=3, frozen=[0, 1], parameter=7, saving=0.2043)
    with caplog.at_level(logging.INFO, logger="spfde"):
        RunLogger(cfg, tmp_path, "id").start(cfg, 5, plan, 1437)
    text = caplog.text
    assert "single_shot" in text and "T_frz = epoch 7" in text and "planned saving 0.2043" in text
    assert "circular" in text and "partial set of 1150 of 1437 samples" in text


def test_plan_help_prints_help(capsys):
    plan_main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "-m" in out


@pytest.mark.slow
def test_plan_of_a_sweep_prints_job_count_and_total(capsys):
    plan_main(["-m", "+sweep=smoke", "seed=0,1"])
    out = capsys.readouterr().out
    assert "8 jobs (4 configurations, 2 seeds each)" in out
    expected = 2 * sum(build_plan(make_cfg(["+sweep=smoke", f"freeze={x}", f"sieve={y}"]))["train_flops"]
                       for x in (0, 0.1) for y in (0, 0.2))
    total = float(re.search(r"total planned training FLOPs (\S+)", out).group(1))
    assert total == pytest.approx(expected, rel=1e-3)


def test_adhoc_sweeps_get_a_directory_named_after_their_overrides():
    args = ["-m", "experiment=quickstart", "seed=0,1", "launcher=local", "progress=false", "epochs=1"]
    assert adhoc_sweep_dir(args) == "outputs/sweeps/epochs=1,experiment=quickstart,seed=0,1"
    assert adhoc_sweep_dir(args[1:]) is None  # not a sweep
    assert adhoc_sweep_dir([*args, "+sweep=smoke"]) is None  # the preset names its directory
    assert adhoc_sweep_dir([*args, "hydra.sweep.dir=x"]) is None


def test_slurm_jobs_are_named_after_the_sweep():
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=grid_xy", "launcher=slurm"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.launcher.name") == "grid_xy"


@pytest.mark.slow
def test_adhoc_sweep_relaunches_into_its_directory_and_reports(tmp_path):
    args = ["-m", "experiment=quickstart", "model.depth=8", "epochs=1", "seed=0,1", "logger=none", "progress=false"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "epochs=1,experiment=quickstart,model.depth=8,seed=0,1"
    assert len(list(sweep_dir.glob("*/summary.json"))) == 2
    assert (sweep_dir / "report" / "table.md").exists() and "2 runs in 1 groups" in proc.stdout  # the callback
    assert "layer freezing: off" in proc.stdout + proc.stderr and "ETA" in proc.stdout + proc.stderr
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already finished") == 2
    assert all(len(read_metrics(p.parent)) == 1 for p in sweep_dir.glob("*/summary.json"))
