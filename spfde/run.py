"""`python -m spfde.run [overrides]`: train one run (or `-m` for a sweep)."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spfde.checks.command_line import precheck_overrides
from spfde.checks.validation import is_hydra, sweep_jobs, validate
from spfde.config import CONF_DIR, compose_config, register_configs, register_resolvers, run_name
from spfde.errors import SpfdeError
from spfde.rundir.checkpoint import RunDirError, RunDirInUse
from spfde.rundir.lifecycle import Stopped, check_output_dir, check_run_files, lock_run_dir, release_run_dir

# At start-up this module loads Hydra, the config schema, the checks and the run directory's guards, none of which
# imports torch: torch, wandb and the training modules load when a run starts (in `main`), so that Hydra's tab
# completion (-sc), run at every Tab, and a bad override's one line answer in about a second.
register_configs()
register_resolvers()
log = logging.getLogger("spfde")
# Hydra's own commands that run no task: nothing to check before them, nothing heavy to import (--cfg and --info
# print the config or Hydra's view of it, as `--cfg job`, `-c job` or `--cfg=job`)
HYDRA_ONLY_FLAGS = {"-sc", "--shell-completion", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info"}


def hydra_only(args: list[str]) -> bool:
    return any(a.split("=", 1)[0] in HYDRA_ONLY_FLAGS for a in args if a.startswith("-"))


def without_missing(node: dict) -> dict:
    """A config (as a dict) without its `???` keys, and without the sub-trees that this leaves empty: the schema
    holds every sparse method's options as `???` until the method's file sets them, and --help should show what
    the composed configuration uses, not the options of methods it does not select."""
    kept = {}
    for key, value in node.items():
        if value == "???":  # OmegaConf's MISSING, as to_container writes it
            continue
        if isinstance(value, dict) and value:
            value = without_missing(value)
            if not value:  # emptied here (an empty mapping of the config itself stays)
                continue
        kept[key] = value
    return kept


def help_without_missing() -> None:
    """Make Hydra's --help page print the config through `without_missing`; the page's template (conf/config.yaml,
    hydra.help: the header, the config groups) stays as it is."""
    from hydra._internal.hydra import Hydra
    from omegaconf import OmegaConf

    hydra_get_help = Hydra.get_help

    def get_help(self, help_cfg, cfg, args_parser, resolve):
        shown = OmegaConf.create(without_missing(OmegaConf.to_container(cfg, resolve=False)))
        return hydra_get_help(self, help_cfg, shown, args_parser, resolve)

    Hydra.get_help = get_help


def to_log_files(message: str, exc_info=None) -> None:
    """Write to the run's log file (run.log) only: the console already shows the message."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def in_basic_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "BasicLauncher" in str(hc.launcher.get("_target_", ""))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    # imported here, not at the top: Hydra's tab completion and --help load this module and need none of it
    from spfde.sweeps.search import search_objectives, trial_values
    from spfde.training.distributed import shutdown
    from spfde.training.loop import train

    objectives = search_objectives()  # a trial of a search (+search=...): what the sweeper asks for; else None
    try:
        validate(cfg)
        summary = train(cfg)
    except SpfdeError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        if not isinstance(e, RunDirInUse):  # run.log is the holder's: its status must not read this refusal
            to_log_files(f"spfde: error: {e}")
        if objectives is not None:
            raise  # Hydra hands the error to the sweeper: the trial is FAIL in the study, the search goes on
        if in_basic_sweep():
            return None  # the sweep's other jobs still run (one process runs them all)
        sys.exit(2)
    except Stopped as stop:  # train() logged "stopped by ... after epoch N"; no traceback
        sys.exit(128 + stop.signum)
    except Exception:
        to_log_files("spfde: unexpected error", exc_info=sys.exc_info())  # Hydra prints it to the console
        raise
    finally:
        shutdown()  # a torchrun / multi-task SLURM rank leaves its process group
    return summary["final_acc"] if objectives is None else trial_values(summary, objectives)


def adhoc_sweep_dir(args: list[str]) -> str | None:
    """`outputs/sweeps/<name>` for a `-m` sweep without a sweep preset or an explicit hydra.sweep.dir: named
    after its overrides (like a run directory), so relaunching it skips its finished runs."""
    if not {"-m", "--multirun"} & set(args) or any(a.lstrip("+~").startswith(("sweep=", "hydra.sweep.dir="))
                                                  for a in args):
        return None
    from omegaconf import OmegaConf

    exclude = set(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    keep = sorted(a for a in args if not a.startswith("-") and "=" in a
                  and not a.split("=", 1)[0].lstrip("+~").startswith("hydra")
                  and a.split("=", 1)[0].lstrip("+~") not in exclude)
    return f"outputs/sweeps/{run_name(','.join(keep))}"


def sweep_run_dirs(args: list[str]) -> list[Path]:
    """With -m: the run directories of the sweep's jobs that exist already (a relaunch), as Hydra names them
    (hydra.sweep.dir / hydra.sweep.subdir). Jobs whose values another sweeper draws are not known yet."""
    from hydra.errors import HydraException

    overrides = [a for a in args if not a.startswith("-")]
    settings = [a for a in overrides if is_hydra(a)]
    jobs, _ = sweep_jobs([a for a in overrides if not is_hydra(a)])
    try:
        sweep_dir = Path(str(compose_config([*jobs[0], *settings], with_hydra=True).hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return []
        dirs = [sweep_dir / str(compose_config([*job, *settings], with_hydra=True).hydra.sweep.subdir) for job in jobs]
    except HydraException:  # e.g. a sweeper plugin that is not installed: Hydra says so itself
        return []
    return [d for d in dirs if d.is_dir()]


def busy_runs(run_dirs: list[Path]) -> list[str]:
    """The lock errors of a sweep's run directories that a running process holds (the orphaned jobs of a
    killed launcher train on), known before anything is started or submitted."""
    busy = []
    for run_dir in run_dirs:
        try:
            lock_run_dir(run_dir)
        except RunDirError as e:
            holder = re.search(r"PID (\d+) on host (\S+)", str(e))
            here = holder is not None and holder[2] == socket.gethostname()
            busy.append(f"{e}; to stop it: " + (f"kill -9 {holder[1]} (a submitit job ignores SIGTERM; it resumes "
                                                "from its last finished epoch)" if here else
                                                "scancel its SLURM job, or kill -9 its PID on its host"))
            continue
        release_run_dir(run_dir)
    return busy


def first_rank() -> bool:
    """Not one of the other ranks of a torchrun launch (they check the same command line: rank 0 reports)."""
    return os.environ.get("RANK", "0") in ("", "0")


def cli() -> None:
    """The `spfde-run` command (= `python -m spfde.run`)."""
    args = sys.argv[1:]
    if hydra_only(args):
        if {"-h", "--help"} & set(args):
            help_without_missing()
        main()  # Hydra answers (completion, help, the config) from the config alone
        return

    try:
        precheck_overrides(args)
        sweep_dir = adhoc_sweep_dir(args)
        if sweep_dir:
            args = [*args, f"hydra.sweep.dir='{sweep_dir}'"]  # quoted: the name holds the sweep's commas
        run_dirs = sweep_run_dirs(args) if {"-m", "--multirun"} & set(args) else []  # a relaunched sweep's
        for run_dir in run_dirs:
            check_run_files(run_dir)
        busy = busy_runs(run_dirs)
        check_output_dir(args)  # full or read-only disk: one line here, not Hydra's logging traceback
    except SpfdeError as e:
        if first_rank():
            print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    for line in busy:  # one line each, nothing started or submitted
        print(f"spfde: error: {line}", file=sys.stderr)
    if busy:
        sys.exit(2)
    sys.argv[1:] = args
    main()


if __name__ == "__main__":
    cli()
