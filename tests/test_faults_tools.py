"""Faults tried from outside the project's own lists, around the tools that read run directories (report, status,
plan, calibration, dashboard) and around a run's edges (its run directory's files, a sweep whose every job fails,
SLURM refusing a job). Each test injects one fault; FAULTS in tests/test_faults.py names them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from spfde.rundir.checkpoint import RunDirError, atomic_write
from tests.helpers import REPO, lock_held_by_another_process, make_cfg, quick_overrides, run_cli, run_training
from tests.results.test_report import fake_run
from tests.test_faults import mounted_tmpfs, tiny

SMOKE = REPO / "docs" / "smoke" / "runs"


def report(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return run_cli([*map(str, args)], cwd=cwd, module="spfde.report", timeout=120)


def one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("spfde: error: ") and expected in lines[0], proc.stderr


# ----------------------------------------------------------------------------- reports


def two_runs(root: Path) -> list[Path]:
    return [fake_run(root, "a", ["seed=0"], acc=0.9, epochs=2), fake_run(root, "b", ["seed=1"], acc=0.8, epochs=2)]


@pytest.mark.slow
def test_a_report_stopped_while_writing_leaves_the_earlier_one_whole_and_a_new_one_keeps_nothing_stale(
        tmp_path, monkeypatch):
    import spfde.results.report

    runs = two_runs(tmp_path / "sweep")
    out = tmp_path / "report"
    spfde.results.report.main([str(tmp_path / "sweep"), "--out", str(out)])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {Path("timelines/a.png"), Path("timelines/b.png")} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    with monkeypatch.context() as m:
        m.setattr(spfde.results.report, "write_pareto", killed)
        with pytest.raises(KeyboardInterrupt):
            spfde.results.report.main([str(tmp_path / "sweep"), "--out", str(out)])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    import shutil

    shutil.rmtree(runs[1])  # run b is gone: the next report has no trace of it
    spfde.results.report.main([str(tmp_path / "sweep"), "--out", str(out)])
    assert sorted(p.name for p in (out / "timelines").glob("*.png")) == ["a.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []  # no staging folders left


@pytest.mark.slow
def test_a_report_on_a_full_or_read_only_disk_or_into_a_file_is_one_line(tmp_path):
    two_runs(tmp_path / "sweep")
    (tmp_path / "file").write_text("x")
    one_line(report(tmp_path / "sweep", "--out", tmp_path / "file"), "is a file, not a folder")
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not mounted_tmpfs(disk, "1m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        assert report(tmp_path / "sweep", "--out", disk / "report", "--no-timelines").returncode == 0
        earlier = (disk / "report" / "table.md").read_text()
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'fill'}", "bs=64k", "count=1000"], capture_output=True)
        full = report(tmp_path / "sweep", "--out", disk / "report")
        one_line(full, "cannot write the report in")
        assert "No space left" in full.stderr and (disk / "report" / "table.md").read_text() == earlier
        (disk / "fill").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        one_line(report(tmp_path / "sweep", "--out", disk / "report"), "Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("value, why", [("NaN", "final_acc is nan"), ("Infinity", "train_flops is inf"),
                                        ("-1", "train_flops is -1"), ("0", "train_flops is 0"),
                                        ("1.5", "final_acc is 1.5")])
def test_impossible_numbers_in_a_summary_are_damaged_and_left_out(tmp_path, value, why):
    good, bad = two_runs(tmp_path / "sweep")
    key = "final_acc" if why.startswith("final_acc") else "train_flops"
    text = (bad / "summary.json").read_text()
    (bad / "summary.json").write_text(text.replace(f'"{key}": {json.loads(text)[key]}', f'"{key}": {value}'))
    proc = report(tmp_path / "sweep", "--out", tmp_path / "out", "--no-timelines")
    assert proc.returncode == 0 and f"damaged: {bad / 'summary.json'} ({why}" in proc.stdout, proc.stdout
    assert "1 runs in 1 groups" in proc.stdout


@pytest.mark.slow
def test_runs_of_one_leaf_name_and_odd_names_get_their_own_timelines_and_working_links(tmp_path):
    import spfde.results.report

    fake_run(tmp_path / "x", "run", ["seed=0"], epochs=2)
    fake_run(tmp_path / "y", "run", ["seed=0", "optim.lr=0.05"], epochs=2)
    fake_run(tmp_path / "y", "a#b%20c\nd", ["seed=1"], epochs=2)
    odd = os.fsencode(str(tmp_path / "y")) + b"/bytes\xff"
    os.rename(os.fsencode(str(tmp_path / "y" / "a#b%20c\nd")), odd)
    out = tmp_path / "report"
    spfde.results.report.main([str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out)])
    names = sorted(p.name for p in (out / "timelines").glob("*.png"))
    assert names == ["x__run.png", "y__bytes_.png", "y__run.png"]
    page = (out / "index.html").read_text()
    for name in names:
        assert f'src="timelines/{name}"' in page
    assert "\ufffd" in (out / "runs.csv").read_text()  # the undecodable byte, shown, not a crash


# ----------------------------------------------------------------------------- plan and calibration


@pytest.mark.parametrize("seconds", [-223.0, float("nan"), 1e9])
def test_a_calibration_cache_with_impossible_times_is_ignored(tmp_path, seconds, caplog):
    from spfde.planning.calibrate import Cache

    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"version": 1, "entries": {"a|step@0": 0.05, "a|startup": seconds}}))
    with caplog.at_level("WARNING"):
        assert Cache(path).entries == {}
    assert "impossible time" in caplog.text


def test_a_calibration_that_cannot_be_saved_still_gives_its_plan(tmp_path, monkeypatch, caplog):
    import spfde.planning.calibrate
    from spfde.planning.calibrate import Cache

    def full_disk(path, value):
        raise RunDirError(f"disk full: could not write {path}")

    monkeypatch.setattr(spfde.planning.calibrate, "write_json", full_disk)
    with caplog.at_level("WARNING"):
        Cache(tmp_path / "cal.json").put({"k": 1.0})
    assert "measured but not saved" in caplog.text and not (tmp_path / "cal.json").exists()


@pytest.mark.slow
def test_plan_results_chooses_only_among_runs_of_the_plans_own_settings(tmp_path):
    from spfde.config import ConfigError
    from spfde.planning.budget import solve

    base = ["epochs=4"]
    for x, y, acc in ((0.0, 0.2, 0.9), (0.05, 0.2, 0.95)):
        fake_run(tmp_path, f"lr03-{x}-{y}", [*base, f"freeze={x}", f"sieve={y}", "optim.lr=0.3"], acc=acc)
    plan = make_cfg(quick_overrides(*base, "plan.budget=0.95", f"plan.results={tmp_path}"))
    with pytest.raises(ConfigError, match=r"no finished run of this configuration: .*optim.lr=0.3 there, 0.1 here"):
        solve(plan, quick_overrides(*base, "plan.budget=0.95", f"plan.results={tmp_path}"))
    fake_run(tmp_path, "own", [*base, "freeze=0", "sieve=0.2"], acc=0.5)
    answer = solve(plan, quick_overrides(*base, "plan.budget=0.95", f"plan.results={tmp_path}"))
    assert answer["choice"]["acc_mean"] == 0.5 and answer["choice"]["skipped_configurations"] == 2
    assert "optim.lr" not in answer["choice"]["command"]  # the command is the runs' own configuration


def test_atomic_writes_name_torchs_full_disk_and_survive_a_directory_turned_read_only(tmp_path, monkeypatch):
    def torch_full(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    with pytest.raises(RunDirError, match="could not write .*last.pt: .*unexpected pos.*nothing was written"):
        atomic_write(tmp_path / "last.pt", torch_full)

    def read_only(tmp):
        raise OSError(30, "Read-only file system")

    def unlink(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(RunDirError, match="Read-only file system"):
        atomic_write(tmp_path / "cal.json", read_only)


# ----------------------------------------------------------------------------- status


def test_status_does_not_take_a_run_dated_in_the_future_for_one_starting(tmp_path):
    from spfde.results.status import sweep_status

    run = tmp_path / "sweep" / "seed=0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("epochs: 5\n")
    future = time.time() + 3600
    os.utime(run / "config.yaml", (future, future))
    (job,) = sweep_status(tmp_path / "sweep")["jobs"]
    assert job["state"] == "stopped" and job["eta_s"] is None


@pytest.mark.slow
def test_a_refused_second_launch_leaves_the_holders_log_alone(tmp_path):
    from spfde.results.status import sweep_status

    run = tmp_path / "sweep" / "job0"
    run.mkdir(parents=True)
    (run / "run.log").write_text("[2026-01-01 00:00:00,000][spfde][INFO] - epoch 1/2 | acc 0.5\n")
    (run / "config.yaml").write_text("epochs: 2\n")
    with lock_held_by_another_process(run):
        refused = run_cli([*tiny("epochs=2", "logger=none", "progress=false"), f"hydra.run.dir={run}"], cwd=tmp_path)
        assert refused.returncode == 2 and "is in use by" in refused.stderr
    assert "in use" not in (run / "run.log").read_text()
    hour_ago = time.time() - 3600
    for path in [run, *run.rglob("*")]:
        os.utime(path, (hour_ago, hour_ago))  # as later, when nobody looked in the meantime
    (job,) = sweep_status(tmp_path / "sweep")["jobs"]
    assert job["state"] == "stopped"  # resumable, not "failed" with the refusal's line


# ----------------------------------------------------------------------------- a run's files and data


@pytest.mark.slow
@pytest.mark.whole_machine
def test_fifos_in_place_of_a_runs_files_are_one_line_never_a_hang(tmp_path):
    from spfde.report import main as report_main
    from spfde.results.status import sweep_status

    run = tmp_path / "sweep" / "job0"
    run_training(tiny("epochs=1"), run)
    for name in ("last.pt", "summary.json"):
        (run / name).rename(run / f"{name}.real")
        os.mkfifo(run / name)
        proc = run_cli([*tiny("epochs=1", "logger=none", "progress=false"), f"hydra.run.dir={run}"], cwd=tmp_path,
                       timeout=60)
        one_line(proc, f"{run / name} is a FIFO, not a regular file")
        (job,) = sweep_status(tmp_path / "sweep")["jobs"]
        assert job["state"] == "damaged" and "FIFO" in job["detail"]
        (run / name).unlink()
        (run / f"{name}.real").rename(run / name)
    os.mkfifo(run / "metrics.jsonl.fifo")
    (run / "metrics.jsonl").unlink()
    os.rename(run / "metrics.jsonl.fifo", run / "metrics.jsonl")
    with pytest.raises(SystemExit):  # the only run is left out, named: no report, no hang
        report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")])


def test_an_image_folder_with_a_symlink_loop_trains_on_what_the_plan_counts(tmp_path):
    from spfde.planning.plan import build_plan
    from spfde.training.build import build_run
    from tests.data.test_folders import write_folder

    root = write_folder(tmp_path / "f", size=(12, 12), classes=2, per_class=8)
    (root / "train" / "c0" / "loop").symlink_to(root / "train" / "c0", target_is_directory=True)
    overrides = ["experiment=quickstart", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8",
                 "dataset.workers=0", "model.depth=8", "batch_size=4", "epochs=1"]
    planned = build_plan(make_cfg(overrides))["train_size"]
    run = build_run(make_cfg(overrides, tmp_path / "run"), tmp_path / "run")
    assert planned == run.data.train.dataset_size == 16


def test_a_failed_cifar_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    from spfde.data import DataError
    from spfde.data.sources import load_cifar

    def offline(self):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="download failed"):
        load_cifar(make_cfg(["dataset=cifar10", f"dataset.root={tmp_path}/data/cifar"]).dataset)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_fresh_archives_the_earlier_run_log_too(tmp_path):
    run = tmp_path / "run"
    args = [*tiny("epochs=1", "logger=none", "progress=false"), f"hydra.run.dir={run}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    first = (run / "run.log").read_text()
    assert run_cli([*args, "fresh=true"], cwd=tmp_path).returncode == 0
    (archive,) = run.glob("previous-*")
    assert (archive / "run.log").read_text().startswith(first)
    assert first not in (run / "run.log").read_text() and "epoch 1/1" in (run / "run.log").read_text()


def test_analysis_snapshots_keep_half_a_float32_gram_and_give_the_same_cka(tmp_path):
    import torch

    from spfde.analysis.measures import gram, linear_cka, pack_gram, unpack_gram

    x, y = torch.randn(64, 30, dtype=torch.float64), torch.randn(64, 20, dtype=torch.float64)
    packed = pack_gram(gram(x))
    assert packed.dtype == torch.float32 and packed.numel() == 64 * 65 // 2
    assert torch.allclose(unpack_gram(packed), gram(x), rtol=1e-6)
    assert linear_cka(unpack_gram(packed), gram(y)) == pytest.approx(linear_cka(gram(x), gram(y)), rel=1e-5)
    assert torch.equal(unpack_gram(gram(x)), gram(x))  # a full matrix of an older snapshot, as it was
    run_training(tiny("epochs=1", "analysis.every=1"), tmp_path)
    (snapshot,) = (tmp_path / "analysis").glob("epoch_*.pt")
    grams = torch.load(snapshot, weights_only=True)["grams"]
    assert grams and all(g.dtype == torch.float32 and g.dim() == 1 for g in grams)  # a quarter of float64 matrices


# ----------------------------------------------------------------------------- sweeps, dashboards


@pytest.mark.slow
def test_a_sweep_whose_every_job_fails_exits_2_with_the_count(tmp_path):
    proc = run_cli(["-m", *tiny("logger=none", "progress=false"), "optim.lr=1e30,1e31",
                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "spfde: error: 2 of the sweep's 2 jobs failed and none finished (first: training diverged" in \
        proc.stderr.strip().splitlines()[-1]


def test_a_dashboard_of_a_broken_multirun_yaml_is_one_line(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra: [unclosed\n")
    one_line(run_cli([str(tmp_path)], cwd=tmp_path, module="spfde.dashboard"), "cannot be read as Hydra's record")
    (tmp_path / "multirun.yaml").write_text("a: 1\n")
    one_line(run_cli([str(tmp_path)], cwd=tmp_path, module="spfde.dashboard"), "cannot be read as Hydra's record")


@pytest.mark.parametrize("args", [["--cfg", "job"], ["-c", "job"], ["--cfg", "hydra"], ["--info", "config"]])
def test_hydras_own_flags_with_a_value_are_hydras(tmp_path, args):
    proc = run_cli([*args, "experiment=quickstart"], cwd=tmp_path)
    assert proc.returncode == 0 and "spfde: error" not in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists() and ("quickstart" in proc.stdout or "hydra:" in proc.stdout)


def test_wandb_online_without_a_network_is_one_line_in_seconds(monkeypatch):
    import socket

    from spfde.checks.validation import check_before_work, wandb_online_problem
    from spfde.config import ConfigError

    def unreachable(address, timeout=None):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    wandb_online_problem.cache_clear()
    try:
        with pytest.raises(ConfigError, match="api.wandb.ai cannot be reached .*keep logger.mode=offline"):
            check_before_work(make_cfg(tiny("logger=wandb", "logger.mode=online")), data=False)
    finally:
        wandb_online_problem.cache_clear()
