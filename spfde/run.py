"""`python -m spfde.run [overrides]`: train one run (or `-m` for a sweep)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from spfde.config import CONF_DIR, ConfigError, precheck_overrides, register_configs, register_resolvers, validate
from spfde.data import DataError
from spfde.distributed import DistributedError, shutdown
from spfde.freeze import FreezeError
from spfde.sieve import SieveError
from spfde.sparse import SparsityError

register_configs()
register_resolvers()
log = logging.getLogger("spfde")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from spfde.train import train

    try:
        validate(cfg)
        summary = train(cfg)
    except (ConfigError, DataError, SparsityError, FreezeError, SieveError, DistributedError) as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
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
    main()


if __name__ == "__main__":
    cli()
