"""Atomic save/load of the whole run state, and the run directory's lifecycle (new, resume, done).

Every write goes through a temporary file that is fsynced and renamed over the old one (then the
directory is fsynced): a crash, a kill or a full disk leaves either the old file or the new one, never
half of one. Checkpoints load with `weights_only=True`: a file holding other Python objects is refused
instead of run (run directories are shared between people).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "last.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"

log = logging.getLogger("spfde")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as it is (damaged file, full disk, in use, other config);
    the message is one line that says what and the ways out."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, rename it over `path` and fsync
    the directory: a crash never leaves a half-written file behind. On any failure the temporary
    file is removed (a full disk stays no fuller) and the old file is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunDirError(f"disk full: could not write {path} ({e.strerror}; "
                              f"{shutil.disk_usage(path.parent).free} bytes free on that disk). The previous "
                              f"{path.name} is intact; free some space and rerun the same command") from None
        if isinstance(e, RuntimeError) and "No space left" in str(e):  # torch.save's writer wraps ENOSPC
            raise RunDirError(f"disk full: could not write {path}. The previous {path.name} is intact; "
                              "free some space and rerun the same command") from None
        raise
    fsync_dir(path.parent)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a file written by `save_checkpoint` (or the analysis/LTH writers): tensors and plain Python
    values only. A damaged or foreign file is a one-line RunDirError naming it and the ways out."""
    path = Path(path)
    ways_out = (f"add fresh=true to start over (earlier results move to {path.parent}/previous-<time>/), "
                f"or delete {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise RunDirError(f"{path} is damaged (it does not unpickle); {ways_out}") from None
        found = next((line.strip() for line in str(e).splitlines() if "nsupported" in line), "other objects")
        raise RunDirError(f"{path} was refused: it holds Python objects other than tensors and plain values, "
                          f"and loading them could run code ({found.rstrip('.')}); if you did not write it, "
                          f"{ways_out}") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, empty file, garbage: all mean "damaged"
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else "empty or truncated"
        raise RunDirError(f"{path} is damaged ({type(e).__name__}: {detail}); {ways_out}") from None


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def rng_state(generator: torch.Generator) -> dict:
    """Every random state of the run, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "data": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def finished_summary(run_dir: Path) -> dict | None:
    """The summary of a finished run, or None. A damaged summary means "not finished": it is moved
    aside and the run finishes again from its checkpoint."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        kept = set_aside(path)
        log.warning(f"{path} was damaged (kept as {kept.name}): the run is treated as not finished")
        return None


def set_aside(path: Path) -> Path:
    """Rename a damaged file to <name>.corrupt-<time> (kept for inspection, out of the way)."""
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, dest)
    return dest


def archive_previous(run_dir: Path, extra: tuple[str, ...] = ()) -> Path | None:
    """Move earlier results of this directory aside (for fresh=true): nothing is deleted. `extra`
    names more entries (glob patterns) that belong to the results."""
    from fnmatch import fnmatch

    run_dir = Path(run_dir)
    names = (CHECKPOINT, SUMMARY, METRICS, "wandb", *extra)
    old = [p for p in run_dir.iterdir() if any(fnmatch(p.name, pattern) for pattern in names)]
    if not old:
        return None
    stamp = time.strftime('%Y%m%d-%H%M%S')
    dest = run_dir / f"previous-{stamp}"
    n = 1
    while dest.exists():  # two archives within one second
        n += 1
        dest = run_dir / f"previous-{stamp}-{n}"
    dest.mkdir()
    for p in old:
        shutil.move(str(p), dest / p.name)
    return dest


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """metrics.jsonl holds one line per finished epoch; rewritten atomically (it is small), so a crash
    or a full disk never leaves half a line."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(Path(run_dir) / METRICS, lambda tmp: tmp.write_text(text))


def restore_metrics(run_dir: Path, records: list[dict] | None, completed_epochs: int) -> list[dict]:
    """On resume the checkpoint is the source of truth: metrics.jsonl becomes exactly its records
    (epochs past the checkpoint belong to lost work). A file that does not parse is kept as
    metrics.jsonl.corrupt-<time>; a missing one is rebuilt with a warning. A checkpoint without records
    (older versions) keeps the lines of the file that parse, up to its epoch. Returns the records."""
    path = Path(run_dir) / METRICS
    parsed, damaged = [], False
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                damaged = damaged or bool(line.strip())
    if records is None:
        records = [r for r in parsed if isinstance(r, dict) and r.get("epoch", 0) <= completed_epochs]
    if damaged:
        kept = set_aside(path)
        log.warning(f"{path} was damaged (kept as {kept.name}): rewritten from the checkpoint "
                    f"({len(records)} epochs)")
    elif not path.exists() and records:
        log.warning(f"{path} was missing: rebuilt from the checkpoint ({len(records)} epochs)")
    write_metrics(run_dir, records)
    return records
