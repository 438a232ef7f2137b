"""What keeps a run directory to one run: an exclusive lock (one process at a time), a fingerprint of
the result-changing config and data (a resume with other settings is refused), `fresh=true` applied once
per launch (a requeued job resumes), a stop on a diverged loss and one-line stops on SIGTERM/SIGINT."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from spfde.checkpoint import RunDirError, archive_previous

log = logging.getLogger("spfde")

LOCK = ".lock"
LAUNCH = ".launch"
HYDRA_KEPT = ".hydra-accepted"  # copy of .hydra/ from the last launch that passed the fingerprint check

# Keys that do not change a run's results (where it runs, how it reports, how fast it loads data);
# everything else in the config is part of the fingerprint. dataset.root enters as the data identity.
# dataset.on_bad_file only says whether a run stops at an unreadable image (a stop keeps nothing of its epoch).
NOT_RESULT_KEYS = ("fresh", "device", "progress", "logger", "threads", "run_dir", "plan", "experiment_name",
                   "eval_batch_size", "deterministic", "channels_last", "cuda_graphs", "dataset.root",
                   "dataset.workers", "dataset.download", "dataset.on_bad_file", "sparsity.lth.workdir")
ROOTED_DATASETS = ("cifar10", "cifar100", "imagenet", "imagefolder")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; raised in the main thread so the run stops where it is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ----------------------------------------------------------------------------- lock

_held: dict[Path, object] = {}  # run dirs this process has locked (the OS releases them when it dies)


def lock_run_dir(run_dir: Path) -> None:
    """Take an exclusive lock on the run directory for the rest of this process (fcntl.flock on
    <run_dir>/.lock, released by the OS when the process ends, however it ends). A second process
    fails at once with the holder's PID and host."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    f = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirError(f"{run_dir} is in use by {holder}: two processes must not train one run. Wait for it "
                          "to finish or stop it (a killed sweep launcher leaves its jobs running), or use "
                          "another run dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"PID {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    f.flush()
    _held[run_dir] = f


def release_run_dir(run_dir: Path) -> None:
    f = _held.pop(Path(run_dir).resolve(), None)
    if f is not None:
        f.close()  # closing the file releases the lock


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
    if not cfg.fresh:
        return False
    launch, marker = launch_id(), Path(run_dir) / LAUNCH
    if launch is not None and marker.exists() and marker.read_text().strip() == launch:
        log.info(f"fresh=true was applied by this launch ({launch}) already: resuming its run")
        return False
    if moved := archive_previous(run_dir, extra):
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


def config_fingerprint(cfg) -> dict:
    """The result-changing settings, flat (key -> value), plus the data's identity (its root folder)."""
    out: dict = {}
    # options of the other sparse methods do not change this run
    others = {f"sparsity.{k}" for k, v in cfg.sparsity.items() if isinstance(v, DictConfig) and k != cfg.sparsity.name}
    from spfde.sparse import METHODS

    if not METHODS[cfg.sparsity.name].uses_ratio:
        others.add("sparsity.ratio")  # e.g. dense ignores it
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
    raise RunDirError(f"{run_dir} holds a run with other settings: {shown}{more}. Use the same settings to "
                      f"resume it, add fresh=true to start over there (its results move to previous-<time>/), "
                      f"or use another run dir")


def keep_hydra_record(run_dir: Path) -> None:
    """Hydra writes .hydra/ (config, overrides) before any check can run; keep the accepted one."""
    if (run_dir / ".hydra").is_dir():
        shutil.copytree(run_dir / ".hydra", run_dir / HYDRA_KEPT, dirs_exist_ok=True)


def restore_hydra_record(run_dir: Path) -> None:
    if (run_dir / HYDRA_KEPT).is_dir():
        shutil.copytree(run_dir / HYDRA_KEPT, run_dir / ".hydra", dirs_exist_ok=True)


# ----------------------------------------------------------------------------- divergence, signals


def check_finite(epoch: int, stats: dict, run_dir: Path, cfg) -> None:
    """Stop when the epoch's loss is NaN or infinite (one host check per epoch, on losses the loop has
    already brought to the host), before anything of this epoch is written."""
    bad = {k: v for k, v in stats.items() if k.endswith("/loss") and not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        kept = f"last.pt (epoch {epoch}) is kept" if epoch else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1} ({what}) with optim.lr={cfg.optim.lr}: "
                               f"stopped; {kept} in {run_dir}. Lower optim.lr (or add warm-up) and start "
                               "over with fresh=true")


def catch_stop_signals() -> dict:
    """SIGTERM and SIGINT raise `Stopped` (unless someone else, e.g. submitit, handles them already).
    Returns the previous handlers for `restore_signals`."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, _raise_stopped)
    return previous


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
