"""`hydra/sweeper=spfde_search`: the sweeper of spfde's searches (`+search=pareto`, `+search=best_acc`: conf/search/),
Optuna's ask/tell loop driving Hydra's launchers (basic, submitit local and SLURM). What it does is described in
`spfde.sweeps.search`; the loop is `_impl.Search`. Importing this module needs no optuna (Hydra imports every plugin
module at start-up, also in a base install without the `search` extra): its configs are plain dataclasses."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING


# Optuna's samplers, by name (hydra/sweeper/sampler=...); more of each sampler's arguments can be added with +
@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10  # random trials before TPE models the results (Optuna's default)


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50  # Optuna's default


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class SearchSweeperConf:
    _target_: str = "hydra_plugins.spfde_search.search_sweeper.SearchSweeper"
    _recursive_: bool = False  # the sampler is made by the search (reseeded past a former launch's trials)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, "_self_"])
    sampler: Any = MISSING
    # what a trial returns to the sweeper, in the order of `direction`: fields of the run's summary.json
    # (spfde.sweeps.search.OBJECTIVES)
    objectives: list[str] = field(default_factory=lambda: ["final_acc"])
    direction: Any = "maximize"  # maximize | minimize, or a list of them (one per objective)
    study_name: str | None = None
    # sqlite:///<file> (or any database URL Optuna takes), journal:<file> (Optuna's journal file: for sweep
    # directories on NFS and other shared file systems, where SQLite's locking is unreliable), null: in memory
    storage: str | None = None
    n_trials: int = 20  # in all, over every launch of the sweep directory
    n_jobs: int = 2  # trials per batch (a submitit launcher runs a batch side by side)
    max_failure_rate: float = 0.0  # share of a batch's trials that may fail before the search stops
    decimals: int | None = 3  # float interval() params are drawn on a grid of 10^-decimals (null: continuous)
    params: dict[str, str] | None = None  # key: a sweep override (interval(), choice(), range(), tag(log, ...))


ConfigStore.instance().store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="spfde")
ConfigStore.instance().store(group="hydra/sweeper/sampler", name="nsgaii", node=NSGAIISamplerConf, provider="spfde")
ConfigStore.instance().store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="spfde")
ConfigStore.instance().store(group="hydra/sweeper", name="spfde_search", node=SearchSweeperConf, provider="spfde")


class SearchSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from ._impl import Search  # optuna: only when a search starts

        self.search = Search(hydra_context=hydra_context, task_function=task_function, config=config,
                             **self.settings)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
