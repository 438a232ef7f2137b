"""Sweeps: every sweep file composes and expands as promised; the smoke sweep runs locally and through a
real single-node SLURM cluster (with a requeue); reports come out of a finished sweep."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spfde.checks.validation import validate
from spfde.config import CONF_DIR, register_configs, register_resolvers
from tests.helpers import NATIVE_DIGITS, REPO, read_metrics, run_cli

SWEEPS = {"smoke": 4, "grid_xy": 75, "table2": 99, "table3": 14, "freeze_schemes": 36, "sieve_methods": 27,
          "dst_compat": 18}


def sweep_params(name: str) -> dict:
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def compose_job(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweep_composes_and_expands_to_its_job_count(name):
    assert sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")) == sorted(SWEEPS)
    params = sweep_params(name)
    assert math.prod(len(v) for v in params.values()) == SWEEPS[name]
    # every job of the sweep (seeds aside) is a valid run
    keys = [k for k in params if k != "seed"]
    combos = [[]]
    for k in keys:
        combos = [c + [f"{k}={v}"] for c in combos for v in params[k]]
    for combo in combos:
        cfg = compose_job([f"+sweep={name}", *combo])
        validate(cfg)
        assert cfg.logger.group == name


def test_table_rows_set_the_paper_configurations():
    cfg = compose_job(["+sweep=table2", "+sweep/row=spfde_20_20", "sparsity.ratio=0.95"])
    assert (cfg.sparsity.name, cfg.sparsity.ratio, cfg.freeze, cfg.sieve, cfg.dataset.name, cfg.model.width) == \
        ("mest", 0.95, 0.2, 0.2, "cifar100", 2)
    cfg = compose_job(["+sweep=table3", "+sweep/row=itop"])  # as ITOP ran it (tests/sparse/test_reference.py)
    assert (cfg.sparsity.name, cfg.sparsity.ratio, cfg.dataset.name, cfg.batch_size) == ("itop", 0.8, "imagenet", 128)
    assert cfg.optim.lr == 0.1  # ITOP's lr for its global batch of 128, not scaled
    assert compose_job(["model=resnet50", "sparsity=itop"]).batch_size == 256  # the method alone keeps the recipe's


def test_mest_row_is_mest_with_its_one_shot_removal_and_em_s_has_its_own_row():
    cfg = compose_job(["+sweep=table2", "+sweep/row=mest"])
    assert (cfg.sparsity.name, cfg.sieve, cfg.sieve_method, cfg.freeze) == ("mest", 0.24, "oneshot", 0.0)
    assert int(cfg.sieve_oneshot_at * cfg.epochs) == 70  # MEST's --remove-data-epoch 70 of 160
    cfg = compose_job(["+sweep=table2", "+sweep/row=mest_ems"])
    assert (cfg.sparsity.name, cfg.sieve, cfg.freeze) == ("mest", 0.0, 0.0)


@pytest.mark.slow
def test_table3_baselines_run_the_epochs_of_their_published_flops():
    rows = sweep_params("table3")["+sweep/row"]
    epochs = {row: compose_job(["+sweep=table3", f"+sweep/row={row}"]).epochs for row in rows}
    baselines = ("dense", "snip", "grasp", "deepr", "snfs", "dsr", "set", "rigl")
    assert {r for r, e in epochs.items() if e == 102} == {f"{m}_102ep" for m in baselines}
    assert {e for r, e in epochs.items() if not r.endswith("_102ep") and r != "itop"} == {150}
    assert epochs["itop"] == 100  # ITOP's own ImageNet run


@pytest.mark.slow
def test_table_sweeps_use_the_paper_recipe_and_bf16_stays_the_default():
    for name in ("table2", "table3", "dst_compat"):
        assert compose_job([f"+sweep={name}"]).precision == "fp32", name
    assert compose_job([]).precision == "auto" and compose_job(["+sweep=grid_xy"]).precision == "auto"
    assert compose_job(["+recipe=paper"]).precision == "fp32"


@pytest.mark.slow
def test_dst_compat_runs_three_methods_with_and_without_spfde():
    params = sweep_params("dst_compat")
    jobs = set()
    for row in params["+sweep/row"]:
        cfg = compose_job(["+sweep=dst_compat", f"+sweep/row={row}"])
        assert cfg.sparsity.ratio == 0.9 and cfg.sieve_method == "circular"
        jobs.add((cfg.sparsity.name, cfg.freeze, cfg.sieve))
    assert jobs == {(m, x, x) for m in ("rigl", "set", "mest") for x in (0.0, 0.2)}
    assert params["seed"] == ["0", "1", "2"]


def test_launchers_compose():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        slurm = compose("config", overrides=["launcher=slurm"], return_hydra_config=True).hydra.launcher
        local = compose("config", overrides=["launcher=local"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.max_num_timeout > 0 and slurm.gpus_per_node == 1
    assert local._target_.endswith("LocalLauncher")


def summaries(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]


# the smoke preset on the digits' own 8x8 pixels (a quarter of the convolutions' work of its 16x16)
SMOKE = ["-m", "+sweep=smoke", NATIVE_DIGITS]


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    """The smoke sweep, run once with the local (submitit) launcher."""
    cwd = tmp_path_factory.mktemp("smoke")
    sweep_dir = cwd / "sweep"
    proc = run_cli([*SMOKE, "launcher=local", f"hydra.sweep.dir={sweep_dir}"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_smoke_sweep_runs_with_the_local_launcher(smoke_sweep):
    runs = summaries(smoke_sweep)
    assert len(runs) == 4 and all(r["final_acc"] > 0.3 for r in runs)
    names = sorted(p.parent.name for p in smoke_sweep.glob("*/summary.json"))
    jobs = ["freeze=0,sieve=0", "freeze=0,sieve=0.2", "freeze=0.1,sieve=0", "freeze=0.1,sieve=0.2"]
    assert names == [f"{NATIVE_DIGITS},{job}" for job in jobs]
    assert list((smoke_sweep / ".submitit").iterdir())  # jobs went through submitit
    assert "SpFDE 10%+20%" in (smoke_sweep / "report" / "table.md").read_text()  # the after-sweep callback
    # the preset logs to wandb (offline), so that the README's dashboard of it has runs to show
    assert all(list((smoke_sweep / name / "wandb").glob("offline-run-*")) for name in names)


@pytest.mark.slow
def test_status_of_the_local_launcher_smoke_sweep(smoke_sweep):
    """The preset's jobs in Hydra's order (each run's .hydra/hydra.yaml holds its job number), each with its
    submitit job id, all finished with their summary's accuracy. (Before the relaunch below, which writes the
    sweep's multirun.yaml again with Hydra's basic launcher.)"""
    from omegaconf import OmegaConf

    from spfde.results.status import sweep_status

    status = sweep_status(smoke_sweep)
    assert status["launcher"] == "submitit-local" and status["totals"] == {"finished": 4}
    for num, row in enumerate(status["jobs"]):
        run = smoke_sweep / row["run"]
        assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.job.num == num
        assert row["final_acc"] == json.loads((run / "summary.json").read_text())["final_acc"]
        assert (smoke_sweep / ".submitit" / row["job_id"]).is_dir()


@pytest.mark.slow
def test_relaunched_sweep_does_not_train_again(smoke_sweep):
    before = {p: p.read_text() for p in smoke_sweep.glob("*/metrics.jsonl")}
    proc = run_cli([*SMOKE, f"hydra.sweep.dir={smoke_sweep}"], cwd=smoke_sweep.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already finished") + proc.stderr.count("already finished") == 4
    assert {p: p.read_text() for p in smoke_sweep.glob("*/metrics.jsonl")} == before


@pytest.mark.slow
def test_after_sweep_report_leaves_timelines_out_and_says_how_to_draw_them(tmp_path, caplog):
    """Timelines cost ~0.8 s a run against ~1.5 s for the rest of the smoke report (4 runs): the callback leaves
    them out and its log line gives the command that draws them. The committed smoke runs are the sweep."""
    import logging
    import shlex
    import shutil

    from omegaconf import OmegaConf

    from spfde.sweeps.callbacks import ReportAfterSweep

    sweep_dir = tmp_path / "sweeps" / "epochs=2,freeze=0.1"
    shutil.copytree(REPO / "docs" / "smoke" / "runs", sweep_dir)
    with caplog.at_level(logging.INFO, logger="spfde"):
        ReportAfterSweep().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    assert (sweep_dir / "report" / "index.html").is_file() and not (sweep_dir / "report" / "timelines").exists()
    hint = re.search(r"per-run timelines: `(.*)` draws them", caplog.text)
    assert hint and shlex.split(hint[1]) == ["python", "-m", "spfde.report", str(sweep_dir)]


@pytest.mark.slow
def test_report_builds_tables_and_figures(smoke_sweep, tmp_path):
    proc = run_cli([str(smoke_sweep), "--out", str(tmp_path / "report"), "--wandb"], cwd=tmp_path,
                   module="spfde.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "report"
    for name in ("runs.csv", "summary.csv", "table.md", "acc_vs_flops.png", "heatmap_acc.png", "heatmap_saving.png"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    assert len(list((out / "timelines").glob("*.png"))) == 4
    table = (out / "table.md").read_text()
    assert "SpFDE 10%+20%" in table and "MEST" in table
    assert len((out / "runs.csv").read_text().splitlines()) == 5
    assert list((out / "wandb").glob("offline-run-*"))  # the wandb table, offline, under the report folder
    assert not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_dashboard_of_a_finished_sweep_directory(smoke_sweep, tmp_path):
    proc = run_cli([str(smoke_sweep), "--out", str(tmp_path / "dashboard.json")], cwd=tmp_path,
                   module="spfde.dashboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = json.loads((tmp_path / "dashboard.json").read_text())
    assert spec["group"] == "smoke" and spec["groupby"] == ["freeze", "sieve"]
    assert spec["varies"] == {"freeze": ["0", "0.1"], "sieve": ["0", "0.2"]}
    # every panel draws something: each series it names (a pattern for the per-layer ones) is among what the
    # sweep's runs logged to wandb every epoch (CUDA peaks aside: a CPU run; gradient norms: with analysis.every)
    from spfde.training.log import wandb_record

    logged = {k for run in smoke_sweep.glob("*/metrics.jsonl") for r in read_metrics(run.parent)
              for k in wandb_record(r)}
    sections = {s["name"]: s["panels"] for s in spec["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]}
    for panels in sections.values():
        for panel in panels:
            config = panel["config"]
            if config.get("useMetricRegex"):
                drawn = [k for k in logged if re.search(config["metricRegex"], k)]
                assert drawn or "grad_norm" in config["metricRegex"], config["metricRegex"]
            elif panel["viewType"] == "Run History Line Plot":
                assert {config["xAxis"], *config["metrics"]} - logged <= {"memory/train_peak", "memory/eval_peak"}


# ------------------------------------------------------------------------------------ a real SLURM cluster


@pytest.fixture(scope="module")
def slurm_cluster():
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "tests" / "cluster" / "slurm-up.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        pytest.skip(f"no SLURM cluster here: {reason}")
    print(f"SLURM cluster up in {time.perf_counter() - start:.1f} s")
    return True


SLURM_TEST_LAUNCHER = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
                       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=15",
                       "hydra.launcher.signal_delay_s=30"]


@pytest.mark.slow
def test_a_job_slurm_refuses_is_one_line_and_nothing_is_submitted(slurm_cluster, tmp_path):
    """sbatch refuses the array (a partition the cluster does not have): one line, exit 2, not submitit's traceback."""
    args = ["-m", "experiment=quickstart", "model.depth=8", "epochs=1", "logger=none", "seed=0,1", *SLURM_TEST_LAUNCHER,
            "hydra.launcher.partition=nonexistent", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_cli(args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("spfde: error: SLURM refused the sweep's jobs (sbatch: error:")
    assert not (tmp_path / "sweep" / ".submitit").exists() or slurm_job_ids(tmp_path / "sweep") == []


def epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def slurm_job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the sweep's jobs: array tasks (`<array>_<task>`) when the launcher submitted an array."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.replace("_", "").isdigit()]
    tasks = sorted(n for n in names if "_" in n)
    return tasks or sorted(names)


def sacct_states(job_ids: list[str], wait_for: str = "COMPLETED", timeout: float = 60) -> dict[str, str]:
    """Job states from the accounting (which lags the results by a few seconds)."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        states = dict(line.split("|")[:2] for line in out.strip().splitlines())
        if set(states.values()) == {wait_for} or time.time() > deadline:
            return states
        time.sleep(1)


@pytest.mark.slow
def test_smoke_sweep_runs_through_slurm(slurm_cluster, tmp_path):
    """The preset's four jobs as an array on the cluster (shortened to 3 epochs of 8x8 digits without wandb: what
    the preset trains and logs is checked with the local launcher above)."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli([*SMOKE, "epochs=3", "logger=none", *SLURM_TEST_LAUNCHER,
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(summaries(sweep_dir)) == 4
    ids = slurm_job_ids(sweep_dir)
    assert len(ids) == 4
    states = sacct_states(ids)
    assert sorted(states) == sorted(ids) and set(states.values()) == {"COMPLETED"}


@pytest.mark.slow
def test_requeued_slurm_job_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # 16 epochs: the requeue lands after epoch 2, with 14 epochs (~8 s at depth 8 on the quickstart's 16x16 digits:
    # on 8x8 ones the job may finish first) left to interrupt
    args = ["-m", "experiment=quickstart", "model.depth=8", "epochs=16", "seed=0", *SLURM_TEST_LAUNCHER,
            f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=job"]
    proc = subprocess.Popen([sys.executable, "-m", "spfde.run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run_dir = sweep_dir / "job"
    deadline = time.time() + 300
    while epochs_done(run_dir) < 2:  # let it train a few epochs, then pull the rug
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    job_id = slurm_job_ids(sweep_dir)[0]
    subprocess.run(["scontrol", "requeue", job_id], check=True)  # as a preemption would
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, 17))  # every epoch once: resumed, not restarted
    log = (run_dir / "run.log").read_text()
    assert "resuming" in log and "after epoch" in log
    restarts = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-o", "JobID,State", "-j", job_id],
                              capture_output=True, text=True).stdout
    assert "REQUEUED" in restarts or "PREEMPTED" in restarts or len(restarts.strip().splitlines()) > 1
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 16


@pytest.mark.slow
def test_status_of_a_slurm_sweep_with_a_cancelled_job(slurm_cluster, tmp_path):
    """Two tiny jobs: one finishes, the other is cancelled with scancel mid-run. spfde.results.status sees it training
    (with its SLURM job id), then stopped after its last epoch with SLURM's CANCELLED line."""
    from spfde.results.status import sweep_status

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "experiment=quickstart", "model.depth=8", NATIVE_DIGITS, "epochs=2,40", "logger=none",
            *SLURM_TEST_LAUNCHER, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "spfde.run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    long_run = f"{NATIVE_DIGITS},epochs=40,experiment=quickstart,model.depth=8"
    try:
        deadline = time.time() + 300
        while True:  # until the long job has trained an epoch and is seen training
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            if (sweep_dir / "multirun.yaml").exists():  # Hydra has started the sweep
                rows = {r["run"]: r for r in sweep_status(sweep_dir)["jobs"]}
                if rows[long_run]["state"] == "training" and rows[long_run]["epoch"] >= 1:
                    break
            time.sleep(0.5)
        assert rows[long_run]["epochs"] == 40 and rows[long_run]["eta_s"] > 0 and rows[long_run]["job_id"]
        subprocess.run(["scancel", rows[long_run]["job_id"]], check=True)
        while True:  # until the short job has finished and the cancelled one's process is gone
            assert time.time() < deadline
            status = sweep_status(sweep_dir)
            if status["totals"] == {"finished": 1, "stopped": 1}:
                break
            time.sleep(0.5)
    finally:
        proc.kill()  # the launcher would wait ~20 s more for the accounting to report the cancelled job
        proc.communicate()
    stopped = next(r for r in status["jobs"] if r["run"] == long_run)
    assert status["launcher"] == "slurm" and 1 <= stopped["epoch"] < 40 and "CANCELLED" in stopped["detail"]
    assert status["eta"]["eta_s"] is None


def fake_row(method: str, freeze: float, sieve: float, seed: int, acc: float, flops: float,
             sieve_method: str = "circular") -> dict:
    return {"run_dir": f"{method}-{freeze}-{sieve}-{seed}", "model": "resnet32", "dataset": "cifar100",
            "method": method, "ratio": 0.9, "freeze": freeze, "freeze_scheme": "single_shot", "sieve": sieve,
            "sieve_method": sieve_method, "epochs": 160, "seed": seed, "final_acc": acc, "train_flops": flops,
            "dense_train_flops": 1e16, "memory_min_bytes": None, "memory_avg_bytes": None,
            "memory_dst_min_bytes": None, "train_time_s": 1.0,
            "config": {"sparsity.name": method, "freeze": freeze, "sieve": sieve,
                       **({"sieve_method": sieve_method} if sieve else {})}}


def test_report_labels_the_mest_rows_and_lays_out_spfde_on_other_methods():
    from spfde.results.runs import group, markdown

    rows = [fake_row(m, x, x, seed, 0.7 - x / 10 + seed / 1000, 1.5e15 * (1 - 1.5 * x))
            for m in ("rigl", "set", "mest") for x in (0.0, 0.2) for seed in (0, 1, 2)]
    rows.append(fake_row("mest", 0.0, 0.24, 0, 0.71, 1.3e15, sieve_method="oneshot"))
    groups = group(rows)
    labels = {g["label"] for g in groups}
    assert labels == {"RigL", "RigL + SpFDE 20%+20%", "SET", "SET + SpFDE 20%+20%", "MEST (EM&S)",
                      "SpFDE 20%+20%", "MEST"}
    table = markdown(groups)
    section = table.split("### SpFDE on other sparse-training methods")[1].split("###")[0]
    body = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in body] == ["| MEST (EM&S)", "| RigL", "| SET"]
    assert all("SpFDE 20%+20%" in line and "| 30.0% |" in line and "| -2.00 |" in line for line in body)
