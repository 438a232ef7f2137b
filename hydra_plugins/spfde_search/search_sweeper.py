"""`hydra/sweeper=spfde_search`: Hydra's Optuna sweeper (hydra-optuna-sweeper, the `search` extra) plus what a
search of training runs needs (spfde.search): the trial count is the study's total, so a relaunch continues an
interrupted search; trials a stopped launch left running are tried again with their values (their run
directories resume); float intervals are drawn on a grid of `decimals` (run directory names stay short and
stable); and `objectives` names what each trial returns. Importing this module needs no optuna: Hydra imports
every plugin module at start-up, also in a base install without the extra."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `search` extra is not installed: spfde.search says so when a search is asked for
    OptunaSweeper = None

if OptunaSweeper is not None:

    @dataclass
    class SearchSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.spfde_search.search_sweeper.SearchSweeper"
        # what a trial returns to the sweeper, in the order of `direction`: fields of the run's summary.json
        # (spfde.search.OBJECTIVES)
        objectives: list[str] = field(default_factory=lambda: ["final_acc"])
        # float interval() params are drawn on a grid of 10^-decimals (null: continuous)
        decimals: int | None = 3

    ConfigStore.instance().store(group="hydra/sweeper", name="spfde_search", node=SearchSweeperConf,
                                 provider="spfde")

    class SearchSweeper(OptunaSweeper):
        def __init__(self, objectives: list[str], decimals: int | None, **optuna: Any) -> None:
            from ._impl import SearchImpl

            self.sweeper = SearchImpl(decimals=decimals, **optuna)
