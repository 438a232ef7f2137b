"""The search's loop: Optuna's ask/tell driving Hydra's launcher, batch by batch (imports optuna: loaded only when a
search starts). What it does and why: spfde.sweeps.search."""

from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from spfde.checks.search import Axis, check_sweeper_settings, params_of, search_space
from spfde.config import ConfigError
from spfde.sweeps.search import Budget

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs what it does itself

STOPPED = "stopped_trials"  # study user attribute: trials a stopped launch left running (FAIL, their values queued)
OVER_BUDGET = "over_budget"  # user attribute of a point planned over the budget: never trained
BOX = "search_box"  # study user attribute: the box the study was made with
MAX_OVER_BUDGET = 200  # proposals over the budget in a row before the search gives up (the box is mostly over it)


class SearchStop(Exception):
    """A search that cannot go on as asked: one line for the user (exit 2)."""


def distribution(axis: Axis):
    if axis.kind == "choice":
        return CategoricalDistribution(list(axis.choices))
    if axis.kind == "int":
        return IntDistribution(int(axis.low), int(axis.high), log=axis.log)
    return FloatDistribution(axis.low, axis.high, step=axis.step, log=axis.log)


def override_value(axis: Axis, value: Any) -> str:
    """How a drawn value is written into the job's overrides: grid floats rounded (0.15, not 0.15000000000000002)."""
    if axis.kind == "float" and axis.step:
        return repr(round(float(value), max(0, -math.floor(math.log10(axis.step) + 1e-9))))
    return str(value)


def make_sampler(cfg, seed_offset: int):
    """The configured Optuna sampler; a seeded one is reseeded past the trials made (a relaunch must not draw a
    former launch's points again)."""
    options = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "_target_"}
    cls = getattr(optuna.samplers, str(cfg._target_).rsplit(".", 1)[1])
    if options.get("seed") is not None:
        options["seed"] = int(options["seed"]) + seed_offset
    return cls(**options)


def make_storage(storage: str | None):
    if storage is None:
        return None
    if str(storage).startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = str(storage)[len("journal:"):].removeprefix("//")
        return JournalStorage(JournalFileBackend(path))
    return str(storage)


class Search:
    def __init__(self, *, hydra_context, task_function, config, sampler, objectives, direction, study_name, storage,
                 n_trials, n_jobs, max_failure_rate, decimals, params) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.sampler_cfg, self.objectives = sampler, list(objectives)
        self.study_name, self.storage = study_name, storage
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.n_trials, self.n_jobs, self.max_failure_rate, self.decimals = n_trials, n_jobs, max_failure_rate, decimals
        self.params = params
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        self.job_idx = 0

    # ----------------------------------------------------------------- the loop
    def sweep(self, arguments: list[str]) -> None:
        from spfde.rundir.checkpoint import RunDirError
        from spfde.rundir.lifecycle import lock_run_dir, release_run_dir

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            check_sweeper_settings(self.config.hydra.sweeper)
            space, fixed = search_space([*params_of(self.config.hydra.sweeper, arguments), *arguments],
                                        self.decimals)
            budget = Budget.of(self.config)
            if budget:
                budget.check()
            sweep_dir.mkdir(parents=True, exist_ok=True)
            lock_run_dir(sweep_dir)  # one search at a time in a sweep directory (and its study)
        except (ConfigError, RunDirError) as e:
            print(f"spfde: error: {e}", file=sys.stderr)
            sys.exit(2)
        try:
            # multirun.yaml as Hydra's basic sweeper saves it (spfde.results.status, spfde.results.dashboard read it)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            study = self.open_study(sweep_dir, space, budget)
            to_go = self.continue_study(study)
            while to_go > 0:
                batch = self.ask_batch(study, space, fixed, budget, min(self.n_jobs, to_go))
                returns = self.launcher.launch([overrides for _, overrides in batch], initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                self.tell_batch(study, batch, returns)
                to_go -= len(batch)
            self.save_results(study, sweep_dir)
        except SearchStop as e:
            print(f"spfde: error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            release_run_dir(sweep_dir)

    def open_study(self, sweep_dir: Path, space: dict[str, Axis], budget: Budget | None):
        """The sweep directory's study, created or continued; a stored box that differs from this one, a study of an
        older Optuna or a damaged file is one line (SearchStop)."""
        storage = make_storage(self.storage)
        where = str(self.storage)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage,
                                        sampler=make_sampler(self.sampler_cfg, 0), directions=self.directions,
                                        load_if_exists=True)
        except RuntimeError as e:
            if "no longer compatible with the table schema" in str(e):
                found = re.search(r"set up by (optuna [\w.]+)", str(e))
                raise SearchStop(f"{where} holds a study of an older Optuna ({found[1] if found else 'its schema'}): "
                                 f"upgrade it with `optuna storage upgrade --storage {where}` and relaunch the same "
                                 "command to continue it") from None
            raise SearchStop(f"{where} cannot be opened as a study ({str(e).splitlines()[0][:200]}); move it aside "
                             "to start the search afresh (finished runs are found again, not trained again)") from None
        except ValueError as e:  # e.g. the study's directions differ from this search's
            raise SearchStop(f"{where}: {str(e).splitlines()[0][:300]}; use another sweep directory "
                             "(hydra.sweep.dir=...) for another search") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors of a truncated or foreign file, among others
            raise SearchStop(f"{where} is damaged or not a study ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'empty'}); move it aside "
                             "to start the search afresh (finished runs are found again, not trained again)") from None
        box = {name: axis.text() for name, axis in space.items()} | {"budget": budget.text() if budget else "none"}
        stored = study.user_attrs.get(BOX)
        if stored is None:
            study.set_user_attr(BOX, box)
        elif stored != box:
            differ = sorted(set(stored) ^ set(box) | {k for k in set(stored) & set(box) if stored[k] != box[k]})
            shown = "; ".join(f"{k}: {stored.get(k, 'not searched')} there, {box.get(k, 'not searched')} now"
                              for k in differ[:3])
            raise SearchStop(f"the study in {where} searched another box ({shown}): relaunch with its box to continue "
                             "it, or search this one in another sweep directory (hydra.sweep.dir=...)")
        log.info(f"Study {study.study_name} in {where}: {', '.join(f'{k}: {v}' for k, v in box.items())}; "
                 f"sampler {type(study.sampler).__name__}; directions {self.directions}")
        return study

    def continue_study(self, study) -> int:
        """Trials to go: n_trials is the study's total. Trials a stopped launch left RUNNING are marked FAIL (not
        counted) and their values queued again (their run directories resume); points planned over the budget are
        not counted; the sampler is reseeded past the trials made."""
        trials = study.get_trials(deepcopy=False)
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        if stale:
            study.set_user_attr(STOPPED, sorted({*study.user_attrs.get(STOPPED, []), *(t.number for t in stale)}))
        for t in stale:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)
        stopped = set(study.user_attrs.get(STOPPED, []))
        counted = [t for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
                   and t.number not in stopped and OVER_BUDGET not in t.user_attrs]
        to_go = max(0, self.n_trials - len(counted))
        self.job_idx = len(trials)  # Hydra's job numbers (#N in the log) go on from the former launches'
        study.sampler = make_sampler(self.sampler_cfg, len(trials))
        queued = sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if trials:
            log.info(f"Continuing the study of {len(trials)} trials ({len(counted)} finished"
                     + (f", {len(stale)} stopped while running: their values again" if stale else "")
                     + (f", {queued - len(stale)} queued" if queued > len(stale) else "") + f"): {to_go} trials to go")
        return to_go

    def ask_batch(self, study, space: dict[str, Axis], fixed: list[str], budget: Budget | None,
                  size: int) -> list[tuple]:
        """`size` trials to train, with their job overrides. With a budget each point is planned first: one over it is
        told as infeasible (constraint > 0, placeholder values, never trained) and another is asked for."""
        batch, over_in_a_row = [], 0
        while len(batch) < size:
            trial = study.ask({name: distribution(axis) for name, axis in space.items()})
            overrides = [*fixed, *(f"{name}={override_value(space[name], trial.params[name])}" for name in space)]
            if budget is not None:
                cost = budget.cost(self.job_config(overrides))
                trial.set_constraint("budget", cost["over"])
                if cost["over"] > 0:
                    self.tell_over_budget(study, trial, cost, overrides, budget)
                    over_in_a_row += 1
                    if over_in_a_row >= MAX_OVER_BUDGET:
                        raise SearchStop(f"{MAX_OVER_BUDGET} points in a row were over {budget.text()}: narrow the box "
                                         "to where it fits (python -m spfde.plan -m ... shows its feasible part)")
                    continue
            over_in_a_row = 0
            batch.append((trial, overrides))
        return batch

    def job_config(self, overrides: list[str]):
        """A job's config, composed as the launcher composes it."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with_hydra = OmegaConf.to_container(cfg, resolve=False)
        with_hydra.pop("hydra", None)
        return OmegaConf.create(with_hydra)

    def tell_over_budget(self, study, trial, cost: dict, overrides: list[str], budget: Budget) -> None:
        """A point over the budget: infeasible in the study (its constraint), with values no feasible point can be
        worse than in the sampler's eyes (Optuna ranks infeasible trials by their violation alone)."""
        values = []
        for objective, direction in zip(self.objectives, self.directions):
            planned = cost["plan"].get(objective)
            values.append(0.0 if direction == "maximize" else float(planned) if planned is not None else 1e300)
        trial.set_user_attr(OVER_BUDGET, f"planned {cost['cost']:.4g} > {cost['limit']:.4g}: not trained")
        study.tell(trial, values)
        log.info(f"\tover {budget.text()}, not trained: {' '.join(overrides[-len(trial.params):])} "
                 f"(planned {cost['cost']:.4g}, limit {cost['limit']:.4g})")

    def tell_batch(self, study, batch: list[tuple], returns) -> None:
        failures = 0
        for (trial, _), ret in zip(batch, returns):
            try:
                value = ret.return_value  # raises the job's own error for a failed trial
                values = [float(value)] if len(self.directions) == 1 else [float(v) for v in value]
                if len(values) != len(self.directions) or not all(math.isfinite(v) for v in values):
                    raise ValueError(f"the trial returned {value!r} for {len(self.directions)} objectives")
            except Exception as e:  # noqa: BLE001 - any failure of a trial: FAIL in the study, without values
                study.tell(trial, state=TrialState.FAIL)
                log.warning(f"trial {trial.number} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                failures += 1
                continue
            study.tell(trial, values)
        if failures and failures / len(batch) > self.max_failure_rate:
            raise SearchStop(f"{failures} of the {len(batch)} trials of a batch failed (hydra.sweeper.max_failure_rate="
                             f"{self.max_failure_rate}); each failed run's run.log says why")

    def save_results(self, study, sweep_dir: Path) -> None:
        feasible = study.best_trials if len(self.directions) > 1 else []
        if len(self.directions) == 1:
            done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if OVER_BUDGET not in t.user_attrs]
            if not done:
                return
            best = (max if self.directions[0] == "maximize" else min)(done, key=lambda t: t.value)
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}, value {best.value}")
        else:
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in feasible
                                                       if OVER_BUDGET not in t.user_attrs]}
            log.info(f"Pareto front of the study: {len(results['solutions'])} trials")
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
