"""`python -m spfde.status <sweep dir or name> [--json]`: where a sweep stands, one row per job.

  finished     its summary.json is a finished run's: the final test accuracy
  training     a live process holds the run directory's lock: epoch k/N and the run's ETA
  starting     no lock, epoch or error yet, and written to in the last minute: its process is starting up
  stopped      nobody holds the lock and there is no summary and no error: resumable from its last epoch by
               relaunching the sweep (killed, cancelled, preempted, or the sweep was stopped)
  failed       its last launch ended in an error: the `spfde: error: ...` line or the last exception line of
               run.log (or of submitit's log for the job)
  damaged      a summary.json that is not a finished run's (spfde.rundir.checkpoint.read_summary rejects it)
  not started  a job of the sweep (from Hydra's multirun.yaml) without a run directory yet
Then the totals and the sweep's ETA: the training left (each training job's remaining epochs at its own mean
epoch time, each job not started at the mean run time of this sweep's measured runs) over the number of jobs
training now. Works for basic, submitit-local and SLURM sweeps. Nothing is unpickled: submitit's *.pkl files
are only looked at, its logs are read as text.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import statistics
import time
from pathlib import Path

from spfde.errors import SpfdeError
from spfde.results.runs import find_runs, find_unfinished, read_metrics
from spfde.rundir.checkpoint import CHECKPOINT, SUMMARY, not_regular, read_summary
from spfde.rundir.lifecycle import LOCK, RUN_FILES
from spfde.units import clock as duration

RUN_LOG = "run.log"  # Hydra's job log (<job name>.log; the job is `run`)
STARTING_S = 60  # a run directory without lock, epoch or error written to this recently is still starting
LOG_TAIL = 256 * 2**10  # bytes read from the end of a log: the last launch is there, and huge logs stay cheap
# conf/config.yaml's hydra.sweep.subdir: a job's run directory is spfde.config.run_name of its overrides
RUN_NAME_SUBDIR = "${spfde_run_name:${hydra.job.override_dirname}}"
STATES = ("finished", "training", "starting", "stopped", "failed", "damaged", "not started")


class StatusError(SpfdeError, ValueError):
    """A sweep that cannot be found (one line, for the user)."""


# ----------------------------------------------------------------------------- which sweep, which jobs


def find_sweep(target: str, outputs: Path = Path("outputs")) -> Path:
    """A directory as given, else a name: outputs/sweeps/<name> (presets and ad-hoc sweeps), else the one
    directory of outputs/sweeps/ or outputs/multirun/ whose name starts with it."""
    path = Path(target)
    if path.is_dir():
        return path
    if target and "/" not in target:
        if (outputs / "sweeps" / target).is_dir():
            return outputs / "sweeps" / target
        matches = sorted(p for base in ("sweeps", "multirun") if (outputs / base).is_dir()
                         for p in (outputs / base).iterdir() if p.is_dir() and p.name.startswith(target))
        if len(matches) == 1:
            return matches[0]
        if matches:
            more = f" and {len(matches) - 4} more" if len(matches) > 4 else ""
            shown = ", ".join(str(p) for p in matches[:4]) + more
            raise StatusError(f"{target!r} names {len(matches)} sweeps ({shown}): give the directory")
    raise StatusError(f"no sweep {target!r}: not a directory, nor a name under {outputs}/sweeps/ or "
                      f"{outputs}/multirun/ (run from the directory the sweep was launched from)")


def sweep_jobs(sweep_dir: Path) -> list[str] | None:
    """The run directory names of the sweep's jobs, in Hydra's job order (job number = index; a SLURM array's
    task index), computed from multirun.yaml as Hydra's basic sweeper and config loader do. None when that
    cannot be known (no multirun.yaml, another sweeper, a subdir that needs the job's runtime)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from spfde.config import register_resolvers, run_name

    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        hydra = cfg.hydra
        if not str(hydra.sweeper._target_).endswith("BasicSweeper"):
            return None
        parser = OverridesParser.create()
        # the sweeper's order: its params (sweep presets) first, then the command line's overrides
        params = [f"{k}={v}" for k, v in (hydra.sweeper.params or {}).items()]
        batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *hydra.overrides.task]), None)
        names_of = hydra.job.config.override_dirname
        exclude = list(names_of.exclude_keys)
        parsed: dict[str, object] = {}  # each distinct override parsed once: jobs share all but the swept values

        def dirname(job: list[str]) -> str:
            for line in job:
                if line not in parsed:
                    parsed[line] = parser.parse_overrides([line])[0]
            return get_overrides_dirname([parsed[line] for line in job], exclude, names_of.item_sep, names_of.kv_sep)

        if OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir") == RUN_NAME_SUBDIR:
            names = [run_name(dirname(job)) for job in batches[0]]  # what the interpolation gives, without it
        else:  # another subdir: resolved by OmegaConf for each job, as Hydra does
            register_resolvers()  # spfde's resolvers (spfde_run_name, ...) that it may use
            one = OmegaConf.create({"hydra": OmegaConf.to_container(hydra, resolve=False)})
            names = []
            for num, job in enumerate(batches[0]):
                one.hydra.job.override_dirname = dirname(job)
                one.hydra.job.num = num
                names.append(str(one.hydra.sweep.subdir))
        return names if len(set(names)) == len(names) else None  # a fixed subdir: jobs share one directory
    except Exception:  # noqa: BLE001 - an unreadable or unusual multirun.yaml: the rows come from the directories
        return None


def launcher_name(sweep_dir: Path) -> str | None:
    """basic, submitit-local or slurm, from multirun.yaml (read as text: no config machinery needed)."""
    path = sweep_dir / "multirun.yaml"
    found = re.search(r"_target_: \S+\.(\w+)Launcher\b", path.read_text(errors="replace")) if path.exists() else None
    return {"Basic": "basic", "Local": "submitit-local", "Slurm": "slurm"}.get(found.group(1)) if found else None


# ----------------------------------------------------------------------------- submitit's job files


def read_tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - LOG_TAIL))
        return f.read().decode(errors="replace")


def submitit_jobs(sweep_dir: Path, names: list[str] | None) -> dict[str, dict]:
    """The sweep's submitit jobs by run directory (base) name: {"id", "out", "err", "result"} (log texts; whether a
    result file exists). A job is matched by the `run dir <path> |` line it logs, else by its SLURM array task
    index (the job number); of several launches of one run the latest counts."""
    folder = sweep_dir / ".submitit"
    found: dict[str, tuple[float, dict]] = {}
    for job in (folder.iterdir() if folder.is_dir() else []):
        if not re.fullmatch(r"\d+(_\d+)?", job.name) or not job.is_dir():
            continue  # job folders only: <id> or <array id>_<task>
        logs = sorted(job.glob("*_log.*"))
        texts = {kind: "".join(read_tail(p) for p in logs if p.name.endswith(f"_log.{kind}"))
                 for kind in ("out", "err")}
        named = re.findall(r"\brun dir (.+?) \| ", texts["out"] + texts["err"])
        if named:
            name = Path(named[-1]).name
        elif "_" in job.name and names and int(job.name.split("_")[1]) < len(names):
            name = Path(names[int(job.name.split("_")[1])]).name
        else:
            continue  # the array's own folder (its submission script), or a local job that logged no run dir yet
        when = max((p.stat().st_mtime for p in job.iterdir()), default=0.0)
        if name not in found or when > found[name][0]:
            found[name] = (when, {"id": job.name, **texts, "result": any(job.glob("*_result.pkl"))})
    return {name: info for name, (_, info) in found.items()}


# ----------------------------------------------------------------------------- one run directory


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock (spfde.rundir.lifecycle.lock_run_dir: flock on the
    directory, or on `.lock` where the file system cannot lock a directory). A non-blocking shared flock that succeeds
    means nobody holds it; it is released at once. Shared: it needs no write access and cannot block a reader."""
    for target in (run_dir, run_dir / LOCK):
        try:
            fd = os.open(target, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            pass  # this one cannot be flock'ed here: the holder locked the other
        finally:
            os.close(fd)  # releases the probe's lock
    return False


def last_launch_error(text: str) -> str | None:
    """The error the log's last launch ended with: its last `spfde: error: ...` line or the last line of its
    last traceback, when no epoch or run start was logged after it (an older launch's error is history)."""
    error = None
    in_traceback = False
    for line in text.splitlines():
        if "spfde: error:" in line:
            error = line[line.index("spfde: error:"):].strip()
        elif line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line.strip() and not line[0].isspace():
            error, in_traceback = line.strip(), False  # the exception line closes the traceback
        elif re.search(r" - (epoch \d+/\d+ |run dir |resuming )", line):
            error = None
    return error


def stop_reason(run_log: str, err: str) -> str | None:
    """Why a stopped run stopped, where a log says: spfde's `stopped by SIGTERM ...` or SLURM's CANCELLED /
    TIME LIMIT / PREEMPTION / out-of-memory line in submitit's error log."""
    lines = re.findall(r"stopped by SIG\w+ after epoch \d+.*", run_log)
    lines += [line.strip() for line in err.splitlines() if re.match(r"\s*slurmstepd\S*: error: ", line)]
    return lines[-1] if lines else None


def planned_epochs(run_dir: Path) -> int | None:
    """`epochs` of the run's config (config.yaml, else Hydra's .hydra/config.yaml of a run that stopped first)."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.exists():
            found = re.search(r"(?m)^epochs: (\d+)\s*$", path.read_text(errors="replace"))
            if found:
                return int(found.group(1))
    return None


def run_row(run_dir: Path, job: dict | None, now: float) -> dict:
    """The state of one run directory, with what its state needs: accuracy, epoch k/N, ETA, a log line."""
    row = {"state": None, "run_dir": str(run_dir), "job_id": job["id"] if job else None, "epoch": None,
           "epochs": None, "final_acc": None, "eta_s": None, "run_s": None, "detail": None}
    if odd := next((f"{name} is {kind}" for name in RUN_FILES if (kind := not_regular(run_dir / name))), None):
        return {**row, "state": "damaged", "detail": f"{odd}, not a regular file: remove it and relaunch the run"}
    row["epochs"] = planned_epochs(run_dir)
    if (run_dir / SUMMARY).exists():
        summary, problem = read_summary(run_dir / SUMMARY)
        if problem:
            return {**row, "state": "damaged", "detail": f"{SUMMARY}: {problem}; relaunch the run to rewrite it"}
        return {**row, "state": "finished", "final_acc": summary["final_acc"], "epoch": summary.get("epochs"),
                "epochs": summary.get("epochs", row["epochs"]), "run_s": summary.get("train_time_s")}
    records, bad = read_metrics(run_dir)
    row["epoch"] = records[-1]["epoch"] if records else 0
    if records and row["epochs"] and records[-1].get("time/elapsed_s"):
        per_epoch = records[-1]["time/elapsed_s"] / row["epoch"]
        # the epoch under way counts as partly done (a file dated in the future, by a skewed clock: not at all)
        since = max(0.0, now - (run_dir / "metrics.jsonl").stat().st_mtime)
        row["run_s"] = per_epoch * row["epochs"]
        row["eta_s"] = max(0.0, per_epoch * (row["epochs"] - row["epoch"]) - min(since, per_epoch))
    if bad:
        row["detail"] = f"metrics.jsonl: {bad} lines unreadable (the run rebuilds it from last.pt when it resumes)"
    if lock_held(run_dir):
        return {**row, "state": "training"}
    row["eta_s"] = None  # nothing is training it
    run_log = read_tail(run_dir / RUN_LOG) if (run_dir / RUN_LOG).exists() else ""
    error = last_launch_error(run_log) or (last_launch_error(job["err"]) if job else None)
    if error:
        return {**row, "state": "failed", "detail": error}
    newest = max((p.stat().st_mtime for p in run_dir.iterdir()), default=0.0)
    ended = job is not None and job["result"]  # submitit wrote the job's result: its process is over
    # starting: written to in the last minute (a file dated in the future was not: its clock is off)
    if not records and not (run_dir / CHECKPOINT).exists() and 0 <= now - newest < STARTING_S and not ended:
        return {**row, "state": "starting"}
    return {**row, "state": "stopped", "detail": stop_reason(run_log, job["err"] if job else "") or row["detail"]}


# ----------------------------------------------------------------------------- the sweep


def sweep_status(sweep_dir: Path) -> dict:
    """Every job of the sweep (multirun.yaml's and every run directory found), its state, totals and ETA."""
    now = time.time()
    names = sweep_jobs(sweep_dir)
    finished = find_runs([sweep_dir])
    found = [*finished, *find_unfinished([sweep_dir], finished)]
    extra = sorted({str(p.relative_to(sweep_dir)) for p in found} - set(names or []))
    if names is None and not extra:
        raise StatusError(f"{sweep_dir} holds no sweep: no multirun.yaml (from `spfde.run -m`) and no run directories")
    jobs = submitit_jobs(sweep_dir, names)
    rows = []
    for name in [*(names or []), *extra]:
        run_dir = sweep_dir / name
        if run_dir.is_dir():
            row = run_row(run_dir, jobs.get(Path(name).name), now)
        else:
            job = jobs.get(Path(name).name)
            error = last_launch_error(job["err"]) if job else None  # died before Hydra made its directory
            row = {"state": "failed" if error else "not started", "run_dir": str(run_dir),
                   "job_id": job["id"] if job else None, "detail": error}
        rows.append({"run": name, **row})
    totals = {state: n for state in STATES if (n := sum(r["state"] == state for r in rows))}
    return {"sweep_dir": str(sweep_dir), "launcher": launcher_name(sweep_dir), "job_list": names is not None,
            "jobs": rows, "totals": totals, "eta": sweep_eta(rows)}


def sweep_eta(rows: list[dict]) -> dict:
    """The training left over the jobs training now (the parallelism in use), but no shorter than the longest
    training job's own ETA. A job not started (or training without a finished epoch yet) counts as long as the
    mean run of this sweep's measured ones (finished runs' training time, others' projection)."""
    running = [r for r in rows if r["state"] in ("training", "starting")]
    waiting = [r for r in rows if r["state"] == "not started"]
    measured = [r["run_s"] for r in rows if r.get("run_s")]
    mean_run = statistics.fmean(measured) if measured else None
    unknown = len(waiting) + sum(r["eta_s"] is None for r in running)
    eta = {"eta_s": None, "work_left_s": None, "parallel": len(running), "waiting": len(waiting),
           "mean_run_s": mean_run}
    if not running:
        return {**eta, "how": "no job is training now"}
    if unknown and mean_run is None:
        return {**eta, "how": "unknown until a run of this sweep has finished an epoch"}
    work = sum(r["eta_s"] for r in running if r["eta_s"] is not None) + unknown * (mean_run or 0.0)
    longest = max((r["eta_s"] for r in running if r["eta_s"] is not None), default=0.0)
    parts = ["a training job: its remaining epochs at its mean epoch time", "start-up time not counted"]
    if waiting:
        parts.insert(1, f"{len(waiting)} not started: {duration(mean_run)} each, the mean run of this sweep")
    how = (f"{duration(work)} of training left over {len(running)} job{'s' if len(running) > 1 else ''} training at "
           f"once ({'; '.join(parts)})")
    return {**eta, "eta_s": max(work / len(running), longest), "work_left_s": work, "how": how}


# ----------------------------------------------------------------------------- output


def progress(row: dict) -> str:
    state, epoch, epochs = row["state"], row.get("epoch"), row.get("epochs")
    of = f"{epoch}/{epochs or '?'}"
    if state == "finished":
        return f"acc {row['final_acc']:.4f}"
    if state == "training":
        return f"epoch {of}" + (f", ETA {duration(row['eta_s'])}" if row["eta_s"] is not None else "")
    if state in ("stopped", "failed") and epoch is not None:
        return f"after epoch {of}"
    return ""


def text(status: dict) -> str:
    rows = status["jobs"]
    launcher = f", {status['launcher']} launcher" if status["launcher"] else ""
    known = "" if status["job_list"] else " (job list unknown: no usable multirun.yaml; run directories only)"
    ids = max([7, *(len(r["job_id"] or "") for r in rows)])  # SLURM array tasks: <array id>_<task>
    lines = [f"sweep {status['sweep_dir']}: {len(rows)} jobs{launcher}{known}",
             f"{'state':<12} {'progress':<24} {'job':<{ids}}  run"]
    for r in rows:
        lines.append(f"{r['state']:<12} {progress(r):<24} {r['job_id'] or '-':<{ids}}  {r['run']}")
        if r.get("detail"):
            lines.append(f"{'':<12} {r['detail']}")
    totals = ", ".join(f"{n} {state}" for state, n in status["totals"].items())
    stopped = status["totals"].get("stopped", 0)
    hint = f"; relaunch the same sweep command to resume the {stopped} stopped" if stopped else ""
    eta = status["eta"]
    lines.append(f"total: {totals}{hint}")
    if eta["eta_s"] is None:
        lines.append(f"ETA: none, {eta['how']}")
    else:
        lines.append(f"ETA {duration(eta['eta_s'])}: {eta['how']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spfde.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep directory, or its name (outputs/sweeps/<name>, outputs/multirun/...)")
    parser.add_argument("--json", action="store_true", help="print the same as JSON")
    args = parser.parse_args(argv)
    status = sweep_status(find_sweep(args.sweep))
    print(json.dumps(status, indent=1) if args.json else text(status))

