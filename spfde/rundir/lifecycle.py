"""What keeps a run directory to one run: an exclusive lock (one process at a time), a fingerprint of
the result-changing config and data (a resume with other settings is refused), `fresh=true` applied once
per launch (a requeued job resumes), a stop on a diverged loss and one-line stops on SIGTERM/SIGINT."""

from __future__ import annotations

# Hydra and the config load inside the one function that compares overrides: keeps start-up fast for
# the commands that only read run directories (status, report)
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from spfde.errors import SpfdeError
from spfde.rundir.checkpoint import (
    CHECKPOINT,
    METRICS,
    SUMMARY,
    RunDirError,
    RunDirInUse,
    archive_previous,
    finish_archive,
    not_regular,
)

log = logging.getLogger("spfde")

LOCK = ".lock"
LAUNCH = ".launch"
HYDRA_KEPT = ".hydra-accepted"  # copy of .hydra/ from the last launch that passed the fingerprint check

# Keys that do not change a run's results (where it runs, how it reports, how fast it loads data);
# everything else in the config is part of the fingerprint. dataset.root enters as the data identity.
# dataset.on_bad_file only says whether a run stops at an unreadable image (a stop keeps nothing of its epoch).
NOT_RESULT_KEYS = ("fresh", "device", "progress", "logger", "threads", "run_dir", "plan", "search", "experiment_name",
                   "eval_batch_size", "deterministic", "channels_last", "cuda_graphs", "dataset.root",
                   "dataset.workers", "dataset.timeout_s", "dataset.download", "dataset.on_bad_file",
                   "sparsity.lth.workdir")
ROOTED_DATASETS = ("cifar10", "cifar100", "imagenet", "imagefolder")


class TrainingDiverged(SpfdeError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; raised in the main thread so the run stops where it is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ----------------------------------------------------------------------------- lock

_held: dict[Path, int] = {}  # run dirs this process has locked: their open descriptors (the OS releases them
# when the process dies)


def lock_run_dir(run_dir: Path) -> None:
    """Take an exclusive lock on the run directory itself for the rest of this process (fcntl.flock on the
    directory: nothing a user deletes by accident, and released by the OS when the process ends, however it
    ends). `.lock` only tells who holds it. A second process fails at once with the holder's PID and host,
    and leaves the holder's `.hydra/` as it was (Hydra rewrote it before this check could run)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        busy = not try_flock(fd)
    except OSError:  # NFS emulates flock with a write lock, which a directory cannot take: lock the file
        os.close(fd)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        busy = not try_flock(fd)
    if busy:
        os.close(fd)
        try:
            holder = (run_dir / LOCK).read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        restore_hydra_record(run_dir)
        raise RunDirInUse(f"{run_dir} is in use by {holder}: two processes must not train one run. Wait for it "
                          "to finish, stop it (kill -9 <its PID> on its host, scancel on SLURM: it resumes from its "
                          "last finished epoch; a killed sweep launcher leaves its jobs running), or use another "
                          "run dir")
    _held[run_dir] = fd
    try:
        (run_dir / LOCK).write_text(f"PID {os.getpid()} on host {socket.gethostname()} "
                                    f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    except OSError:
        pass  # informative only (a read-only run dir is reported where something must be written)


def try_flock(fd: int, patience_s: float = 1.0) -> bool:
    """An exclusive flock, waiting at most `patience_s`: False when another process holds it. The short wait
    lets a reader that only looks (`spfde.results.status` takes a shared lock for an instant) never fail a job."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def release_run_dir(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


def release_run_dirs() -> None:
    """Release every run directory this process locked (a sweep's jobs run in-process are over)."""
    for run_dir in list(_held):
        release_run_dir(run_dir)


def remove_stale_temp_files(run_dir: Path) -> None:
    """Remove the temporary files of writes that a kill interrupted (`.<name>.tmp<PID>`): whoever wrote them is
    gone, since this process holds the run directory's lock."""
    for tmp in [*run_dir.glob(".*.tmp[0-9]*"), *run_dir.glob("analysis/.*.tmp[0-9]*")]:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- before Hydra writes


def check_output_dir(args: list[str]) -> None:
    """The run directory (the sweep directory with -m) must be creatable and writable on a disk with room, checked
    before Hydra creates it and writes its log and `.hydra/` there (where a full or read-only disk is a traceback
    from Hydra's file logging). Raises RunDirError (one line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spfde.config import compose_config

    flags = {a for a in args if a.startswith("-")}
    if not flags <= {"-m", "--multirun"}:  # --help, --cfg, -sc ...: Hydra's own commands write nothing
        return
    multirun = bool(flags)
    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    cfg = compose_config([o.input_line for o in parsed if not o.is_sweep_override()], with_hydra=True)
    path = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).expanduser().absolute()
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".spfde-probe.tmp{os.getpid()}"
        try:
            with open(probe, "wb") as f:  # room for Hydra's files and the first writes of the run
                f.write(b"\0" * PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
        raise RunDirError(f"cannot write in {path} ({e.strerror or e}; {free} bytes free on that disk): free some "
                          f"space or make it writable, or choose another directory with {key}=...") from None
    if not multirun:
        check_run_files(path)


# what a run reads or appends to in its directory (Hydra opens run.log before any of our code runs)
RUN_FILES = (CHECKPOINT, SUMMARY, METRICS, "config.yaml", "run.log")


def check_run_files(run_dir: Path) -> None:
    """Each file a run reads is a regular file: a FIFO or device in its place would block the run (and
    spfde.results.status, spfde.results.report) forever. Raises RunDirError (one line)."""
    for name in RUN_FILES:
        if kind := not_regular(Path(run_dir) / name):
            raise RunDirError(f"{Path(run_dir) / name} is {kind}, not a regular file: remove it (a run rewrites "
                              f"what it needs), or use another run dir")


PROBE_BYTES = 256 * 2**10


# ----------------------------------------------------------------------------- fresh=true, once per launch


def launch_id() -> str | None:
    """What stays the same when the cluster requeues a job: the SLURM job (array task) id, or
    SPFDE_LAUNCH_ID. None for a plain command: each one is a new launch."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return env.get("SPFDE_LAUNCH_ID") or None


def start_fresh(cfg, run_dir: Path, extra: tuple[str, ...] = ()) -> bool:
    """Apply fresh=true: archive earlier results, once per launch. A requeued or restarted job of the
    launch that already archived them resumes its own work instead of starting over again."""
    if finished := finish_archive(run_dir):  # an archive that a kill interrupted comes first, fresh or not
        log.info(f"finished moving earlier results to {finished} (a launch was stopped while doing so)")
    if not cfg.fresh:
        return False
    launch, marker = launch_id(), Path(run_dir) / LAUNCH
    if launch is not None and marker.exists() and marker.read_text().strip() == launch:
        log.info(f"fresh=true was applied by this launch ({launch}) already: resuming its run")
        return False
    if moved := archive_previous(run_dir, extra):
        archive_run_log(run_dir, moved)
        log.info(f"fresh=true: earlier results moved to {moved}")
    if launch is not None:
        marker.write_text(launch + "\n")
    return True


# ----------------------------------------------------------------------------- fingerprint


def _flatten(node, prefix: str, out: dict, skip: set) -> None:
    for key in node:
        name = f"{prefix}{key}"
        if name in skip or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _flatten(value, name + ".", out, skip)
        elif isinstance(value, ListConfig):
            out[name] = [list(v) if isinstance(v, ListConfig) else v for v in value]
        else:
            out[name] = value


def config_fingerprint(cfg, uses_ratio: bool = True) -> dict:
    """The result-changing settings, flat (key -> value), plus the data's identity (its root folder). A method
    that does not use sparsity.ratio (dense: `uses_ratio` of its class) leaves it out."""
    out: dict = {}
    # options of the other sparse methods do not change this run
    others = {f"sparsity.{k}" for k, v in cfg.sparsity.items() if isinstance(v, DictConfig) and k != cfg.sparsity.name}
    if not uses_ratio:
        others.add("sparsity.ratio")
    _flatten(cfg, "", out, set(NOT_RESULT_KEYS) | others)
    if cfg.dataset.name in ROOTED_DATASETS and cfg.dataset.root:
        out["dataset.root"] = str(Path(cfg.dataset.root).expanduser().absolute())
    return out


def data_fingerprint(data) -> dict:
    """Sizes of the data actually loaded (folders can change under the same root)."""
    return {"data.train_size": data.train.dataset_size, "data.test_size": data.test.dataset_size,
            "data.num_classes": data.num_classes}


def check_fingerprint(stored: dict | None, current: dict, run_dir: Path) -> None:
    """Refuse to continue a run whose checkpoint was made with other settings. Keys only one side has
    (a checkpoint from an older version) are not compared."""
    run_dir = Path(run_dir)
    differing = [k for k in current if stored and k in stored and stored[k] != current[k]]
    if not differing:
        keep_hydra_record(run_dir)
        return
    restore_hydra_record(run_dir)  # Hydra rewrote .hydra/ for this refused launch: put the run's back
    shown = "; ".join(f"{k}={stored[k]} there, {current[k]} now" for k in differing[:4])
    more = f" (and {len(differing) - 4} more)" if len(differing) > 4 else ""
    older = ""
    if "sparsity.masked" in current and "sparsity.masked" not in stored and "sparsity.dense_layers" in differing:
        dense = ",".join(stored["sparsity.dense_layers"])
        older = (f" (it was made before sparsity.masked existed and masked every conv and linear but "
                 f"sparsity.dense_layers: resume it with sparsity.masked=all 'sparsity.dense_layers=[{dense}]' "
                 f"hydra.run.dir={run_dir})")
    raise RunDirError(f"{run_dir} holds a run with other settings: {shown}{more}{older}. Use the same settings to "
                      f"resume it, add fresh=true to start over there (its results move to previous-<time>/), "
                      f"or use another run dir")


def keep_hydra_record(run_dir: Path) -> None:
    """Hydra writes .hydra/ (config, overrides) before any check can run; keep the accepted one."""
    if (run_dir / ".hydra").is_dir():
        shutil.copytree(run_dir / ".hydra", run_dir / HYDRA_KEPT, dirs_exist_ok=True)


def restore_hydra_record(run_dir: Path) -> None:
    if (run_dir / HYDRA_KEPT).is_dir():
        shutil.copytree(run_dir / HYDRA_KEPT, run_dir / ".hydra", dirs_exist_ok=True)


def archive_run_log(run_dir: Path, archive: Path) -> None:
    """The earlier launches' run.log goes to the archive too. Copied and emptied, not moved: this launch's log
    handler (Hydra's) holds the file open and appends on."""
    path = Path(run_dir) / "run.log"
    if path.is_file() and not (archive / path.name).exists():
        shutil.copy2(path, archive / path.name)
        os.truncate(path, 0)


# ----------------------------------------------------------------------------- divergence, signals


def check_finite(epoch: int, stats: dict, run_dir: Path, cfg) -> None:
    """Stop when the epoch's loss is NaN or infinite (one host check per epoch, on losses the loop has
    already brought to the host), before anything of this epoch is written."""
    bad = {k: v for k, v in stats.items() if k.endswith("/loss") and not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        kept = f"last.pt (epoch {epoch}) is kept" if epoch else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1} ({what}) with optim.lr={cfg.optim.lr}: "
                               f"stopped; {kept} in {run_dir}. Lower optim.lr (or set optim.warmup_epochs) and "
                               "start over with fresh=true")


def catch_stop_signals() -> dict:
    """SIGTERM and SIGINT raise `Stopped` (unless someone else, e.g. submitit, handles them already).
    Returns the previous handlers for `restore_signals`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, _raise_stopped)
    return previous


_deferred = {"depth": 0, "signal": None}  # inside stops_deferred(): a stop waits until the block has ended


def _raise_stopped(signum, frame):
    if _deferred["depth"]:
        _deferred["signal"] = signum
        return
    raise Stopped(signum)


@contextmanager
def stops_deferred():
    """A SIGTERM/SIGINT arriving inside the block stops the run right after it: e.g. between writing last.pt and
    noting which epoch it holds, so the stop message names the epoch on disk."""
    _deferred["depth"] += 1
    try:
        yield
    finally:
        _deferred["depth"] -= 1
    if not _deferred["depth"] and _deferred["signal"] is not None:
        signum, _deferred["signal"] = _deferred["signal"], None
        raise Stopped(signum)


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
