"""The search sweeper's work (imports optuna: loaded only when a search starts)."""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, DiscreteUniformDistribution, UniformDistribution
from optuna.trial import Trial, TrialState

log = logging.getLogger(__name__)


class SearchImpl(OptunaSweeperImpl):
    def __init__(self, decimals: int | None, **optuna_options: Any) -> None:
        super().__init__(**optuna_options)
        self.decimals = decimals
        self.on_grid: set = set()

    def sweep(self, arguments: list[str]) -> None:
        # the sweep directory holds the study; multirun.yaml as Hydra's basic sweeper saves it (spfde.dashboard)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.continue_study()
        super().sweep(arguments)

    def continue_study(self) -> None:
        """Make `n_trials` the study's total: count the trials a former launch finished (COMPLETE or FAIL),
        mark those it left RUNNING (it was stopped) as FAIL and queue their values again (their run
        directories resume from their checkpoints), and reseed the sampler past the draws made already (a
        seeded sampler would otherwise draw the former launch's values again)."""
        if self.storage is None:
            return
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    directions=self._get_directions(), load_if_exists=True)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in trials)
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        for t in stale:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params)
        self.n_trials = max(0, self.n_trials - finished)
        self.job_idx = len(trials)  # Hydra's job numbers (#N in the log) go on from the former launches'
        sampler_cfg = self.config.hydra.sweeper.sampler
        if trials and sampler_cfg.get("seed") is not None:
            self.sampler = instantiate(sampler_cfg, seed=int(sampler_cfg.seed) + len(trials))
        queued = sum(t.state == TrialState.WAITING for t in trials)  # study.enqueue_trial(): they run first
        if trials:
            log.info(f"Continuing the study of {len(trials)} trials ({finished} finished"
                     + (f", {len(stale)} stopped while running: their values again" if stale else "")
                     + (f", {queued} queued" if queued else "") + f"): {self.n_trials} trials to go")

    def _configure_trials(self, trials: list[Trial], search_space_distributions: dict[str, BaseDistribution],
                          fixed_params: dict[str, Any]) -> Sequence[Sequence[str]]:
        if self.decimals is not None:  # float intervals on a grid of 10^-decimals (the dict is the sweep's own)
            step = 10.0 ** -self.decimals
            for name, d in search_space_distributions.items():
                if isinstance(d, UniformDistribution):
                    search_space_distributions[name] = DiscreteUniformDistribution(d.low, d.high, step)
                    self.on_grid.add(name)
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        # the override prints the grid value without float noise (0.15, not 0.15000000000000002)
        return [tuple(self.rounded(o) for o in job) for job in overrides]

    def rounded(self, override: str) -> str:
        name, value = override.split("=", 1)
        return f"{name}={round(float(value), self.decimals)!r}" if name in self.on_grid else override
