"""`python -m spfde.run [overrides]`: train one run (or `-m` for a sweep)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from spfde.checkpoint import RunDirError
from spfde.config import CONF_DIR, ConfigError, register_configs, register_resolvers
from spfde.data import DataError
from spfde.data.loaders import BadImageError
from spfde.distributed import DistributedError, shutdown
from spfde.freeze import FreezeError
from spfde.rundir import Stopped, TrainingDiverged, check_output_dir
from spfde.sieve import SieveError
from spfde.sparse import SparsityError
from spfde.validation import precheck_overrides, validate

register_configs()
register_resolvers()
log = logging.getLogger("spfde")
USER_ERRORS = (ConfigError, DataError, BadImageError, SparsityError, FreezeError, SieveError, RunDirError,
               TrainingDiverged, DistributedError)


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
def main(cfg: DictConfig) -> float | None:
    from spfde.train import train

    try:
        validate(cfg)
        summary = train(cfg)
    except USER_ERRORS as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        to_log_files(f"spfde: error: {e}")
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
    return summary["final_acc"]


def adhoc_sweep_dir(args: list[str]) -> str | None:
    """`outputs/sweeps/<name>` for a `-m` sweep without a sweep preset or an explicit hydra.sweep.dir: named
    after its overrides (like a run directory), so relaunching it skips its finished runs."""
    if not {"-m", "--multirun"} & set(args) or any(a.lstrip("+~").startswith(("sweep=", "hydra.sweep.dir="))
                                                  for a in args):
        return None
    from omegaconf import OmegaConf

    from spfde.config import CONF_DIR, run_name

    exclude = set(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    keep = sorted(a for a in args if not a.startswith("-") and "=" in a
                  and not a.split("=", 1)[0].lstrip("+~").startswith("hydra")
                  and a.split("=", 1)[0].lstrip("+~") not in exclude)
    return f"outputs/sweeps/{run_name(','.join(keep))}"


def cli() -> None:
    """The `spfde-run` command (= `python -m spfde.run`)."""
    try:
        precheck_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    if sweep_dir := adhoc_sweep_dir(sys.argv[1:]):
        sys.argv.append(f"hydra.sweep.dir='{sweep_dir}'")  # quoted: the name holds the sweep's commas
    try:
        check_output_dir(sys.argv[1:])  # full or read-only disk: one line here, not Hydra's logging traceback
    except RunDirError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
