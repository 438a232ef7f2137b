"""Hydra callbacks (registered in conf/config.yaml under hydra.callbacks)."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from spfde.errors import SpfdeError
from spfde.results.report import main as write_report
from spfde.results.runs import find_runs
from spfde.results.status import StatusError, sweep_status
from spfde.rundir.lifecycle import release_run_dirs

log = logging.getLogger("spfde")


class ReportAfterSweep(Callback):
    """After a `-m` sweep, write its report (`<sweep dir>/report/`, without the per-run timelines: its log line
    says how to draw them) and print its table. With a launcher that waits for its jobs (basic, submitit local and
    SLURM) every job has finished by then. A sweep in which every job failed ends with one line that counts them
    and says where their logs are, and exit status 2."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir() or not find_runs([sweep_dir]):
            log.info(f"no finished runs in {sweep_dir}: no report")
            all_failed(sweep_dir)
            return
        try:
            write_report([str(sweep_dir), "--no-timelines"])
        except SpfdeError as e:  # the sweep itself succeeded
            log.warning(f"the sweep's report failed ({e}); rerun `python -m spfde.report {sweep_dir}`")
            return
        # timelines stay out here: one figure per run, ~0.8 s each (a 99-run sweep waits over a minute more), while
        # the rest of the report takes ~1.5 s; the manual report draws them
        command = f"python -m spfde.report {shlex.quote(str(sweep_dir))}"
        log.info(f"the report leaves out the per-run timelines: `{command}` draws them")


def all_failed(sweep_dir: Path) -> None:
    """Exit 2 with one line when no job of the sweep finished and some failed (each job said why in its log)."""
    release_run_dirs()  # the jobs Hydra's basic launcher ran in this process are over: they train no more
    deadline = time.monotonic() + 30
    while True:  # every job has returned; a job's process may still be exiting (it holds its run's lock till then)
        try:
            status = sweep_status(sweep_dir)
        except StatusError:
            return
        if time.monotonic() > deadline or not {"training", "starting"} & set(status["totals"]):
            break
        time.sleep(0.5)
    failed = [job for job in status["jobs"] if job["state"] == "failed"]
    if failed and not status["totals"].get("finished"):
        logs = "run.log in each run directory" if all(Path(j["run_dir"]).is_dir() for j in failed) else \
            "run.log in each run directory, or .submitit/ for jobs that died before it"
        first = str(failed[0]["detail"]).removeprefix("spfde: error: ")
        print(f"spfde: error: {len(failed)} of the sweep's {len(status['jobs'])} jobs failed and none finished "
              f"(first: {first}); their logs: {logs} under {sweep_dir}; `python -m spfde.status {sweep_dir}` lists "
              "them", file=sys.stderr)
        sys.exit(2)
