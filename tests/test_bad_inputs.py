"""Bad inputs (issue 23, items 10-14 and 16): each one is refused with one line `spfde: error: ...` and
exit 2, before a run directory exists and before any data is loaded or a model is built, and the way out
the line names works as written. BAD_INPUTS is the table of what was tried; the tally in docs/running.md ("What
survives what") is computed from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spfde.plan
import spfde.planning.plan
import spfde.run
from spfde.checks.command_line import precheck_overrides
from spfde.checks.validation import sweep_jobs
from spfde.config import ConfigError
from tests.helpers import REPO, lock_held_by_another_process, make_cfg, run_cli

T = ["dataset=fake", "dataset.train_size=128", "dataset.test_size=32", "dataset.image_size=8", "dataset.channels=1",
     "model.depth=8", "model.width=1", "logger=none", "progress=false"]
CIFAR = ["dataset=cifar10", "model.depth=8", "model.width=1", "logger=none", "progress=false"]
FOLDER = ["model.depth=8", "model.width=1", "dataset.image_size=8", "dataset.workers=0", "logger=none",
          "progress=false"]
S = [*T, "epochs=4", "interval=1", "+search=pareto", "freeze=interval(0.0,0.03)"]  # a search of tiny runs

# Outcomes: "before work" = one line `spfde: error: ...`, exit 2, no run directory, nothing loaded or built.
# The others stay at 0 here: "late" (refused after work started), "traceback", "accepted" (trained anyway).
BEFORE_WORK = "before work"
OUTCOMES = (BEFORE_WORK, "late", "traceback", "accepted")

# Every bad input tried: (issue item, how it is run, arguments, part of its one line, outcome, the way out the
# line names: the arguments that then pass the same checks, or None where the way out is not a command line).
# How: "run" / "plan" = python -m spfde.run / spfde.planning.plan; "busy" = a -m relaunch while a job of the sweep
# still trains; "rank0" / "rank1" = the ranks of a 2-rank torchrun launch; "offline" = no network.
# {gif} {three} {sixteen}: image folders (a class of .gif files only, 3 classes, 16 images); {file}: a file;
# {tmp}: a fresh directory.
BAD_INPUTS = [
    ("10", "run", ["experiment=quickstart", "dataset.num_classes=5"], "digits has 10 classes", BEFORE_WORK,
     ["experiment=quickstart"]),
    ("10", "run", [*FOLDER, "dataset=imagefolder", "dataset.root={gif}"], "b holds no images ImageFolder reads",
     BEFORE_WORK, None),
    ("10", "plan", ["model=foo"], "model=foo is not an option of 'model'", BEFORE_WORK, ["model=vgg19"]),
    ("10", "plan", ["sparsity.ration=0.5"], "did you mean sparsity.ratio?", BEFORE_WORK, ["sparsity.ratio=0.5"]),
    ("10", "plan", ["-m", "seed=0,1", "epochs=abc"], "could not be converted to Integer (all 2 sweep jobs",
     BEFORE_WORK, ["-m", "seed=0,1", "epochs=3"]),
    ("10", "run", [*T, "~epochs"], "'~epochs' removes epochs", BEFORE_WORK, [*T, "epochs=3"]),
    ("10", "run", [*T, "hydra.run.dir={file}"], "is a file, not a directory", BEFORE_WORK,
     [*T, "hydra.run.dir={tmp}/run"]),
    ("10", "run", [*T, "hydra.run.dir={file}/run"], "cannot be created", BEFORE_WORK, [*T, "hydra.run.dir={tmp}/run"]),
    ("10", "run", [*T, "sparsity=lth", "sparsity.lth.round=1", "epochs=3"], "set by the LTH driver", BEFORE_WORK,
     [*T, "sparsity=lth", "epochs=3"]),
    ("10", "busy", ["-m", *T, "seed=0,1", "launcher=local", "hydra.sweep.dir={tmp}/sweep"], "is in use by PID",
     BEFORE_WORK, None),
    ("10", "run", [*T, "optim.lr=[1"], "cannot parse the override 'optim.lr=[1'", BEFORE_WORK, [*T, "optim.lr=1"]),
    ("10", "plan", [*T, "optim.lr=[1"], "cannot parse the override 'optim.lr=[1'", BEFORE_WORK, [*T, "optim.lr=1"]),
    ("10", "run", [*T, "+epochs=3"], "write epochs=3", BEFORE_WORK, [*T, "epochs=3"]),
    ("10", "run", [*T, "~logger"], "logger.name has no value: set logger=none or logger=wandb", BEFORE_WORK, T),
    ("11", "run", ["-m", *T, "sieve=interval(0.0,0.3)"], "needs a sweeper that draws values", BEFORE_WORK,
     ["-m", *T, "sieve=interval(0.0,0.3)", "hydra/sweeper=drawing"]),
    ("11", "run", ["-m", *T, "sievee=interval(0.0,0.3)", "hydra/sweeper=drawing"], "did you mean sieve?",
     BEFORE_WORK, ["-m", *T, "sieve=interval(0.0,0.3)", "hydra/sweeper=drawing"]),
    ("11", "run", ["-m", *T, "seed=interval(0.5,0.7)", "hydra/sweeper=drawing"], "converted to Integer", BEFORE_WORK,
     ["-m", *T, "seed=range(0,3)", "hydra/sweeper=drawing"]),
    ("11", "plan", ["-m", *T, "sieve=interval(0.0,0.3)"], "is drawn by another sweeper", BEFORE_WORK,
     [*T, "sieve=0.15"]),
    ("11", "run", ["-m", *T, "model=glob(none*)"], "matches no option of 'model'", BEFORE_WORK,
     ["-m", *T, "model=glob(res*)"]),
    ("12", "run", [*T, "++sparsity.ration=0.5"], "did you mean sparsity.ratio?", BEFORE_WORK,
     [*T, "sparsity.ratio=0.5"]),
    ("12", "run", [*T, "++foo=1"], "Could not override 'foo'", BEFORE_WORK, T),
    ("12", "run", [*T, "sparsity.dense_layers=[nonexistent]"], "its layers are blocks.0.conv, blocks.1.conv1,",
     BEFORE_WORK, [*T, "sparsity.dense_layers=[blocks.1.conv1]"]),
    ("13", "run", [*T, "sparsity.ratio=0.9999"], "leaves layer blocks.1.conv1 with no weights", BEFORE_WORK,
     "from the message"),
    ("13", "run", [*FOLDER, "dataset=imagenet", "dataset.root={three}"], "has 3 class folders", BEFORE_WORK,
     [*FOLDER, "dataset=imagefolder", "dataset.root={three}"]),
    ("13", "run", [*FOLDER, "dataset=imagefolder", "dataset.root={sixteen}", "sieve=0.5"], "leaves 8 of 16 training",
     BEFORE_WORK, [*FOLDER, "dataset=imagefolder", "dataset.root={sixteen}", "sieve=0.5", "batch_size=8"]),
    ("13", "rank0", [*T, "batch_size=63"], "must divide among the 2 ranks", BEFORE_WORK, [*T, "batch_size=64"]),
    ("13", "rank1", [*T, "batch_size=63"], "", BEFORE_WORK, None),  # rank 0 reports it: rank 1 exits 2 silently
    ("13", "offline", [*CIFAR, "dataset.root={tmp}/cifar"], "CIFAR-10 not found in", BEFORE_WORK, None),
    ("13", "run", [*CIFAR, "dataset.root={tmp}/cifar", "dataset.download=false"],
     "extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) there (tar -xzf",
     BEFORE_WORK, None),
    # tried as a new user would, outside the lists above
    ("outside", "run", [*T, "plan.calibrate=2"], "plan.calibrate is true or false, got 2", BEFORE_WORK,
     [*T, "plan.calibrate=true"]),
    ("outside", "plan", [*T, "plan.calibrate=2"], "plan.calibrate is true or false, got 2", BEFORE_WORK,
     [*T, "plan.calibrate=false"]),
    ("outside", "run", ["-m", *T, "progress=0,1"], "progress is true or false, got 0", BEFORE_WORK,
     ["-m", *T, "progress=true,false"]),
    ("outside", "run", [*T, "hydra.run.dir="], "hydra.run.dir= is empty", BEFORE_WORK, [*T, "hydra.run.dir={tmp}/run"]),
    ("outside", "run", [*T, "optim.lr=${{oops}}"], "optim.lr: Interpolation key 'oops' not found", BEFORE_WORK,
     [*T, "optim.lr=0.1"]),  # {{ }}: the table's arguments are format strings
    ("outside", "plan", [*T, "optim.lr=${{oops}}"], "optim.lr: Interpolation key 'oops' not found", BEFORE_WORK,
     [*T, "optim.lr=0.1"]),
    ("outside", "slurm-env", T, "SLURM_CPUS_PER_TASK='abc' is not a number of CPUs", BEFORE_WORK,
     [*T, "threads=2"]),
    ("outside", "no-key", [*T, "logger=wandb", "logger.mode=online"], "logger.mode=online needs a wandb API key",
     BEFORE_WORK, [*T, "logger=wandb", "logger.mode=offline"]),
    # a search's own settings, each one line before the sweeper runs, so before any file of its study exists
    ("search", "run", ["-m", *S, "sieve=interval(0.3,0.1)"], "its low end 0.3 is not below its high end 0.1",
     BEFORE_WORK, ["-m", *S, "sieve=interval(0.1,0.3)"]),
    ("search", "run", ["-m", *S, "sieve=tag(log,interval(0.0,0.2))"], "a log-scale interval needs a low end above 0",
     BEFORE_WORK, ["-m", *S, "sieve=tag(log,interval(0.01,0.2))"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.n_trials=0"], "a search needs at least 1 trial", BEFORE_WORK,
     ["-m", *S, "hydra.sweeper.n_trials=4"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.n_trials=-1"], "a search needs at least 1 trial", BEFORE_WORK,
     ["-m", *S, "hydra.sweeper.n_trials=4"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.n_jobs=0"], "a batch holds at least 1 trial", BEFORE_WORK,
     ["-m", *S, "hydra.sweeper.n_jobs=2"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.n_trials=abc"], "hydra.sweeper.n_trials=abc: hydra.sweeper.n_trials "
     "takes an integer", BEFORE_WORK, ["-m", *S, "hydra.sweeper.n_trials=4"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.sampler.seed=abc"], "hydra.sweeper.sampler.seed takes an integer",
     BEFORE_WORK, ["-m", *S, "hydra.sweeper.sampler.seed=1"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.decimals=abc"], "hydra.sweeper.decimals takes an integer",
     BEFORE_WORK, ["-m", *S, "hydra.sweeper.decimals=2"]),
    ("search", "run", ["-m", *S, "hydra.sweeper.max_failure_rate=-1"], "a share of a batch's trials, in [0, 1]",
     BEFORE_WORK, ["-m", *S, "hydra.sweeper.max_failure_rate=0.5"]),
    ("search", "run", ["-m", *S, "sieve=range(0,1,0)"], "a range's step cannot be 0", BEFORE_WORK,
     ["-m", *S, "sieve=range(0,0.3,0.1)"]),
    ("search", "run", S, "+search=pareto is a search: add -m", BEFORE_WORK, ["-m", *S]),
    ("search", "plan", ["-m", *S, "search.budget=2"], "search.budget=2.0: a share of the plain run's FLOPs",
     BEFORE_WORK, ["-m", *S, "search.budget=0.8"]),
]


def tally() -> dict[str, int]:
    counts = {"tried": len(BAD_INPUTS)} | {o: 0 for o in OUTCOMES}
    for *_, outcome, _fix in BAD_INPUTS:
        counts[outcome] += 1
    return counts


def tally_line() -> str:
    """The statement of the table's counts in docs/running.md."""
    t = tally()
    return (f"bad inputs tried: {t['tried']}; one line before any work: {t[BEFORE_WORK]}; late: {t['late']}; "
            f"traceback: {t['traceback']}; silently accepted: {t['accepted']}")


class DrawingSweeper:
    """Stands in for a sweeper plugin that draws values (Optuna's, Ax, Nevergrad): only its config is used."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    from hydra.core.config_store import ConfigStore
    from PIL import Image

    ConfigStore.instance().store(group="hydra/sweeper", name="drawing",
                                 node={"_target_": f"{__name__}.DrawingSweeper", "params": {}})
    root = tmp_path_factory.mktemp("inputs")

    def folder(name: str, classes: str, per_class: int, suffix: str = ".png") -> Path:
        for split in ("train", "val"):
            for c in classes:
                (root / name / split / c).mkdir(parents=True)
                for i in range(per_class):
                    image = Image.new("RGB", (12, 12), (20 * i, 80, 120))
                    image.save(root / name / split / c / f"{i}{suffix if c != 'b' or name != 'gif' else '.gif'}")
        return root / name

    (root / "file").write_text("not a directory\n")
    return {"gif": folder("gif", "ab", 2), "three": folder("three", "abc", 2), "sixteen": folder("sixteen", "ab", 8),
            "file": root / "file"}


def entry(how: str, args: list[str] | None = None) -> tuple:
    """The one entry of BAD_INPUTS run this way (with these arguments)."""
    (found,) = [e for e in BAD_INPUTS if e[1] == how and args in (None, e[2])]
    return found


def filled(args: list[str], paths: dict[str, Path], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **paths) for a in args]


def entries(*hows: str) -> list:
    return [pytest.param(e, id=f"{e[0]}-{e[1]}-{' '.join(a for a in e[2] if a not in T + FOLDER + CIFAR)}")
            for e in BAD_INPUTS if e[1] in hows]


def run_in_process(how: str, args: list[str], tmp: Path, monkeypatch, capsys) -> tuple[int, str]:
    """`python -m spfde.run|plan args` in this process, in `tmp`: exit status and stderr. Starting a run
    (Hydra's main) fails the test."""
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(spfde.run, "main", lambda: pytest.fail("the run started"))
    monkeypatch.setattr(sys, "argv", [f"spfde.{how}", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        spfde.run.cli() if how == "run" else spfde.plan.main(args)
    return done.value.code, capsys.readouterr().err


def assert_one_line_before_work(code: int, stderr: str, expected: str, tmp: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("spfde: error: ") and expected in lines[0], stderr
    assert not (tmp / "outputs").exists() and not (tmp / "run").exists()  # no run directory


@pytest.mark.parametrize("entry", entries("run", "plan"))
def test_a_bad_input_is_one_line_before_any_work(entry, paths, tmp_path, monkeypatch, capsys):
    _, how, args, expected, outcome, _ = entry
    code, stderr = run_in_process(how, filled(args, paths, tmp_path), tmp_path, monkeypatch, capsys)
    assert outcome == BEFORE_WORK
    assert_one_line_before_work(code, stderr, expected, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("entry", [e for e in entries("run", "plan", "rank0") if e.values[0][5] is not None])
def test_the_way_out_an_error_names_works_as_written(entry, paths, tmp_path, monkeypatch, capsys):
    """The arguments the one line says to use pass the same checks (nothing is started)."""
    _, how, args, _, _, fix = entry
    if how == "rank0":
        monkeypatch.setenv("WORLD_SIZE", "2")
    if fix == "from the message":
        code, stderr = run_in_process(how, filled(args, paths, tmp_path), tmp_path, monkeypatch, capsys)
        fix = [*args, re.search(r"sparsity\.dense_layers=\[[^]]*\]", stderr)[0]]
    fix = filled(fix, paths, tmp_path)
    if how == "plan":
        from spfde.checks.validation import check_before_work, checked_sweep, compose_checked, is_hydra

        overrides = [a for a in fix if not a.startswith("-") and not is_hydra(a)]
        if "-m" in fix:
            checked_sweep(overrides, data=False)
        else:
            check_before_work(compose_checked(overrides), data=False)
    else:
        monkeypatch.chdir(tmp_path)
        precheck_overrides(fix)


@pytest.mark.parametrize("how", ["slurm-env", "no-key"])
def test_bad_settings_from_the_environment_are_one_line_before_any_work(how, tmp_path, monkeypatch, capsys):
    """SLURM_CPUS_PER_TASK that is no number (the thread count comes from it); logger.mode=online without a wandb API
    key (wandb.init would wait ~90 s after the run directory exists, then fail)."""
    from spfde.checks.validation import wandb_online_problem

    _, _, args, expected, _, fix = entry(how)
    if how == "slurm-env":
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "abc")
    else:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
        wandb_online_problem.cache_clear()
    code, stderr = run_in_process("run", args, tmp_path, monkeypatch, capsys)
    wandb_online_problem.cache_clear()
    assert_one_line_before_work(code, stderr, expected, tmp_path)
    monkeypatch.chdir(tmp_path)
    precheck_overrides(fix)  # the way out


@pytest.mark.parametrize("rank", ["0", "1"])
def test_torchrun_ranks_refuse_an_indivisible_batch_before_any_work_rank_0_says_it(rank, tmp_path, monkeypatch,
                                                                                   capsys):
    _, _, args, expected, _, _ = entry(f"rank{rank}")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    code, stderr = run_in_process("run", args, tmp_path, monkeypatch, capsys)
    if rank == "0":
        assert_one_line_before_work(code, stderr, expected, tmp_path)
    else:
        assert code == 2 and stderr == "" and not (tmp_path / "outputs").exists()


def test_cifar_offline_fails_before_the_run_dir_saying_where_to_put_it(paths, tmp_path, monkeypatch, capsys):
    import urllib.error

    import torchvision.datasets

    def offline(self):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    _, _, args, expected, _, _ = entry("offline")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    code, stderr = run_in_process("run", filled(args, paths, tmp_path), tmp_path, monkeypatch, capsys)
    assert_one_line_before_work(code, stderr, expected, tmp_path)
    assert "download failed" in stderr and "cifar-10-python.tar.gz" in stderr


@pytest.mark.slow
def test_relaunching_a_sweep_whose_job_still_trains_names_it_before_anything_starts(paths, tmp_path, monkeypatch,
                                                                                   capsys):
    """A killed launcher (-m launcher=local) leaves its jobs training; a relaunch says which, one line each."""
    _, _, args, expected, _, _ = entry("busy")
    args = filled(args, paths, tmp_path)
    (tmp_path / "sweep").mkdir()
    jobs, _ = sweep_jobs([a for a in args if a != "-m" and not a.startswith("hydra")])
    from spfde.config import compose_config

    busy = tmp_path / "sweep" / str(compose_config([*jobs[1], *args[-1:]], with_hydra=True).hydra.sweep.subdir)
    busy.mkdir()
    with lock_held_by_another_process(busy) as holder:
        code, stderr = run_in_process("run", args, tmp_path, monkeypatch, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith(f"spfde: error: {busy} {expected} {holder.pid}") and f"kill -9 {holder.pid}" in lines[0]
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing submitted


# ----------------------------------------------------------------------------- item 11: other sweepers


@pytest.mark.slow
def test_sweeps_are_checked_per_value_and_other_sweepers_values_are_left_to_them(paths):
    jobs, drawn = sweep_jobs([*T, "seed=range(0,2)", "model=glob(res*)", "sieve=tag(log,interval(0.001,0.3))"])
    assert len(jobs) == 4 and {a for j in jobs for a in j if a.startswith("model=")} == {"model=resnet32",
                                                                                         "model=resnet50"}
    assert drawn == {"sieve=tag(log,interval(0.001,0.3))": "sieve=0.1505"}
    precheck_overrides(["-m", *T, "sieve=tag(log,interval(0.001,0.3))", "seed=0,1", "hydra/sweeper=drawing"])
    with pytest.raises(ConfigError, match=r"1 of 2 sweep jobs are invalid.*\n  job .*optim.lr=-1: optim.lr must be"):
        precheck_overrides(["-m", *T, "sieve=interval(0.0,0.3)", "optim.lr=choice(0.1,-1)", "hydra/sweeper=drawing"])


# ----------------------------------------------------------------------------- item 14: the advice works


@pytest.mark.slow
def test_the_bad_image_advice_on_bad_file_skip_resumes_the_run_in_progress(paths, tmp_path, monkeypatch):
    """An image that stops a run in its second epoch: the error's way out (dataset.on_bad_file=skip) resumes
    the run instead of being refused as other settings."""
    import shutil

    from spfde.data.loaders import BadImageError
    from tests.helpers import crash_at_epoch, read_metrics, run_training

    root = tmp_path / "data"
    shutil.copytree(paths["three"], root)
    overrides = ["experiment=quickstart", "dataset=imagefolder", f"dataset.root={root}", *FOLDER, "epochs=2",
                 "batch_size=2", "dataset.in_memory=false", "dataset.augment=cifar", "sparsity=dense"]
    with monkeypatch.context() as m:
        crash_at_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_training(overrides, tmp_path / "run")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # damaged after epoch 1: a valid header, no image
    with pytest.raises(BadImageError, match="add dataset.on_bad_file=skip"):
        run_training(overrides, tmp_path / "run")
    summary = run_training([*overrides, "dataset.on_bad_file=skip"], tmp_path / "run")
    assert summary["epochs"] == 2 and [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_bad_file_header_advice_skip_passes_the_up_front_check(paths, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(paths["three"], root)
    (root / "train" / "a" / "0.png").write_text("not an image")
    args = [*FOLDER, "dataset=imagefolder", f"dataset.root={root}"]
    with pytest.raises(ConfigError, match=r"0.png is not a PNG file: replace it, or add dataset.on_bad_file=skip"):
        precheck_overrides(args)
    precheck_overrides([*args, "dataset.on_bad_file=skip"])


def test_a_gif_only_class_folder_is_named_and_converting_it_passes(paths, tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(paths["gif"], root)
    for gif in root.rglob("*.gif"):
        Image.open(gif).convert("RGB").save(gif.with_suffix(".png"))
        gif.unlink()
    precheck_overrides([*FOLDER, "dataset=imagefolder", f"dataset.root={root}"])


def test_the_up_front_folder_check_reads_what_imagefolder_reads():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from spfde.data.folders import IMAGE_MAGIC

    assert sorted(IMAGE_MAGIC) == sorted(IMG_EXTENSIONS)


def test_fixed_class_counts_match_the_dataset_files():
    from omegaconf import OmegaConf

    from spfde.checks.validation import CLASS_COUNTS
    from spfde.config import CONF_DIR

    for name, count in CLASS_COUNTS.items():
        assert OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml").num_classes == count
        assert make_cfg([f"dataset={name}"]).dataset.num_classes == count


# ----------------------------------------------------------------------------- item 16, the tally, the CLI


def test_readme_states_the_tally_of_this_table():
    counts = tally()
    assert counts["tried"] == counts[BEFORE_WORK] and counts["late"] == counts["traceback"] == counts["accepted"] == 0
    assert tally_line() in (REPO / "docs" / "running.md").read_text().replace("\n", " ")


@pytest.mark.slow
def test_the_commands_refuse_bad_inputs_in_one_line_before_a_run_dir_exists(tmp_path):
    """The real entry points (python -m spfde.run / spfde.planning.plan, and a rank of a torchrun launch)."""
    cases = [("run", [*T, "~epochs"], {}), ("plan", ["-m", "seed=0,1", "epochs=abc"], {}),
             ("rank0", [*T, "batch_size=63"], {"WORLD_SIZE": "2", "RANK": "0"})]
    for how, args, env in cases:
        expected = entry(how, args)[3]
        module = "spfde.plan" if how == "plan" else "spfde.run"
        os.environ.update(env)
        try:
            proc = run_cli(args, cwd=tmp_path, module=module, timeout=120)
        finally:
            for key in env:
                del os.environ[key]
        assert_one_line_before_work(proc.returncode, proc.stderr, expected, tmp_path)


@pytest.mark.slow
def test_torchrun_with_an_indivisible_batch_prints_the_error_once(tmp_path):
    """Rank 0 alone says it; torchrun then adds its own report of the failed ranks (its exit status 1)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("no torchrun next to this Python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "spfde.run", *T,
                           "batch_size=63"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("spfde: error:")]
    assert len(errors) == 1 and "must divide among the 2 ranks" in errors[0], proc.stderr[-2000:]
    assert proc.returncode != 0 and not (tmp_path / "outputs").exists() and time.perf_counter() - t0 < 100
