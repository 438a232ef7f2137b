"""Atomic save/load of the whole run state, and the run directory's lifecycle (new, resume, done)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "last.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: a crash never leaves a
    half-written file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def rng_state(generator: torch.Generator) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "data": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def finished_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def archive_previous(run_dir: Path, extra: tuple[str, ...] = ()) -> Path | None:
    """Move earlier results of this directory aside (for fresh=true): nothing is deleted. `extra`
    names more entries (glob patterns) that belong to the results."""
    from fnmatch import fnmatch

    run_dir = Path(run_dir)
    names = (CHECKPOINT, SUMMARY, METRICS, "wandb", *extra)
    old = [p for p in run_dir.iterdir() if any(fnmatch(p.name, pattern) for pattern in names)]
    if not old:
        return None
    dest = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in old:
        shutil.move(str(p), dest / p.name)
    return dest


def truncate_metrics(run_dir: Path, completed_epochs: int) -> None:
    """Keep the metrics of epochs the checkpoint covers; later lines belong to lost work."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= completed_epochs]
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))
