"""Hydra callbacks (registered in conf/config.yaml under hydra.callbacks)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("spfde")


class ReportAfterSweep(Callback):
    """After a `-m` sweep, write its report (`<sweep dir>/report/`) and print its table. With a launcher
    that waits for its jobs (basic, submitit local and SLURM) every job has finished by then."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from spfde.report import find_runs, main

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir() or not find_runs([sweep_dir]):
            log.info(f"no finished runs in {sweep_dir}: no report")
            return
        try:
            main([str(sweep_dir), "--no-timelines"])
        except SystemExit as e:  # the report said why on stderr; the sweep itself succeeded
            log.warning(f"the sweep's report failed (exit {e.code}); rerun `python -m spfde.report {sweep_dir}`")
