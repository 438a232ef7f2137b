"""Test helpers: compose configs the way the CLI does, and run short trainings in tmp dirs
(pytest's own setup is in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import open_dict

from spfde.checks.validation import validate
from spfde.config import compose_config
from tests import warm_start

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

TEST_DEFAULTS = {"logger": "none", "progress": "false", "device": "cpu"}


def make_cfg(overrides: list[str], run_dir: Path | None = None):
    """Compose like `python -m spfde.run` would, with logger=none and no progress bar by default."""
    given = {o.split("=")[0].lstrip("+") for o in overrides}
    defaults = [f"{k}={v}" for k, v in TEST_DEFAULTS.items() if k not in given]
    cfg = compose_config([*defaults, *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir) if run_dir is not None else "unused"
    validate(cfg)
    return cfg


# the digits at their own 8x8 pixels (the quickstart upsamples them to 16): half the CPU time of a training step;
# the tests whose checks depend on the image size keep 16x16 and say why
NATIVE_DIGITS = "dataset.image_size=8"


def quick_overrides(*extra: str) -> list[str]:
    """The quickstart setup shrunk for tests: digits at 8x8, small ResNet, few epochs."""
    return ["experiment=quickstart", "model.depth=8", NATIVE_DIGITS, "epochs=2", *extra]


def run_training(overrides: list[str], run_dir: Path) -> dict:
    from spfde.training.loop import train

    return train(make_cfg(overrides, run_dir))


def crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the evaluation of `epoch` raise, as if the job died there (its checkpoint is one epoch old)."""
    import spfde.training.loop

    calls = {"n": 0}
    real = spfde.training.loop.evaluate

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(spfde.training.loop, "evaluate", evaluate)


def crash_then_resume(overrides: list[str], run_dir: Path, epoch: int, monkeypatch) -> dict:
    """Train until the evaluation of `epoch` dies, then start the run again: it resumes."""
    import pytest

    with monkeypatch.context() as m:
        crash_at_epoch(m, epoch)
        with pytest.raises(KeyboardInterrupt):
            run_training(overrides, run_dir)
    return run_training(overrides, run_dir)


def summary_core(summary: dict) -> dict:
    """What a resumed run's summary must share with the straight run's: all but time, directory and id."""
    return {k: v for k, v in summary.items() if k not in ("train_time_s", "run_dir", "run_id")}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def run_cli(args: list[str], cwd: Path, module: str = "spfde.run", timeout: int = 600,
            python_flags: list[str] = ()) -> subprocess.CompletedProcess:
    # the checkout under test comes first, whichever copy of spfde the environment has installed
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "PYTHONPATH": path}
    if not python_flags and warm_start.available():  # forked from a warm interpreter: see tests/warm_start.py
        return warm_start.run(module, args, cwd, env, timeout)
    return subprocess.run([sys.executable, *python_flags, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@contextlib.contextmanager
def lock_held_by_another_process(run_dir: Path, seconds: int = 120):
    """A process that holds `run_dir`'s lock (lock_run_dir) while the block runs; yields it (its pid).
    Killed at the end: the OS releases the lock of a killed process."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from spfde.rundir.lifecycle import lock_run_dir; "
                               f"lock_run_dir({str(run_dir)!r}); print('locked', flush=True); time.sleep({seconds})"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
