"""`python -m spfde.run [overrides]`: train one run (or `-m` for a sweep)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from spfde.config import ConfigError, precheck_overrides, register_configs, register_resolvers, validate
from spfde.data import DataError
from spfde.distributed import DistributedError, shutdown
from spfde.freeze import FreezeError
from spfde.sieve import SieveError
from spfde.sparse import SparsityError

register_configs()
register_resolvers()
log = logging.getLogger("spfde")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
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


if __name__ == "__main__":
    try:
        precheck_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
