"""Data-parallel training on torch.distributed (gloo on the CPU): torchrun with 2 ranks, a killed job that
resumes, RigL's dense-gradient steps, an injected mask mismatch, and a 2-task SLURM job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spfde.data import build_data
from spfde.data.loaders import epoch_batches
from spfde.planning.plan import build_plan
from spfde.training.distributed import World
from tests.helpers import REPO, make_cfg, quick_overrides, read_metrics, run_cli
from tests.sweeps.test_sweeps import SLURM_TEST_LAUNCHER, slurm_cluster  # noqa: F401 - the fixture

DDP_RUN = quick_overrides("epochs=4", "interval=1", "freeze=0.15", "sieve=0.2", "threads=1")
NOT_COMPARED = ("time/", "train_time_s", "run_id", "run_dir", "cuda_graphs_capture_s")


def torchrun(args: list[str], run_dir: Path, script: list[str] | None = None, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *(script or ["-m", "spfde.run"]), *args, "logger=none", "progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def kill_tree(pid: int) -> None:
    """kill -9 a process and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in reversed(tree):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(NOT_COMPARED)}


# ------------------------------------------------------------------------------------ sharding (no processes)


def test_each_rank_reads_its_part_of_every_global_batch():
    cfg = make_cfg(quick_overrides("batch_size=64"))
    single = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0)).train
    ranks = [build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0), World(r, 2)).train
             for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for whole, part0, part1 in zip(single, *ranks):
        assert torch.equal(torch.cat([part0[2], part1[2]]), whole[2])  # disjoint, in order: the same samples
        assert torch.equal(torch.cat([part0[0], part1[0]]), whole[0])  # and the same augmentation
    assert World(1, 3).bounds(10) == (4, 7) and World(2, 3).bounds(10) == (7, 10)


def test_a_last_batch_too_small_for_the_ranks_is_dropped():
    assert epoch_batches(130, 64) == [64, 64, 2] and epoch_batches(129, 64) == [64, 64]  # one sample: BN cannot
    assert epoch_batches(130, 64, ranks=2) == [64, 64] and epoch_batches(132, 64, ranks=2) == [64, 64, 4]


def test_settings_a_world_cannot_serve_are_one_line_errors(monkeypatch):
    import spfde.training.loop
    from spfde.training.distributed import DistributedError

    monkeypatch.setattr(spfde.training.loop, "setup_world", lambda device: World(0, 3))
    with pytest.raises(DistributedError, match="batch_size=64 is the global batch and must divide among the 3"):
        spfde.training.loop.train(make_cfg(quick_overrides(), Path("/nonexistent/never-created")))


def test_an_nccl_group_is_bound_to_the_ranks_gpu_and_gloo_is_unchanged(monkeypatch):
    """NCCL gets device_id=cuda:<local rank> (its barriers then know the device, no warning); gloo no device_id."""
    import torch.distributed as dist

    import spfde.training.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "environment", lambda: (3, 4, 1))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: calls.append((backend, kwargs)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    world = distributed.setup_world("auto")
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1)
    distributed.setup_world("cpu")
    (nccl, nccl_kwargs), (gloo, gloo_kwargs) = calls
    assert nccl == "nccl" and nccl_kwargs["device_id"] == torch.device("cuda", 1)
    assert gloo == "gloo" and "device_id" not in gloo_kwargs
    assert {k: v for k, v in nccl_kwargs.items() if k != "device_id"} == gloo_kwargs  # rank, size, timeout


# ------------------------------------------------------------------------------------ torchrun, 2 ranks


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "straight"
    out = finish(torchrun(DDP_RUN, run_dir))
    assert (run_dir / "summary.json").exists(), out[-3000:]
    return run_dir


@pytest.mark.slow
def test_two_ranks_train_as_one_run(straight_run):
    records = read_metrics(straight_run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]  # written once, by rank 0
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["train_flops"] == pytest.approx(build_plan(make_cfg(DDP_RUN))["train_flops"], rel=1e-9)
    assert max(r["freeze/frozen_blocks"] for r in records) > 0 and records[-1]["sieve/partial_size"] < 1437
    assert records[-1]["samples"] == records[-1]["sieve/partial_size"]  # the ranks together read the partial set
    assert summary["final_acc"] > 0.15  # it learns (chance is 0.1)


@pytest.mark.slow
def test_a_killed_two_rank_job_resumes_exactly(straight_run, tmp_path):
    run_dir = tmp_path / "killed"
    proc = torchrun(DDP_RUN, run_dir)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    kill_tree(proc.pid)  # kill -9 of the whole job, mid-run
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    out = finish(torchrun(DDP_RUN, run_dir))
    assert "resuming" in out, out[-3000:]
    assert [comparable(r) for r in read_metrics(run_dir)] == [comparable(r) for r in read_metrics(straight_run)]
    a = torch.load(straight_run / "last.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_rigl_dense_gradient_steps_under_two_ranks(tmp_path):
    run_dir = tmp_path / "rigl"
    out = finish(torchrun(quick_overrides("epochs=2", "sparsity=rigl", "sparsity.rigl.delta_t=5", "threads=1"),
                          run_dir))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    assert summary is not None, out[-3000:]
    assert summary["final_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert sum(r.get("sparsity/updates", 0) for r in read_metrics(run_dir)) >= 4  # masks moved, identically


@pytest.mark.slow
def test_ranks_with_different_masks_stop_with_the_checksum_error(tmp_path):
    proc = torchrun(DDP_RUN, tmp_path / "fault", script=[str(REPO / "tests" / "training" / "ddp_fault.py")])
    out = finish(proc)
    assert proc.returncode != 0
    assert "spfde: error: the ranks hold different masks at the start of epoch 2" in out
    assert len(read_metrics(tmp_path / "fault")) == 1  # nothing trained past the mismatch


# ------------------------------------------------------------------------------------ SLURM, 2 tasks


@pytest.mark.slow
def test_a_two_task_slurm_job_equals_torchrun(slurm_cluster, straight_run, tmp_path):  # noqa: F811
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *DDP_RUN, *SLURM_TEST_LAUNCHER, "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=2",
            "logger=none", "progress=false", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=job"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    slurm = json.loads((sweep_dir / "job" / "summary.json").read_text())
    torch_run = json.loads((straight_run / "summary.json").read_text())
    assert slurm["world_size"] == 2
    assert comparable(slurm) == comparable(torch_run)


@pytest.mark.slow
def test_lth_rounds_under_two_ranks(tmp_path):
    """Each round is a 2-rank run; rank 0 alone writes the rewind point, which every rank of the next round
    reads (the masks are checked equal on both ranks at every epoch)."""
    run_dir = tmp_path / "lth"
    out = finish(torchrun(quick_overrides("epochs=2", "model.depth=8", "sparsity=lth", "sparsity.ratio=0.36",
                                          "sparsity.lth.rewind_epoch=1", "threads=1"), run_dir))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    assert summary is not None, out[-3000:]
    assert summary["rounds"] == 3 and summary["world_size"] == 2
    assert [r["final_sparsity"] for r in summary["round_summaries"]] == pytest.approx([0, 0.2, 0.36], abs=1e-3)
    assert (run_dir / "rewind.pt").exists() and not list(run_dir.glob(".rewind.pt.tmp*"))
