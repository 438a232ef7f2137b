"""`spfde.results.status`: one row per job of a sweep in every state, from run directories written by hand (no
training), plus one real basic-launcher sweep. The SLURM test (a job cancelled mid-run) is in
tests/sweeps/test_sweeps.py, next to the cluster fixture."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest

from spfde.results.status import main, sweep_status
from spfde.rundir.lifecycle import lock_run_dir, release_run_dir
from spfde.status import main as status_command  # the command: a user's error is one line and exit status 2
from tests.helpers import run_cli

# what Hydra saves as <sweep dir>/multirun.yaml, cut to what the job list needs: a preset's params (seed) come
# before the command line's overrides; `launcher` is left out of run directory names
MULTIRUN = """\
hydra:
  sweep: {dir: unused, subdir: '${spfde_run_name:${hydra.job.override_dirname}}'}
  launcher: {_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher}
  sweeper: {_target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper, max_batch_size: null,
            params: {seed: '0,1'}}
  overrides: {hydra: [], task: [epochs=10, 'freeze=0,0.2', launcher=slurm]}
  job: {config: {override_dirname: {kv_sep: '=', item_sep: ',', exclude_keys: [launcher]}}}
"""
# the jobs in Hydra's order: seed (the params) varies slowest
JOBS = ["epochs=10,freeze=0,seed=0", "epochs=10,freeze=0.2,seed=0", "epochs=10,freeze=0,seed=1",
        "epochs=10,freeze=0.2,seed=1"]


def make_sweep(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(MULTIRUN)
    return root


def make_run(sweep: Path, name: str, epochs_done: int = 0, epochs: int = 10, epoch_s: float = 10.0,
             summary: dict | str | None = None, log: str = "") -> Path:
    """A run directory as spfde.run leaves it: config.yaml, metrics.jsonl (one line per finished epoch, with its
    times), last.pt once an epoch is done, run.log, and summary.json when given."""
    run = sweep / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed: 0\nepochs: {epochs}\n")
    if epochs_done:
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "test/acc": 0.5, "time/epoch_s": epoch_s, "time/elapsed_s": e * epoch_s}) + "\n"
            for e in range(1, epochs_done + 1)))
        (run / "last.pt").write_bytes(b"not read by spfde.results.status")
    if log:
        (run / "run.log").write_text(log)
    if summary is not None:
        (run / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return run


def age(run: Path, seconds: float) -> None:
    """Make every file of the run directory (and the directory) `seconds` old."""
    when = time.time() - seconds
    for p in [run, *run.rglob("*")]:
        os.utime(p, (when, when))


def rows_by_run(sweep: Path) -> dict[str, dict]:
    return {r["run"]: r for r in sweep_status(sweep)["jobs"]}


def test_finished_damaged_and_not_started_jobs(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    make_run(sweep, JOBS[0], 10, summary={"final_acc": 0.91, "train_flops": 1e12, "epochs": 10, "train_time_s": 100.0})
    make_run(sweep, JOBS[1], 10, summary="{}")
    make_run(sweep, JOBS[2], 10, summary='{"final_acc": "high", "train_flops": 1}')
    status = sweep_status(sweep)
    rows = {r["run"]: r for r in status["jobs"]}
    assert [r["run"] for r in status["jobs"]] == JOBS and status["job_list"] and status["launcher"] == "slurm"
    assert rows[JOBS[0]]["state"] == "finished" and rows[JOBS[0]]["final_acc"] == 0.91
    assert rows[JOBS[1]]["state"] == "damaged" and rows[JOBS[1]]["detail"].startswith("summary.json: no final_acc")
    assert rows[JOBS[2]]["state"] == "damaged" and "final_acc is 'high'" in rows[JOBS[2]]["detail"]
    assert rows[JOBS[3]]["state"] == "not started"
    assert status["totals"] == {"finished": 1, "damaged": 2, "not started": 1}
    assert status["eta"]["eta_s"] is None and status["eta"]["how"] == "no job is training now"


def test_a_locked_run_is_training_with_its_epoch_and_eta_and_the_sweep_eta_counts_the_jobs_waiting(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    make_run(sweep, JOBS[0], 10, summary={"final_acc": 0.9, "train_flops": 1e12, "train_time_s": 100.0})
    training = make_run(sweep, JOBS[1], 2, epoch_s=10.0)  # its metrics were just written: 8 epochs of 10 s left
    lock_run_dir(training)  # as its process would (a second open file description: the probe sees it held)
    try:
        status = sweep_status(sweep)
    finally:
        release_run_dir(training)
    row = next(r for r in status["jobs"] if r["run"] == JOBS[1])
    assert row["state"] == "training" and (row["epoch"], row["epochs"]) == (2, 10)
    assert 79 <= row["eta_s"] <= 80
    # left: 80 s of the training run + 2 jobs not started at the mean run (100 s finished, 100 s projected)
    eta = status["eta"]
    assert eta["parallel"] == 1 and eta["waiting"] == 2 and eta["mean_run_s"] == 100.0
    assert 279 <= eta["work_left_s"] <= 280 and eta["eta_s"] == eta["work_left_s"]
    assert sweep_status(sweep)["jobs"][1]["state"] == "stopped"  # the lock was released: nobody trains it


def test_an_unlocked_run_without_summary_is_stopped_with_its_last_epoch_and_why(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    stop = "stopped by SIGTERM after epoch 3; resume with the same command"
    make_run(sweep, JOBS[0], 3, log=f"[t][spfde][INFO] - epoch 3/10  train loss 1.0\n[t][spfde][WARNING] - {stop}\n")
    make_run(sweep, JOBS[1], 4)  # killed -9: nothing said
    rows = rows_by_run(sweep)
    assert rows[JOBS[0]]["state"] == "stopped" and rows[JOBS[0]]["epoch"] == 3
    assert rows[JOBS[0]]["detail"] == stop
    assert rows[JOBS[1]]["state"] == "stopped" and rows[JOBS[1]]["detail"] is None and rows[JOBS[1]]["eta_s"] is None


def test_a_fresh_directory_without_lock_or_epoch_is_starting_then_stopped_once_old(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    run = make_run(sweep, JOBS[0])  # Hydra made it; the process has not taken the lock yet
    assert rows_by_run(sweep)[JOBS[0]]["state"] == "starting"
    age(run, 3600)
    assert rows_by_run(sweep)[JOBS[0]]["state"] == "stopped"


TRACEBACK = """[t][spfde][ERROR] - spfde: unexpected error
Traceback (most recent call last):
  File "spfde/run.py", line 50, in main
    summary = train(cfg)
RuntimeError: CUDA error: an illegal memory access was encountered
"""


def test_failed_runs_show_the_error_line_of_their_last_launch(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    diverged = "spfde: error: training diverged in epoch 1 (train/loss nan) with optim.lr=1e9: stopped"
    make_run(sweep, JOBS[0], log=f"[t][spfde][INFO] - run dir x | resnet32\n[t][spfde][ERROR] - {diverged}\n")
    make_run(sweep, JOBS[1], 2, log="[t][spfde][INFO] - epoch 2/10  train loss 1.0\n" + TRACEBACK)
    # an earlier launch failed; the relaunch resumed and was then killed: stopped, not failed
    make_run(sweep, JOBS[2], 5, log="[t][spfde][ERROR] - spfde: error: data missing\n"
                                    "[t][spfde][INFO] - resuming /x after epoch 3\n[t][spfde][INFO] - epoch 5/10 ...\n")
    rows = rows_by_run(sweep)
    assert rows[JOBS[0]]["state"] == "failed"
    assert rows[JOBS[0]]["detail"] == diverged
    assert rows[JOBS[1]]["state"] == "failed" and (rows[JOBS[1]]["epoch"], rows[JOBS[1]]["epochs"]) == (2, 10)
    assert rows[JOBS[1]]["detail"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert rows[JOBS[2]]["state"] == "stopped"


def test_submitit_logs_give_the_job_id_and_errors_and_no_pickle_is_ever_loaded(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    cancelled = make_run(sweep, JOBS[0], 2)
    jobs = sweep / ".submitit"
    (jobs / "7_0").mkdir(parents=True)  # matched by the run dir it logged
    (jobs / "7_0" / "7_0_0_log.out").write_text(f"[t][spfde][INFO] - run dir {cancelled} | resnet32 on digits\n")
    (jobs / "7_0" / "7_0_0_log.err").write_text("slurmstepd-vm: error: *** STEP 7.0 ON vm CANCELLED AT 2026-01-01 ***\n"
                                                "srun: error: vm: task 0: Killed\n")
    (jobs / "7_3").mkdir()  # died before Hydra made its run directory: matched by its array task index (job 3)
    (jobs / "7_3" / "7_3_0_log.err").write_text("Traceback (most recent call last):\n  File \"x\", line 1\n"
                                                "ModuleNotFoundError: No module named 'torch'\n")
    marker = tmp_path / "pickle-ran"  # a result file that would run code if it were unpickled
    (jobs / "7_3" / "7_3_0_result.pkl").write_bytes(pickle.dumps(Runs(marker)))
    make_run(sweep, JOBS[2])  # a fresh directory without epochs whose job has ended (a result file): not starting
    (jobs / "7_2").mkdir()
    (jobs / "7_2" / "7_2_0_result.pkl").write_bytes(pickle.dumps(Runs(marker)))
    (jobs / "7_1").mkdir()  # submitted, not started (no logs yet)
    (jobs / "7_1" / "7_1_submitted.pkl").write_bytes(pickle.dumps(Runs(marker)))
    rows = rows_by_run(sweep)
    assert rows[JOBS[0]]["state"] == "stopped" and rows[JOBS[0]]["job_id"] == "7_0"
    assert rows[JOBS[0]]["detail"] == "slurmstepd-vm: error: *** STEP 7.0 ON vm CANCELLED AT 2026-01-01 ***"
    assert rows[JOBS[3]]["state"] == "failed" and rows[JOBS[3]]["job_id"] == "7_3"
    assert rows[JOBS[3]]["detail"] == "ModuleNotFoundError: No module named 'torch'"
    assert rows[JOBS[1]]["state"] == "not started" and rows[JOBS[1]]["job_id"] == "7_1"
    assert rows[JOBS[2]]["state"] == "stopped" and rows[JOBS[2]]["job_id"] == "7_2"
    assert not marker.exists()


class Runs:
    """Unpickling this touches a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_run_directories_without_a_job_list_and_the_cli_text_and_json(tmp_path, capsys):
    sweep = tmp_path / "sweep"  # no multirun.yaml: rows come from the run directories
    make_run(sweep, "a", 10, summary={"final_acc": 0.875, "train_flops": 1e12})
    make_run(sweep, "b", 3, log="[t][spfde][ERROR] - spfde: error: could not write last.pt: disk full\n")
    main([str(sweep)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"sweep {sweep}: 2 jobs (job list unknown: no usable multirun.yaml; run directories only)"
    assert out[2].split() == ["finished", "acc", "0.8750", "-", "a"]
    assert out[3].split() == ["failed", "after", "epoch", "3/10", "-", "b"]
    assert out[4].strip() == "spfde: error: could not write last.pt: disk full"
    assert out[5] == "total: 1 finished, 1 failed" and out[6] == "ETA: none, no job is training now"
    main([str(sweep), "--json"])
    status = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["state"]) for r in status["jobs"]] == [("a", "finished"), ("b", "failed")]
    assert status["totals"] == {"finished": 1, "failed": 1} and status["eta"]["eta_s"] is None


def test_a_name_resolves_under_outputs_and_a_bad_one_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_run(make_sweep(tmp_path / "outputs" / "sweeps" / "grid"), JOBS[0])
    make_run(tmp_path / "outputs" / "multirun" / "2026-01-02_10-00-00", "r", summary={"final_acc": 1, "train_flops": 1})
    make_run(tmp_path / "outputs" / "multirun" / "2026-01-02_11-00-00", "r", summary={"final_acc": 1, "train_flops": 1})
    main(["grid", "--json"])
    assert json.loads(capsys.readouterr().out)["sweep_dir"] == "outputs/sweeps/grid"
    main(["2026-01-02_10", "--json"])  # the one multirun directory it starts
    assert json.loads(capsys.readouterr().out)["sweep_dir"] == "outputs/multirun/2026-01-02_10-00-00"
    for target, says in (("2026-01-02", "names 2 sweeps"), ("nope", "no sweep 'nope'"),
                         (str(tmp_path / "missing"), "not a directory")):
        with pytest.raises(SystemExit) as exit_info:
            status_command([target])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("spfde: error: ") and says in err
        assert len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        status_command(["empty"])
    assert "holds no sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_status_of_a_real_basic_launcher_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "experiment=quickstart", "model.depth=8", "epochs=1", "logger=none", "seed=0,1",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = sweep_status(sweep)
    names = [f"epochs=1,experiment=quickstart,model.depth=8,seed={seed}" for seed in (0, 1)]
    assert status["launcher"] == "basic" and [r["run"] for r in status["jobs"]] == names  # Hydra's names, in order
    for row in status["jobs"]:
        summary = json.loads((sweep / row["run"] / "summary.json").read_text())
        assert row["state"] == "finished" and row["final_acc"] == summary["final_acc"] and row["epoch"] == 1
    (sweep / names[1] / "summary.json").unlink()  # as if killed in its last write: stopped after its epoch
    main([str(sweep)])
    out = capsys.readouterr().out
    assert out.splitlines()[3].split()[:4] == ["stopped", "after", "epoch", "1/1"]
    assert "total: 1 finished, 1 stopped; relaunch the same sweep command to resume the 1 stopped" in out
