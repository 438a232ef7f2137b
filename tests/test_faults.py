"""Faults and bad inputs around a run directory (issue 16): each test injects one and checks that nothing
is lost or mixed up (error text, exit code, files intact, resumed numbers identical)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import spfde.rundir.checkpoint
import spfde.rundir.lifecycle
import spfde.training.build
import spfde.training.loop
from spfde.checks.command_line import precheck_overrides
from spfde.config import ConfigError
from spfde.rundir.checkpoint import RunDirError, load_checkpoint
from spfde.rundir.lifecycle import TrainingDiverged, config_fingerprint
from tests.helpers import REPO, crash_at_epoch, make_cfg, read_metrics, run_cli, run_training, summary_core

TINY = ["experiment=quickstart", "model.depth=8", "dataset=fake", "dataset.train_size=128", "dataset.test_size=64",
        "dataset.image_size=8", "batch_size=32", "epochs=2"]


def cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return run_cli(list(args), cwd=cwd, timeout=300)


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]


def crashed_after_epoch_1(run_dir, monkeypatch, *extra: str) -> None:
    """A 2-epoch run that died during epoch 2: last.pt holds epoch 1."""
    with monkeypatch.context() as m:
        crash_at_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_training(tiny(*extra), run_dir)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1


# ----------------------------------------------------------------------------- 1. divergence


def test_divergence_stops_before_writing_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = spfde.training.loop.train_one_epoch
    calls = {"n": 0}

    def diverging(train_step, *args, **kwargs):
        stats = real(train_step, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 blows up: weights and running loss non-finite
            with torch.no_grad():
                for p in train_step.model.parameters():
                    p.fill_(float("nan"))
            stats["train/loss"] = float("nan")
        return stats

    monkeypatch.setattr(spfde.training.loop, "train_one_epoch", diverging)
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2 .*train/loss nan.*last.pt \(epoch 1\) is kept"):
        run_training(tiny("epochs=3"), tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_a_real_divergence_is_a_non_zero_exit_logged_in_run_log(tmp_path):
    proc = cli(*tiny("optim.lr=1e30", "progress=false"), f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "spfde: error: training diverged in epoch 1" in proc.stderr and "Traceback" not in proc.stderr
    assert "training diverged in epoch 1" in (tmp_path / "run.log").read_text()  # item 14: errors in run.log
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "summary.json").exists()


def test_non_finite_values_are_rejected_by_validation():
    for value in ("inf", "nan"):
        with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
            make_cfg(tiny(f"optim.lr={value}"))


# ----------------------------------------------------------------------------- 2. config drift


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_naming_the_keys(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    before = (tmp_path / "last.pt").read_bytes()
    for override, key in (("sparsity.ratio=0.5", "sparsity.ratio=0.9 there, 0.5 now"),
                          ("model.width=2", "model.width=1 there, 2 now"),  # item 12: no size-mismatch traceback
                          ("sparsity=set", "sparsity.name=mest there, set now")):
        with pytest.raises(RunDirError, match=f"other settings: {key}.*fresh=true.*another run dir"):
            run_training(tiny(override), tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before
    run_training(tiny("device=cpu", "eval_batch_size=7"), tmp_path)  # keys that do not change results resume


def test_a_finished_run_is_not_returned_for_other_settings(tmp_path, monkeypatch):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- epochs=1\n")  # as Hydra writes it
    run_training(tiny("epochs=1"), tmp_path)
    monkeypatch.setattr(spfde.training.build, "build_data", lambda *a: pytest.fail("loaded data"))
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- sparsity=set\n")  # the refused launch's
    with pytest.raises(RunDirError, match="sparsity.name=mest there, set now"):
        run_training(tiny("epochs=1", "sparsity=set"), tmp_path)
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- epochs=1\n"  # the run's record is back


def test_different_data_roots_never_share_a_run_directory():
    a = config_fingerprint(make_cfg(["dataset=cifar10", "dataset.root=/data/A"]))
    b = config_fingerprint(make_cfg(["dataset=cifar10", "dataset.root=/data/B"]))
    assert a["dataset.root"] == "/data/A" and a != b  # an explicit shared run dir is refused ...
    from omegaconf import OmegaConf

    exclude = OmegaConf.load(REPO / "conf" / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    assert "dataset.root" not in exclude  # ... and the default run dirs differ


# ----------------------------------------------------------------------------- 3. one process per run dir


@pytest.mark.slow
@pytest.mark.whole_machine
def test_a_second_process_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from spfde.rundir.lifecycle import lock_run_dir; "
                               f"lock_run_dir({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with pytest.raises(RunDirError, match=f"in use by PID {holder.pid} on host {os.uname().nodename}"):
            run_training(tiny("epochs=1"), tmp_path)
        assert time.perf_counter() - t0 < 5 and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()  # the OS releases the lock of a killed process
        holder.wait()
    run_training(tiny("epochs=1"), tmp_path)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]


# ----------------------------------------------------------------------------- 4. damaged side files


@pytest.mark.slow
def test_damaged_metrics_are_rebuilt_from_the_checkpoint(tmp_path, monkeypatch):
    straight = run_training(tiny(), tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    crashed_after_epoch_1(run_dir, monkeypatch)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train/lo')  # half a line, as a full disk during the append left it
    resumed = run_training(tiny(), run_dir)
    assert summary_core(resumed) == summary_core(straight)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    assert len(list(run_dir.glob("metrics.jsonl.corrupt-*"))) == 1  # kept for inspection


@pytest.mark.slow
def test_deleted_metrics_are_rebuilt_and_a_damaged_summary_means_not_finished(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    first = read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").unlink()
    summary = run_training(tiny(), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first[0]
    (tmp_path / "summary.json").write_text('{"final_acc": 0.5, "ep')
    again = run_training(tiny(), tmp_path)  # finishes again from last.pt (epoch 2): same numbers
    assert again == summary and json.loads((tmp_path / "summary.json").read_text()) == summary
    assert len(list(tmp_path.glob("summary.json.corrupt-*"))) == 1


# ----------------------------------------------------------------------------- 5. fresh=true once per launch


@pytest.mark.slow
def test_fresh_applies_once_per_launch_and_a_requeued_job_resumes(tmp_path, monkeypatch):
    run_training(tiny("epochs=1"), tmp_path)  # an earlier, finished run
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    crashed_after_epoch_1(tmp_path, monkeypatch, "fresh=true")  # preempted in epoch 2
    assert len(list(tmp_path.glob("previous-*"))) == 1
    resumed = run_training(tiny("fresh=true"), tmp_path)  # the requeued job: same launch, resumes
    assert len(list(tmp_path.glob("previous-*"))) == 1 and resumed["epochs"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # a new launch with fresh=true starts over once more
    run_training(tiny("fresh=true"), tmp_path)
    assert len(list(tmp_path.glob("previous-*"))) == 2


# ----------------------------------------------------------------------------- 6. resumed numbers


def test_the_unfrozen_memory_baseline_does_not_depend_on_blocks_frozen_at_the_time():
    """A resumed freeze run measured its unfrozen baseline after the resume froze blocks (2.2 MB vs
    13.3 MB); the resume tests compare whole summaries, this pins the cause."""
    from spfde.models import build_model
    from spfde.training.cost import MemoryModel

    model = build_model(make_cfg(tiny()).model, 10, 3)
    before = MemoryModel(model, (3, 8, 8), 64).breakdown({}, 0)
    for p in [*model.blocks[0].parameters(), *model.blocks[1].parameters()]:
        p.requires_grad_(False)  # as the freezer leaves them
    assert MemoryModel(model, (3, 8, 8), 64).breakdown({}, 0) == before


# ----------------------------------------------------------------------------- 7. safe loading


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_or_snapshot_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    (run_dir / "analysis").mkdir(parents=True)
    torch.save({"epoch": 1, "model": RunsCode(marker)}, run_dir / "last.pt")
    with pytest.raises(RunDirError, match=r"last.pt was refused: .*could run code.*system"):
        run_training(tiny(), run_dir)
    torch.save({"epoch": 1, "layers": RunsCode(marker)}, run_dir / "analysis" / "epoch_0001.pt")
    from spfde.analysis import load_snapshots

    with pytest.raises(RunDirError, match="epoch_0001.pt was refused"):
        load_snapshots(run_dir)
    assert not marker.exists()


# ----------------------------------------------------------------------------- 8, 9. damaged checkpoint, full disk


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_before_any_work(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    data = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(spfde.training.build, "build_data", lambda *a: pytest.fail("loaded data"))
    for damaged in (b"", data[: len(data) // 2]):  # empty, truncated
        (tmp_path / "last.pt").write_bytes(damaged)
        with pytest.raises(RunDirError) as err:
            run_training(tiny(), tmp_path)
        message = str(err.value)
        assert "\n" not in message and f"{tmp_path / 'last.pt'} is damaged" in message
        assert "fresh=true" in message and "delete" in message


@pytest.mark.slow
def test_a_full_disk_keeps_the_old_checkpoint_and_removes_the_temp_file(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    before = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RunDirError, match=f"disk full: could not write {tmp_path / 'last.pt'}.*previous last.pt is k"):
        run_training(tiny(), tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))
    assert run_training(tiny(), tmp_path)["epochs"] == 2  # rerun once there is space: resumes


# ----------------------------------------------------------------------------- 10, 11. image folders


def image_folder(root, classes=("a", "b"), per_class=2):
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(root / split / c / f"{i}.jpg")
    return root


FOLDER = ["experiment=quickstart", "model.depth=8", "dataset=imagefolder", "dataset.image_size=8",
          "dataset.workers=0", "epochs=1", "batch_size=2"]


@pytest.mark.slow
def test_bad_image_folders_are_rejected_before_the_run_dir_exists(tmp_path):
    root = image_folder(tmp_path / "data")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    cases = [("", "needs dataset.root="), (f"dataset.root={root}", "train/empty holds no images")]
    for args, expected in cases:
        with pytest.raises(ConfigError, match=expected) as err:
            precheck_overrides([*FOLDER, args] if args else FOLDER)
        assert "cifar" not in str(err.value)
    (root / "train" / "empty").rmdir()
    (root / "val" / "empty").rmdir()
    (root / "train" / "a" / "notes.jpg").write_text("not an image")
    with pytest.raises(ConfigError, match=r"train/a/notes.jpg is not a JPG file"):
        precheck_overrides([*FOLDER, f"dataset.root={root}"])
    one = image_folder(tmp_path / "one", classes=("a",))
    with pytest.raises(ConfigError, match="1 class folder"):
        precheck_overrides([*FOLDER, f"dataset.root={one}"])
    with pytest.raises(ConfigError, match=r"freeze=0.95 cannot be reached"):  # item 11: the planner needs sizes only
        precheck_overrides(tiny("freeze=0.95"))


@pytest.mark.parametrize("in_memory", ["false", "true"])
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_an_image_that_does_not_decode_is_named_or_skipped(mode, in_memory, tmp_path, caplog):
    root = image_folder(tmp_path / "data", per_class=3)
    bad = root / "train" / "b" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG: a valid header, no image
    overrides = [*FOLDER, f"dataset.root={root}", f"dataset.on_bad_file={mode}", "sparsity=dense",
                 f"dataset.in_memory={in_memory}", "dataset.augment=cifar"]
    if mode == "error":
        from spfde.data.loaders import BadImageError

        with pytest.raises(BadImageError, match=f"{bad} does not decode.*dataset.on_bad_file=skip"):
            run_training(overrides, tmp_path / "run")
    else:
        summary = run_training(overrides, tmp_path / "run")
        # streamed: 3 batches of 2, one image skipped; in memory: the skipped image is left out when the set is
        # decoded, 5 images make batches of 2 + 2 (+ 1, dropped: batch norm needs 2)
        samples = 4 if in_memory == "true" else 5
        assert summary["epochs"] == 1 and read_metrics(tmp_path / "run")[0]["samples"] == samples
        assert f"skipped unreadable image {bad}" in caplog.text


# ----------------------------------------------------------------------------- 12, 13. typos, sweeps


def test_typos_and_bad_seeds_are_one_line_errors():
    with pytest.raises(ConfigError, match="Key 'ration' not in 'SparsityConfig'"):
        precheck_overrides(tiny("+sparsity.ration=0.5"))
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*32\), got -1"):
        precheck_overrides(tiny("seed=-1"))


@pytest.mark.slow
def test_every_sweep_job_is_checked_before_any_starts():
    with pytest.raises(ConfigError) as err:
        precheck_overrides(["-m", *tiny("optim.lr=0.1,-1", "seed=0,1")])
    lines = str(err.value).splitlines()
    assert lines[0] == "2 of 4 sweep jobs are invalid, none started:"
    assert all("optim.lr=-1" in line and "optim.lr must be > 0" in line for line in lines[1:]) and len(lines) == 3
    with pytest.raises(ConfigError, match="freeze=0.95 cannot be reached"):  # sweep presets' params too
        precheck_overrides(["-m", "+sweep=smoke", "freeze=0.95"])
    precheck_overrides(["-m", *tiny("seed=0,1")])  # a valid sweep passes


# ----------------------------------------------------------------------------- 14. SIGTERM


@pytest.mark.slow
@pytest.mark.whole_machine
def test_sigterm_stops_with_one_line_and_the_run_resumes(tmp_path):
    args = [sys.executable, "-m", "spfde.run", *tiny("epochs=200", "progress=false"), f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 2/200" in line:
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "Traceback" not in output
    epoch = load_checkpoint(tmp_path / "last.pt")["epoch"]
    stopped = f"stopped by SIGTERM after epoch {epoch}; resume with the same command"
    assert stopped in output and stopped in (tmp_path / "run.log").read_text()
    # metrics are written just before the checkpoint: a line past it is dropped on resume
    assert [r["epoch"] for r in read_metrics(tmp_path)][:epoch] == list(range(1, epoch + 1))


# ----------------------------------------------------------------------------- issue 23: mixed or damaged results


@pytest.mark.slow
def test_fresh_archives_everything_a_run_wrote_and_an_interrupted_archive_is_finished(tmp_path, monkeypatch):
    run_training(tiny("analysis.every=1", "epochs=3"), tmp_path)
    (tmp_path / ".last.pt.tmp999999").write_bytes(b"a write a kill interrupted")
    run_training(tiny("analysis.every=1", "epochs=2", "fresh=true"), tmp_path)
    (old,) = tmp_path.glob("previous-*")
    assert sorted(p.name for p in (tmp_path / "analysis").glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert len(list((old / "analysis").glob("epoch_*.pt"))) == 3
    assert {"summary.json", "metrics.jsonl", "last.pt", "config.yaml"} <= {p.name for p in old.iterdir()}
    assert not list(tmp_path.glob(".*.tmp*"))

    # a kill in the middle of the next archive: its first move happened, the rest did not
    real_move, moved = spfde.rundir.checkpoint.shutil.move, []

    def killed_after_one(src, dst):
        if moved:
            raise KeyboardInterrupt("kill -9")
        moved.append(src)
        return real_move(src, dst)

    with monkeypatch.context() as m:
        m.setattr(spfde.rundir.checkpoint.shutil, "move", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            run_training(tiny("analysis.every=1", "epochs=2", "fresh=true"), tmp_path)
    assert moved == [str(tmp_path / "summary.json")]  # the summary goes first: the old run no longer looks finished
    again = run_training(tiny("analysis.every=1", "epochs=2"), tmp_path)  # any relaunch finishes the archive first
    archives = sorted(tmp_path.glob("previous-*"))
    assert len(archives) == 2 and again["epochs"] == 2
    assert {"summary.json", "metrics.jsonl", "last.pt", "analysis"} <= {p.name for p in archives[1].iterdir()}
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]  # a new run, not the archived one


def flip(path, offset: int, count: int = 1, bit: int | None = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] = data[i] ^ (1 << bit) if bit is not None else 0xA5
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["one mantissa bit", "64 bytes"])
def test_a_checkpoint_changed_after_writing_is_refused_naming_it(tmp_path, monkeypatch, damage):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    path = tmp_path / "last.pt"
    weight = load_checkpoint(path)["model"]["blocks.1.conv1.weight"]
    offset = path.read_bytes().find(weight.numpy().tobytes())
    assert offset > 0
    if damage == "one mantissa bit":
        flip(path, offset + 4, bit=3)  # low mantissa bit of the second weight: a tiny, plausible change
    else:
        flip(path, offset + 64, count=64, bit=None)
    with pytest.raises(RunDirError, match=f"{path} is damaged: its contents no longer match the checksum"):
        run_training(tiny(), tmp_path)
    from spfde.rundir.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "rewind.pt", {"model": {"w": torch.arange(8.0)}})  # the LTH rewind point too
    flip(tmp_path / "rewind.pt", (tmp_path / "rewind.pt").read_bytes().find(torch.arange(8.0).numpy().tobytes()))
    with pytest.raises(RunDirError, match="rewind.pt is damaged: its contents no longer match"):
        load_checkpoint(tmp_path / "rewind.pt")


@pytest.mark.slow
def test_the_cpu_thread_count_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch, "threads=1")
    assert load_checkpoint(tmp_path / "last.pt")["fingerprint"]["threads"] == 1
    with pytest.raises(RunDirError, match="other settings: threads=1 there, 2 now"):
        run_training(tiny("threads=2"), tmp_path)
    assert run_training(tiny("threads=1"), tmp_path)["epochs"] == 2  # the advice works as written


@pytest.mark.slow
def test_a_finished_run_heals_its_metrics_on_relaunch_and_the_report_reads_it(tmp_path, capsys):
    from spfde.report import main as report

    summary = run_training(tiny(), tmp_path / "run")
    good = (tmp_path / "run" / "metrics.jsonl").read_text()
    (tmp_path / "run" / "metrics.jsonl").write_text(good[:len(good) // 2])  # damaged after the run finished
    report([str(tmp_path), "--no-timelines"])  # the damaged file is named, the report still written
    assert "damaged: " + str(tmp_path / "run" / "metrics.jsonl") in capsys.readouterr().out
    assert run_training(tiny(), tmp_path / "run") == summary  # "already finished", and its files are checked
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == good
    assert len(list((tmp_path / "run").glob("metrics.jsonl.corrupt-*"))) == 1
    report([str(tmp_path)])
    assert "damaged" not in capsys.readouterr().out


@pytest.mark.slow
def test_one_damaged_summary_does_not_break_the_report(tmp_path, capsys):
    from spfde.report import main as report

    for seed in (0, 1, 2):
        run_training(tiny("epochs=1", f"seed={seed}"), tmp_path / f"seed{seed}")
    (tmp_path / "seed2" / "summary.json").write_text('{"final_acc": 0.5, "tr')  # truncated
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("seed: 3\n")
    report([str(tmp_path), "--no-timelines"])
    out = capsys.readouterr().out
    assert f"damaged: {tmp_path / 'seed2' / 'summary.json'}" in out
    assert f"unfinished: {tmp_path / 'unfinished'}" in out
    assert "(n=2)" in out and "2 runs in 1 groups" in out
    assert "damaged:" in (tmp_path / "report" / "left_out.txt").read_text()


@pytest.mark.parametrize("text", ["{}", "[]", '{"final_acc": "0.9", "train_flops": 1.0}', '"finished"'])
def test_a_summary_of_the_wrong_shape_counts_as_damaged(tmp_path, text):
    summary = run_training(tiny("epochs=1"), tmp_path)
    (tmp_path / "summary.json").write_text(text)
    assert run_training(tiny("epochs=1"), tmp_path) == summary  # finished again from last.pt
    assert len(list(tmp_path.glob("summary.json.corrupt-*"))) == 1


def test_kept_damaged_copies_are_never_overwritten(tmp_path, monkeypatch):
    from spfde.rundir.checkpoint import set_aside

    # the clock stepped back
    monkeypatch.setattr(spfde.rundir.checkpoint.time, "strftime", lambda *a: "20260101-000000")
    for n in range(3):
        (tmp_path / "metrics.jsonl").write_text(f"damaged {n}")
        set_aside(tmp_path / "metrics.jsonl")
    kept = sorted(tmp_path.glob("metrics.jsonl.corrupt-*"))
    assert len(kept) == 3 and sorted(p.read_text() for p in kept) == ["damaged 0", "damaged 1", "damaged 2"]


@pytest.mark.slow
@pytest.mark.whole_machine
def test_deleting_the_lock_file_does_not_let_a_second_process_in(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the running run's record\n")
    (run_dir / ".hydra-accepted").mkdir()
    (run_dir / ".hydra-accepted" / "overrides.yaml").write_text("- the running run's record\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from spfde.rundir.lifecycle import lock_run_dir; "
                               f"lock_run_dir({str(run_dir)!r}); print('locked', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / ".lock").unlink()  # a user cleaning up
        result = cli(*tiny("epochs=1", "logger=none", "progress=false"), f"hydra.run.dir={run_dir}")
        assert result.returncode == 2 and "is in use by another process" in result.stderr
        assert "Traceback" not in result.stderr
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the running run's record\n"
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_any_failed_write_of_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch)
    before = (tmp_path / "last.pt").read_bytes()

    def iostream_error(obj, f):  # what torch.save's writer raises on a full disk
        raise RuntimeError("basic_ios::clear: iostream error")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", iostream_error)
        with pytest.raises(RunDirError, match=f"could not write {tmp_path / 'last.pt'}: basic_ios::clear: iostream "
                                              "error.*the previous last.pt is kept"):
            run_training(tiny(), tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before and not list(tmp_path.glob(".*tmp*"))


# ----------------------------------------------------------------------------- issue 23: small


def test_a_stop_right_after_the_checkpoint_names_the_epoch_on_disk(tmp_path, monkeypatch, caplog):
    real = spfde.training.loop.save_checkpoint

    def then_sigterm(path, state):
        real(path, state)
        if state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # lands between the rename and the bookkeeping

    monkeypatch.setattr(spfde.training.loop, "save_checkpoint", then_sigterm)
    with pytest.raises(spfde.rundir.lifecycle.Stopped):
        run_training(tiny("epochs=3"), tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert "stopped by SIGTERM after epoch 2;" in caplog.text


def test_stale_temp_files_of_killed_writers_are_removed_on_start(tmp_path, monkeypatch):
    crashed_after_epoch_1(tmp_path, monkeypatch, "analysis.every=1")
    for name in (".last.pt.tmp4242", ".metrics.jsonl.tmp17", "analysis/.epoch_0002.pt.tmp4242"):
        (tmp_path / name).write_bytes(b"half a file")
    run_training(tiny("analysis.every=1"), tmp_path)
    assert not list(tmp_path.glob(".*.tmp*")) and not list(tmp_path.glob("analysis/.*.tmp*"))


# ----------------------------------------------------------------------------- disk full / read-only at the start


def mounted_tmpfs(path, size: str) -> bool:
    """A small tmpfs at `path` (root on Linux; False where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_or_read_only_disk_at_the_start_is_one_line_before_hydra_writes(tmp_path):
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not mounted_tmpfs(disk, "8m"):
        pytest.skip("needs root to mount a small tmpfs")
    args = tiny("epochs=1", "logger=none", "progress=false")
    try:
        assert cli(*args, f"hydra.run.dir={disk / 'done'}").returncode == 0  # a finished run
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        ro = cli(*args, f"hydra.run.dir={disk / 'done'}")
        assert ro.returncode == 2 and "Traceback" not in ro.stderr
        assert ro.stderr.strip().splitlines() == [line for line in ro.stderr.strip().splitlines()
                                                  if line.startswith("spfde: error: cannot write in")]
        assert "Read-only file system" in ro.stderr
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'fill'}", "bs=1M", "count=16"], capture_output=True)
        full = cli(*args, f"hydra.run.dir={disk / 'new'}")
        assert full.returncode == 2 and "Traceback" not in full.stderr
        assert full.stderr.strip().startswith("spfde: error: cannot write in") and "No space left" in full.stderr
        assert not (disk / "new").exists()  # nothing left behind
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_run_dir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from spfde.rundir.lifecycle import check_output_dir

    real_open = open

    def full_disk(path, *args, **kwargs):
        if ".spfde-probe" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(RunDirError, match=r"cannot write in .*run \(No space left on device; \d+ bytes free"):
        check_output_dir([*tiny(), f"hydra.run.dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()
    check_output_dir(["-sc", "query=bash"])  # Hydra's own commands are left alone


# ------------------------------------------------------------------ the tally (docs/running.md, What survives what)

# Every fault tried, the test that injects it, and what happens: "exact" (nothing lost or mixed: the run resumes or
# finishes with an undisturbed run's numbers, or stops with one line and its data intact), "traceback" (data intact,
# but the user meets a traceback), "mixed" (results silently mixed or damaged), "stuck" (hangs).
FAULTS = [
    ("crash mid-run, then the same command", "training/test_train.py::test_resume_after_a_crash_is_exact", "exact"),
    ("crash after metrics, before the checkpoint",
     "training/test_train.py::test_resume_keeps_the_run_id_and_drops_metrics_"
     "past_the_checkpoint", "exact"),
    ("kill -9 of a two-rank torchrun job",
     "training/test_distributed.py::test_a_killed_two_rank_job_resumes_exactly", "exact"),
    ("SLURM requeue mid-run", "sweeps/test_sweeps.py::test_requeued_slurm_job_resumes_from_its_checkpoint", "exact"),
    ("crash in an LTH round", "sparse/test_sparse.py::test_lth_resumes_mid_round_and_skips_finished_rounds", "exact"),
    ("crash with every method's state", "sparse/test_sparse.py::test_method_state_resumes_bit_exactly", "exact"),
    ("crash with analysis snapshots", "analysis/test_analysis.py::test_snapshots_survive_a_resume", "exact"),
    ("crash with folder loaders, sieved",
     "data/test_folders.py::test_loaders_walk_the_same_indices_per_epoch_and_resume",
     "exact"),
    ("SIGTERM", "test_faults.py::test_sigterm_stops_with_one_line_and_the_run_resumes", "exact"),
    ("SIGTERM right after the checkpoint rename", "test_faults.py::test_a_stop_right_after_the_checkpoint_names_the_"
     "epoch_on_disk", "exact"),
    ("NaN loss", "test_faults.py::test_divergence_stops_before_writing_and_keeps_the_last_good_checkpoint", "exact"),
    ("a real divergence from the CLI", "test_faults.py::test_a_real_divergence_is_a_non_zero_exit_logged_in_run_log",
     "exact"),
    ("resume with other settings", "test_faults.py::test_resume_with_other_settings_is_refused_naming_the_keys",
     "exact"),
    ("a finished run relaunched with other settings", "test_faults.py::test_a_finished_run_is_not_returned_for_other_"
     "settings", "exact"),
    ("resume with another CPU thread count", "test_faults.py::test_the_cpu_thread_count_is_part_of_the_fingerprint",
     "exact"),
    ("a second process on a run dir", "test_faults.py::test_a_second_process_fails_at_once_naming_the_holder", "exact"),
    ("a second process after .lock was deleted", "test_faults.py::test_deleting_the_lock_file_does_not_let_a_second_"
     "process_in", "exact"),
    ("half a line in metrics.jsonl", "test_faults.py::test_damaged_metrics_are_rebuilt_from_the_checkpoint", "exact"),
    ("metrics.jsonl deleted; summary.json truncated", "test_faults.py::test_deleted_metrics_are_rebuilt_and_a_damaged_"
     "summary_means_not_finished", "exact"),
    ("a finished run's metrics.jsonl damaged", "test_faults.py::test_a_finished_run_heals_its_metrics_on_relaunch_and_"
     "the_report_reads_it", "exact"),
    ("summary.json of the wrong shape", "test_faults.py::test_a_summary_of_the_wrong_shape_counts_as_damaged",
     "exact"),
    ("one damaged summary in a sweep's report", "test_faults.py::test_one_damaged_summary_does_not_break_the_report",
     "exact"),
    ("the clock steps back while damaged copies are kept", "test_faults.py::test_kept_damaged_copies_are_never_"
     "overwritten", "exact"),
    ("fresh=true on a requeued job", "test_faults.py::test_fresh_applies_once_per_launch_and_a_requeued_job_resumes",
     "exact"),
    ("fresh=true with analysis; kill -9 during its archive", "test_faults.py::test_fresh_archives_everything_a_run_"
     "wrote_and_an_interrupted_archive_is_finished", "exact"),
    ("a flipped bit / 64 overwritten bytes in last.pt, rewind.pt", "test_faults.py::test_a_checkpoint_changed_after_"
     "writing_is_refused_naming_it", "exact"),
    ("truncated last.pt", "test_faults.py::test_a_damaged_checkpoint_is_one_line_before_any_work", "exact"),
    ("crafted last.pt / snapshot", "test_faults.py::test_a_crafted_checkpoint_or_snapshot_is_refused_and_runs_nothing",
     "exact"),
    ("disk full while writing last.pt", "test_faults.py::test_a_full_disk_keeps_the_old_checkpoint_and_removes_the_"
     "temp_file", "exact"),
    ("torch's iostream error while writing last.pt", "test_faults.py::test_any_failed_write_of_a_checkpoint_is_one_"
     "line_and_keeps_the_previous", "exact"),
    ("full or read-only disk at the start", "test_faults.py::test_a_full_or_read_only_disk_at_the_start_is_one_line_"
     "before_hydra_writes", "exact"),
    ("temp files of killed writers", "test_faults.py::test_stale_temp_files_of_killed_writers_are_removed_on_start",
     "exact"),
    ("an image that does not decode", "test_faults.py::test_an_image_that_does_not_decode_is_named_or_skipped",
     "exact"),
    ("a stuck or dead loader worker",
     "data/test_folders.py::test_a_stuck_or_dead_worker_is_a_one_line_error_naming_the_"
     "loader", "exact"),
    ("a CUDA-graph capture or first replay that fails",
     "training/test_step.py::test_a_failed_capture_falls_back_to_eager_"
     "steps_from_the_same_state", "exact"),
    ("ranks that hold different masks",
     "training/test_distributed.py::test_ranks_with_different_masks_stop_with_the_checksum_"
     "error", "exact"),
    ("relaunching a sweep while its orphaned jobs train", "test_bad_inputs.py::test_relaunching_a_sweep_whose_job_"
     "still_trains_names_it_before_anything_starts", "exact"),
    ("a SLURM job cancelled mid-run (status)",
     "sweeps/test_sweeps.py::test_status_of_a_slurm_sweep_with_a_cancelled_job",
     "exact"),
    # tried as a new user and a cluster would break it, outside the lists above
    ("spfde.report stopped while it writes; a later report after a run is gone", "test_faults_tools.py::test_a_"
     "report_stopped_while_writing_leaves_the_earlier_one_whole_and_a_new_one_keeps_nothing_stale", "exact"),
    ("a calibration cache with negative, NaN or 1e9 s times", "test_faults_tools.py::test_a_calibration_cache_with_"
     "impossible_times_is_ignored", "exact"),
    ("spfde.status on a dead job whose files are dated in the future", "test_faults_tools.py::test_status_does_not_"
     "take_a_run_dated_in_the_future_for_one_starting", "exact"),
    ("a refused second launch, then its holder dies (status)", "test_faults_tools.py::test_a_refused_second_launch_"
     "leaves_the_holders_log_alone", "exact"),
    ("plan.results over a sweep of other settings", "test_faults_tools.py::test_plan_results_chooses_only_among_runs_"
     "of_the_plans_own_settings", "exact"),
    ("NaN, Infinity, negative, zero or out-of-range numbers in summary.json", "test_faults_tools.py::test_impossible_"
     "numbers_in_a_summary_are_damaged_and_left_out", "exact"),
    ("runs sharing a leaf name; run names with #, %, a newline, non-UTF-8 bytes (report)", "test_faults_tools.py::"
     "test_runs_of_one_leaf_name_and_odd_names_get_their_own_timelines_and_working_links", "exact"),
    ("an image folder with a symlink loop", "test_faults_tools.py::test_an_image_folder_with_a_symlink_loop_trains_on_"
     "what_the_plan_counts", "exact"),
    ("torch's 'unexpected pos' on a full disk; a run dir turned read-only", "test_faults_tools.py::test_atomic_writes_"
     "name_torchs_full_disk_and_survive_a_directory_turned_read_only", "exact"),
    ("calibration on a full or read-only disk", "test_faults_tools.py::test_a_calibration_that_cannot_be_saved_still_"
     "gives_its_plan", "exact"),
    ("spfde.report on a full or read-only disk, or --out naming a file", "test_faults_tools.py::test_a_report_on_a_"
     "full_or_read_only_disk_or_into_a_file_is_one_line", "exact"),
    ("spfde.dashboard on a broken multirun.yaml", "test_faults_tools.py::test_a_dashboard_of_a_broken_multirun_yaml_"
     "is_one_line", "exact"),
    ("sbatch refuses the sweep's jobs", "sweeps/test_sweeps.py::test_a_job_slurm_refuses_is_one_line_and_nothing_is_"
     "submitted", "exact"),
    ("every job of a -m sweep fails", "test_faults_tools.py::test_a_sweep_whose_every_job_fails_exits_2_with_the_"
     "count", "exact"),
    ("last.pt, summary.json or metrics.jsonl replaced by a FIFO (run, status, report)", "test_faults_tools.py::test_"
     "fifos_in_place_of_a_runs_files_are_one_line_never_a_hang", "exact"),
    ("fresh=true with an earlier run.log", "test_faults_tools.py::test_fresh_archives_the_earlier_run_log_too",
     "exact"),
    ("a CIFAR download that fails", "test_faults_tools.py::test_a_failed_cifar_download_leaves_no_empty_folder",
     "exact"),
    ("logger.mode=online without a network", "test_faults_tools.py::test_wandb_online_without_a_network_is_one_line_"
     "in_seconds", "exact"),
    ("a search relaunched after a kill, and stopped again",
     "sweeps/test_search.py::test_stopped_trials_are_not_counted_again_"
     "when_a_relaunch_is_stopped_too", "exact"),
    ("a second search on a sweep directory while the first trains, or at the same moment",
     "sweeps/test_search.py::test_a_"
     "second_search_on_the_same_sweep_directory_is_refused_at_once", "exact"),
    ("a search relaunched in its sweep directory with another box",
     "sweeps/test_search.py::test_a_relaunch_with_another_box_"
     "is_refused_naming_the_bounds", "exact"),
    ("a study written by Optuna 2.10",
     "sweeps/test_search.py::test_a_study_of_an_older_"
     "optuna_is_one_line_through_the_command", "exact"),
    ("a truncated or corrupted study.db",
     "sweeps/test_search.py::test_a_damaged_study_file_is_a_search_stop", "exact"),
]
FAULT_OUTCOMES = ("exact", "traceback", "mixed", "stuck")


def fault_tally_line() -> str:
    counts = {o: sum(outcome == o for *_, outcome in FAULTS) for o in FAULT_OUTCOMES}
    return (f"faults tried: {len(FAULTS)}; exact (nothing lost or mixed, at most one line): {counts['exact']}; "
            f"data intact but a traceback: {counts['traceback']}; mixed or damaged: {counts['mixed']}; "
            f"stuck: {counts['stuck']}")


def test_every_fault_of_the_table_has_its_test_and_the_readme_states_the_tally(capsys):
    import importlib

    for _, where, outcome in FAULTS:
        module, name = where.split("::")
        assert outcome in FAULT_OUTCOMES
        assert hasattr(importlib.import_module("tests." + module[:-3].replace("/", ".")), name), where
    line = fault_tally_line()
    with capsys.disabled():
        print(f"\n{line}")
    assert line in (REPO / "docs" / "running.md").read_text().replace("\n", " ")
