"""Atomic save/load of the whole run state, and the run directory's lifecycle (new, resume, done).

Every write goes through a temporary file that is fsynced and renamed over the old one (then the
directory is fsynced): a crash, a kill or a full disk leaves either the old file or the new one, never
half of one. Checkpoints load with `weights_only=True`: a file holding other Python objects is refused
instead of run (run directories are shared between people), and carry a checksum of their contents: a file
changed after it was written (a flipped bit, overwritten bytes) is refused, naming it, instead of resumed.

torch and numpy load inside the functions that need them (the checkpoint and the random states), not when this
module loads: `spfde.status` and `spfde.report` read run directories through it and start without torch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from spfde.errors import SpfdeError

if TYPE_CHECKING:
    import torch

CHECKPOINT = "last.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"

log = logging.getLogger("spfde")


class RunDirError(SpfdeError, RuntimeError):
    """A run directory that cannot be used as it is (damaged file, full disk, in use, other config);
    the message is one line that says what and the ways out."""


class RunDirInUse(RunDirError):
    """Another process trains in the run directory: its files (run.log among them) are that process's."""


NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_regular(path: Path) -> str:
    """What stands at `path` instead of a regular file ("a FIFO", "a directory", ...), or "" (a regular file, or
    nothing): reading a FIFO or a device would wait forever for a writer."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return ""
    return "" if stat.S_ISREG(mode) else next((name for test, name in NOT_REGULAR if test(mode)), "not a file")


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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a directory that turned read-only: nothing was written there either
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and is_writer_error(e)):
            raise RunDirError(write_failure(path, e)) from None
        raise
    fsync_dir(path.parent)


def is_writer_error(error: RuntimeError) -> bool:
    """torch.save's file writer reports a full disk or a failed write as a RuntimeError (e.g. "basic_ios::clear:
    iostream error", "PytorchStreamWriter failed writing file ...")."""
    text = str(error)
    return any(m in text for m in ("iostream", "No space left", "StreamWriter", "file write failed",
                                   "inline_container", "unexpected pos"))


def write_failure(path: Path, error: Exception) -> str:
    """One line for a file that could not be written: why (a full disk named as such), what is kept, what to do."""
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in reason \
        or (free is not None and free < 64 * 2**20)
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
    if full:
        return (f"disk full: could not write {path}: {reason} ({free} bytes free on that disk); {kept}. Free some "
                "space and rerun the same command")
    return f"could not write {path}: {reason}; {kept}. Fix the cause and rerun the same command"


CHECKSUM = "checksum"


def contents_digest(value) -> str:
    """A digest of everything a checkpoint holds: every tensor's dtype, shape and bytes, every plain value,
    in order. Stored in the file, it tells a file whose contents changed after writing (torch.load checks no
    checksum of its own: a flipped bit in a weight loads and trains on)."""
    # torch loads here, not at import: spfde.status and spfde.report read run directories without it
    import torch

    h = hashlib.blake2b(digest_size=20)

    def feed(v) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(v, dict):
            h.update(b"{")
            for k, x in v.items():
                feed(k)
                feed(x)
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[" if isinstance(v, list) else b"(")
            for x in v:
                feed(x)
            h.update(b"]")
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())

    feed(value)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    """The state plus its checksum, written atomically (last.pt, the LTH rewind point, analysis snapshots)."""
    import torch

    atomic_write(path, lambda tmp: torch.save({**state, CHECKSUM: contents_digest(state)}, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a file written by `save_checkpoint` (or the analysis/LTH writers): tensors and plain Python
    values only. A damaged or foreign file is a one-line RunDirError naming it and the ways out."""
    path = Path(path)
    ways_out = (f"add fresh=true to start over (earlier results move to {path.parent}/previous-<time>/), "
                f"or delete {path}")
    if kind := not_regular(path):
        raise RunDirError(f"{path} is {kind}, not a checkpoint file; {ways_out}")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    if not isinstance(state, dict):
        raise RunDirError(f"{path} is damaged (not a checkpoint: it holds a {type(state).__name__}); {ways_out}")
    stored = state.pop(CHECKSUM, None)  # files of versions before checksums have none: loaded as they are
    if stored is not None and stored != contents_digest(state):
        raise RunDirError(f"{path} is damaged: its contents no longer match the checksum written with it (a changed "
                          f"bit or byte, e.g. a disk or copy error); {ways_out}")
    return state


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def rng_state(generator: torch.Generator) -> dict:
    """Every random state of the run, as tensors and plain values (loadable with weights_only)."""
    import numpy as np
    import torch

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
    import numpy as np
    import torch

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


# what a finished run's summary.json must hold (and, where present, of which type) to count as one
SUMMARY_REQUIRED = {"final_acc": (int, float), "train_flops": (int, float)}
SUMMARY_TYPED = {"epochs": (int,), "best_acc": (int, float), "rounds": (int,)}
# the ranges a finished run's numbers lie in: (low, high, low included); reports average them
SUMMARY_RANGES = {"final_acc": (0.0, 1.0, True), "best_acc": (0.0, 1.0, True), "final_acc5": (0.0, 1.0, True),
                  "train_flops": (0.0, math.inf, False), "dense_train_flops": (0.0, math.inf, False),
                  "inference_flops": (0.0, math.inf, False), "memory_min_bytes": (0.0, math.inf, False),
                  "memory_avg_bytes": (0.0, math.inf, False), "memory_dst_min_bytes": (0.0, math.inf, False),
                  "train_time_s": (0.0, math.inf, True), "epochs": (1, math.inf, True)}


def summary_problem(summary) -> str | None:
    """Why a parsed summary.json is not a finished run's summary (None if it is)."""
    if not isinstance(summary, dict):
        return f"not an object but a {type(summary).__name__}"
    for key, types in {**SUMMARY_REQUIRED, **SUMMARY_TYPED}.items():
        value = summary.get(key)
        if value is None:
            if key in SUMMARY_REQUIRED:
                return f"no {key}"
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{key} is {value!r}, not a {'whole ' if types == (int,) else ''}number"
    for key, (low, high, closed) in SUMMARY_RANGES.items():
        value = summary.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or not (low <= value if closed else low < value) or value > high:
            return f"{key} is {value!r}, out of range ({'[' if closed else '('}{low:g}, {high:g}])"
    return None


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """(summary, None) for a finished run's summary.json, (None, why) for a damaged one."""
    if kind := not_regular(path):
        return None, f"{kind}, not a regular file"
    try:
        summary = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not JSON ({type(e).__name__})"
    problem = summary_problem(summary)
    return (None, problem) if problem else (summary, None)


def finished_summary(run_dir: Path) -> dict | None:
    """The summary of a finished run, or None. A damaged summary (not JSON, or JSON of the wrong shape) means
    "not finished": it is moved aside and the run finishes again from its checkpoint."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    if kind := not_regular(path):  # reading it could block forever; moving it aside is the user's call
        raise RunDirError(f"{path} is {kind}, not a summary file: remove it (the run then finishes from its "
                          f"checkpoint), or use another run dir")
    summary, problem = read_summary(path)
    if problem:
        kept = set_aside(path)
        log.warning(f"{path} was damaged ({problem}; kept as {kept.name}): the run is treated as not finished")
    return summary


def unique_name(path: Path, make) -> Path:
    """`make(candidate)` on <path>, then <path>-2, -3, ... until it creates one that did not exist (exclusively:
    nothing is ever overwritten, even when the clock steps back or two processes race)."""
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            n += 1


def set_aside(path: Path) -> Path:
    """Rename a damaged file to <name>.corrupt-<time> (kept for inspection, out of the way, never over an
    earlier kept copy)."""
    def claim(candidate: Path) -> None:
        os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))

    dest = unique_name(path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"), claim)
    os.replace(path, dest)  # over the empty placeholder this process created
    return dest


ARCHIVING = ".archiving"  # an archive in progress: the folder it goes to, then the extra patterns
# Everything a run writes, in the order `fresh` moves it: the summary first (the old run stops counting as
# finished), the checkpoint last. An archive that a kill interrupts is finished by the next launch.
RESULTS = (SUMMARY, METRICS, "analysis", "wandb", "config.yaml", ".hydra-accepted", f"{METRICS}.corrupt-*",
           f"{SUMMARY}.corrupt-*", f"{CHECKPOINT}.corrupt-*", ".*.tmp[0-9]*")


def archive_previous(run_dir: Path, extra: tuple[str, ...] = ()) -> Path | None:
    """Move everything an earlier run of this directory wrote into previous-<time>/ (fresh=true): nothing is
    deleted. `extra` names more entries (glob patterns) that belong to the results (LTH's rounds). The folder
    is written to `.archiving` first: a launch that finds it finishes the move before anything else."""
    run_dir = Path(run_dir)
    if not results_in(run_dir, extra):
        return None
    dest = unique_name(run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}", lambda d: d.mkdir())
    atomic_write(run_dir / ARCHIVING, lambda tmp: tmp.write_text("\n".join([dest.name, *extra]) + "\n"))
    return finish_archive(run_dir)


def finish_archive(run_dir: Path) -> Path | None:
    """Complete an archive started by archive_previous (perhaps by a process that was killed mid-way); returns
    its folder, or None when none was under way."""
    marker = Path(run_dir) / ARCHIVING
    if not marker.exists():
        return None
    name, *extra = [line for line in marker.read_text().splitlines() if line]
    dest = Path(run_dir) / name
    dest.mkdir(exist_ok=True)
    for p in results_in(run_dir, tuple(extra)):
        shutil.move(str(p), dest / p.name)
    marker.unlink()
    fsync_dir(Path(run_dir))
    return dest


def results_in(run_dir: Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """The entries of run_dir an earlier run wrote, in archiving order (checkpoint last)."""
    from fnmatch import fnmatch

    patterns = (*RESULTS, *extra, CHECKPOINT)
    entries = [p for p in Path(run_dir).iterdir() if p.name != ARCHIVING]
    order = {}
    for p in entries:
        rank = next((i for i, pattern in enumerate(patterns) if fnmatch(p.name, pattern)), None)
        if rank is not None:
            order[p] = rank
    return sorted(order, key=lambda p: (order[p], p.name))


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
