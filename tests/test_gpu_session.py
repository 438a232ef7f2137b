"""tests/gpu/session.sh, the one prepared call for a lent GPU machine: rehearsed on the CPU with that
machine's Python stack (no wandb, wandb_workspaces, submitit, hydra-submitit-launcher or pytest-timeout),
and its summary block, which must say "not measured" rather than fail when a step delivered nothing."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.training.test_distributed import comparable

SESSION = REPO / "tests" / "gpu" / "session.sh"
SUMMARY = runpy.run_path(str(REPO / "tests" / "gpu" / "summary.py"))
# what the GPU machine does not have; a sitecustomize.py makes each unimportable, and Hydra's plugin scan
# skips a plugin whose module is None in sys.modules, as if it were not installed
MISSING = ("wandb", "wandb_workspaces", "submitit", "hydra_plugins.hydra_submitit_launcher")


def gpu_machine_env(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in MISSING))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "PYTEST_ADDOPTS": "-p no:timeout",
            "PYTHONUNBUFFERED": "1"}


def test_the_stand_in_for_the_gpu_machine_hides_wandb_and_submitit(tmp_path):
    env = gpu_machine_env(tmp_path)
    for module in MISSING:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, module


@pytest.mark.slow
def test_logger_wandb_without_wandb_is_one_line_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spfde.run", "experiment=quickstart", "logger=wandb",
                           f"hydra.run.dir={tmp_path / 'run'}"], env=gpu_machine_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("spfde: error: logger=wandb needs the wandb package (pip install wandb); or run "
                                   "with logger=none")
    assert not (tmp_path / "run").exists()


@pytest.mark.whole_machine
@pytest.mark.slow
def test_gpu_session_rehearses_on_the_cpu_without_wandb_or_submitit(tmp_path):
    """Every step of the session at its CPU sizes: pytest tests/test_gpu.py (skips here), `python -m spfde.bench gpu`,
    `python -m spfde.bench data` (its tables checked below), torchrun with one process vs a plain `spfde.run ...
    logger=none` (the same results), then the summary."""
    out = tmp_path / "out"
    env = {**gpu_machine_env(tmp_path), "REHEARSAL": "1", "OUT": str(out), "PY": sys.executable}
    proc = subprocess.run(["bash", "tests/gpu/session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = [line.split()[:2] for line in (out / "steps.tsv").read_text().splitlines()]
    assert steps == [[name, "0"] for name in ("tests", "gpu", "data", "torchrun", "plain", "summary")]
    block = proc.stdout[proc.stdout.index("===== GPU session summary: CPU"):].splitlines()
    rows = dict(line.split("  ", 1) for line in block[1:block.index("=====")])
    rows = {label.strip(): value.strip() for label, value in rows.items()}
    pytest_row = rows["pytest tests/test_gpu.py + GPU decode test"]
    assert re.fullmatch(r"0 passed, 0 failed, 0 errors, [1-9]\d* skipped", pytest_row)  # all skip without CUDA
    assert rows["torchrun with one process == plain run"].startswith("yes (")
    # without CUDA only the GPU's own measurements are missing
    gpu_only = ("CUDA graph / eager", "memory reduction", "capture time, SpFDE", "loader gpu", "loader dali")
    for label, value in rows.items():
        assert (value == "not measured") == any(g in label for g in gpu_only), (label, value)
    values = json.loads((out / "bench-gpu.json").read_text())
    assert values["batch_sizes"] == [16, 32] and 0 < values["spfde_flops_saving"] < 1
    # torchrun with one process (no process group) gives the plain run's results, every key but times and ids
    once, plain = (json.loads((out / "torchrun1" / run / "summary.json").read_text()) for run in ("torchrun", "plain"))
    assert "world_size" not in once and comparable(once) == comparable(plain)
    check_bench_data((out / "gpu-session.txt").read_text(), json.loads((out / "bench-data.json").read_text()),
                     folder=REPO / "outputs" / "bench-data" / "jpeg-40")


def check_bench_data(log: str, values: dict, folder: Path) -> None:
    """`spfde.bench data` at its CPU sizes (40 generated JPEGs): the bare model's row, each harness case with img/s,
    ratio, what ran, the loader alone, the step alone and which of them bounds it, the same backend settings in
    every case."""
    assert "| bare model, random batch on the device |" in log and "1.00x | eager |" in log
    case = r" \| [\d,]+ \| \d+\.\d\dx \| eager \| [\d,]+ \| [\d,]+ \| (data|compute)-bound \|"
    assert re.search(r"\| harness, dataset.loader=pil \(40 images, epoch 2\)" + case, log)
    assert re.search(r"\| harness, dataset.loader=pil, all \d+ candidate blocks frozen" + case, log)
    assert re.search(r"fastest loader: pil; epoch time with 0 frozen blocks .*speed-up \d+\.\d\dx; eager / eager", log)
    assert (folder / ".complete").exists()
    assert values["fastest_loader"] == "pil"
    assert set(values["settings_by_case"]) == {"bare", "loader_pil", "frozen"}  # the same settings in every case
    assert all(settings == values["settings"] for settings in values["settings_by_case"].values())
    assert "backend settings of every case: cudnn.benchmark=True" in log and "DIFFERENT" not in log
    for key in ("loader_pil", "frozen"):
        data_bound = values[f"{key}_loader_only_img_s"] < values[f"{key}_step_only_img_s"]
        assert values[f"{key}_bound"] == ("data-bound" if data_bound else "compute-bound")
        assert values[f"{key}_ran"] == "eager"


# a step like torchrun's launcher: its worker runs in a session of its own, wedged (and deaf to SIGTERM)
WEDGED_WORKER = """import signal, subprocess
worker = subprocess.Popen(["sleep", "1000"], start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
print("worker", worker.pid, flush=True)
worker.wait()"""


def gone(pid: int) -> bool:
    try:  # a zombie is gone too: it holds no memory, no GPU and no pipe
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


@pytest.mark.slow
def test_a_step_past_its_limit_is_stopped_with_every_process_it_started(tmp_path):
    """A plain `timeout` stops only the launcher: the worker, in its own session, lives on and holds the step's
    output open, and the call waits until the device machine's own limit. The step's limit stops the worker
    too (SIGKILL after the grace), and the summary still runs."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable,
           "TEST_STEP": f"{shlex.quote(sys.executable)} -c {shlex.quote(WEDGED_WORKER)}"}
    start = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(SESSION), "_test"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60)
        took = time.monotonic() - start
    finally:
        log = (out / "gpu-session.txt").read_text() if (out / "gpu-session.txt").exists() else ""
        workers = [int(pid) for pid in re.findall(r"^worker (\d+)$", log, re.M)]
        for pid in workers:  # whatever happens here, no sleeping worker outlives the test
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert len(workers) == 1 and gone(workers[0])
    assert took < 15  # 2 s limit + 3 s grace + the summary
    steps = [line.split()[:2] for line in (out / "steps.tsv").read_text().splitlines()]
    assert steps == [["_test", "124"], ["summary", "0"]]
    assert proc.returncode == 1 and "===== GPU session summary" in proc.stdout


def test_the_session_expands_its_arrays_as_bash_before_4_4_allows_under_set_u():
    """`"${A[@]}"` of an empty array is an unbound-variable error under `set -u` in bash < 4.4 (GPU_ARGS is empty on
    the GPU machine): every array expansion is written `${A[@]+"${A[@]}"}`, nothing else."""
    text = SESSION.read_text()
    assert "set -uo pipefail" in text and 'GPU_ARGS[@]+"${GPU_ARGS[@]}"' in text
    rest = re.sub(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', "", text)
    assert re.findall(r"\$\{\w+\[[@*]\][^}]*\}", rest) == []


def test_the_summary_of_a_session_that_delivered_nothing_says_not_measured(tmp_path):
    lines = SUMMARY["summary_lines"](tmp_path)
    assert lines[0].startswith("===== GPU session summary") and lines[-1] == "====="
    assert all(line.endswith("not measured") for line in lines[1:-1])
    assert sum("batch 64:" in line for line in lines) == sum("batch 512:" in line for line in lines) == 9


def test_the_summary_names_the_results_where_torchrun_and_the_plain_run_differ(tmp_path):
    a = {"final_acc": 0.5, "train_flops": 10.0, "train_time_s": 3.0, "run_id": "a"}
    b = {**a, "final_acc": 0.25, "train_time_s": 4.0, "run_id": "b", "memory_train_peak_bytes": 1}
    assert SUMMARY["same_results"](a, {**a, "train_time_s": 9.0}) == "yes (2 result keys equal)"
    assert SUMMARY["same_results"](a, b) == "no: final_acc 0.5 != 0.25"
    assert SUMMARY["same_results"](a, {}) == "not measured"


def test_the_summary_shows_what_ran_beside_each_ratio_and_the_steady_state_parts(tmp_path):
    gpu = {"device": "NVIDIA H100", "torch": "2.11", "batch_sizes": [64], "bs64_bare_ran": "graphed",
           "bs64_dense_vs_bare": 0.5, "bs64_dense_ran": "eager", "bs64_mest_vs_bare": 0.95, "bs64_mest_ran": "graphed",
           "bs64_mest_sieve_vs_bare": 0.9, "bs64_mest_sieve_ran": "fallback: RuntimeError: CUDA error: x",
           "bs64_frozen_speedup": 1.5, "bs64_mest_frozen_ran": "graphed", "bs64_bare_graphed_vs_eager": 4.0,
           "spfde_wall_saving": 0.1, "spfde_flops_saving": 0.2, "spfde_wall_vs_flops": 0.5, "spfde_ran": "graphed",
           "mest_ran": "graphed", "spfde_capture_s": 30.0, "mest_capture_s": 3.0,
           "spfde_steady_epoch_s_by_depth": {"0": 0.2, "10": 0.1, "2": 0.15}, "mest_steady_epoch_s": 0.25,
           "spfde_one_off_s_by_depth": {"0": 3.0, "2": 2.5}, "spfde_projected_wall_saving": 0.19,
           "spfde_projected_flops_saving": 0.2, "spfde_projected_wall_vs_flops": 0.95, "spfde_epochs_to_0.9x": 42,
           "bs64_settings": {"cudnn.benchmark": True, "precision": "bf16"},
           "bs64_settings_by_case": {"bare_eager": {"cudnn.benchmark": True, "precision": "bf16"},
                                     "mest": {"cudnn.benchmark": True, "precision": "bf16"}}}
    data = {"settings": {"cudnn.benchmark": True}, "settings_by_case": {"bare": {"cudnn.benchmark": True},
                                                                        "frozen": {"cudnn.benchmark": False}},
            "model": "resnet50", "loader_pil_vs_bare": 0.4, "loader_pil_ran": "graphed",
            "loader_pil_loader_only_img_s": 1700.0, "loader_pil_step_only_img_s": 4700.0,
            "loader_pil_bound": "data-bound", "fastest_loader": "pil", "frozen_epoch_speedup": 1.1,
            "frozen_ran": "graphed", "frozen_loader_only_img_s": 1750.0, "frozen_step_only_img_s": 6000.0,
            "frozen_bound": "data-bound"}
    (tmp_path / "bench-gpu.json").write_text(json.dumps(gpu))
    (tmp_path / "bench-data.json").write_text(json.dumps(data))
    lines = SUMMARY["summary_lines"](tmp_path)
    rows = {label.strip(): value.strip() for label, value in (line.split("  ", 1) for line in lines[1:-1])}
    assert rows["batch 64: harness MEST / bare model (graphed)"] == "0.95x (graphed)"
    assert rows["batch 64: backend settings"] == "cudnn.benchmark=True, precision=bf16 (every case)"
    assert rows["folder loaders: backend settings"] == "cudnn.benchmark=True; DIFFERENT in: frozen"
    assert rows["batch 64: harness dense / bare model (graphed)"] == "0.50x (eager)"
    assert rows["batch 64: harness MEST, sieve=0.2 loader / bare model (graphed)"] == (
        "0.90x (fallback: RuntimeError: CUDA error: x)")
    assert rows["batch 64: bare model, CUDA graph / eager"] == "4.00x (graphed / eager)"
    assert rows["batch 64: all candidates frozen / unfrozen, img/s"] == "1.50x (graphed / graphed)"
    assert rows["batch 64: memory reduction 0 -> all frozen, measured / planned"] == "not measured"
    assert rows["SpFDE 0.2+0.2 vs MEST: wall-clock saving / FLOPs saving"] == (
        "0.50x (10.0% / 20.0%) (graphed / graphed)")
    assert rows["SpFDE run: steady s per epoch by frozen depth (MEST's)"] == "0: 0.200, 2: 0.150, 10: 0.100 (0.250)"
    assert rows["SpFDE run: one-off s of each depth's first epoch"] == "0: 3.000, 2: 2.500"
    assert rows["SpFDE, 160 epochs projected: wall-clock saving / FLOPs saving"] == "0.95x (19.0% / 20.0%)"
    assert rows["SpFDE, 160 epochs projected: epochs to 0.9x of the FLOPs saving"] == "42"
    assert rows["folder loader pil / bare resnet50"] == "0.40x (graphed)"
    assert rows["folder loader pil: loader alone / step alone, img/s"] == "1,700 / 4,700: data-bound"
    assert rows["folder loader gpu / bare resnet50"] == rows["folder loader gpu: loader alone / step alone, img/s"] \
        == "not measured"
    assert rows["epoch time, 0 / all candidates frozen (loader pil)"] == "1.10x (graphed / graphed)"
    assert rows["all candidates frozen (loader pil): loader alone / step alone, img/s"] == "1,750 / 6,000: data-bound"
    (tmp_path / "bench-gpu.json").write_text(json.dumps({**gpu, "spfde_epochs_to_0.9x": "never"}))
    assert any(line.startswith("SpFDE, 160 epochs projected: epochs to 0.9x") and line.endswith("  never")
               for line in SUMMARY["summary_lines"](tmp_path))
