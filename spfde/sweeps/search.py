"""Searching the x% (freeze) + y% (sieve) trade-off with Optuna (`+search=pareto`, `+search=best_acc`:
conf/search/). The sweeper is hydra_plugins/spfde_search: Optuna's ask/tell loop driving Hydra's launchers, with
a study that continues across launches of one sweep directory (n_trials is the study's total; trials a stopped
launch left running are tried again with their values, and their run directories resume; the sampler is
reseeded past the trials made), x and y drawn on a grid of 10^-decimals, a lock on the sweep directory (one
search at a time), and a search box that cannot change under a stored study. With `search.budget` (or
`search.budget_hours`) every proposed point is planned before it trains: a point over the budget is never
trained, and is marked infeasible through Optuna's constraints (NSGA-II and TPE both honour them). This module
is the project's side of it, and imports no optuna:
- `search_objectives` / `trial_values`: what a trial's task function returns (spfde.run);
- `search_space`, `check_search`: the box and every setting of a search, one line each before a study exists;
- `Budget`: a point's planned cost against the budget;
- `plan_search`: the trial count, the planned FLOPs at the corners of the box and, with a budget, its feasible
  part (spfde.planning.plan -m).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from spfde.checks.search import (  # noqa: F401 (the search's settings, checked before it starts; used by its sweeper)
    OBJECTIVES,
    Axis,
    asks_for_search,
    check_budget,
    check_objectives,
    check_search,
    check_search_installed,
    check_sweeper_settings,
    installed,
    is_search,
    params_of,
    search_space,
)
from spfde.checks.validation import compose_checked, is_hydra, parse_overrides, sample_values
from spfde.config import compose_config
from spfde.planning.plan import add_estimate, build_plan, fmt_flops


@dataclass
class Budget:
    """`search.budget` (a share of the training FLOPs of the same run without freezing and sieving, as
    plan.budget) or `search.budget_hours` (calibrated wall-clock, as plan.budget_hours) of each point."""

    share: float = 0.0
    hours: float = 0.0

    @classmethod
    def of(cls, cfg) -> Budget | None:
        s = cfg.get("search") or {}
        budget = cls(float(s.get("budget") or 0.0), float(s.get("budget_hours") or 0.0))
        return budget if budget.share or budget.hours else None

    def check(self) -> None:
        check_budget(self.share, self.hours)

    def text(self) -> str:
        return (f"search.budget={self.share:g} (of the plain run's training FLOPs)" if self.share else
                f"search.budget_hours={self.hours:g} (calibrated wall-clock)")

    def cost(self, cfg) -> dict:
        """The planned cost of a point (its job's config): {"cost", "limit", "over" (cost/limit - 1, > 0 when over),
        "plan"}; planned as spfde.planning.plan plans it (with calibration for hours)."""
        plan = build_plan(cfg)
        if self.share:
            cost, limit = plan["train_flops"], self.share * plan["train_flops_no_freeze_sieve"]
        else:
            add_estimate(cfg, plan)
            cost, limit = plan["estimated_s"]["total"] / 3600, self.hours
        return {"cost": cost, "limit": limit, "over": cost / limit - 1, "plan": plan}


def search_objectives() -> list[str] | None:
    """Inside a trial of a search: the summary fields the sweeper asks for; None for a plain run or a grid sweep
    (which return the final accuracy, as always)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not is_search(hc):
        return None
    return list(hc.sweeper.objectives)


def trial_values(summary: dict, objectives: list[str]) -> float | tuple[float, ...]:
    """The trial's result for the sweeper: one float per objective (a tuple for several). A missing or
    non-finite value is an error, so that the trial is FAIL in the study, never a made-up number."""
    values = []
    for name in objectives:
        value = summary.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"the run's summary has no finite {name} ({value!r}): the trial failed")
        values.append(float(value))
    return values[0] if len(values) == 1 else tuple(values)


def plan_search(overrides: list[str]) -> str | None:
    """For `spfde.planning.plan -m` of a search (None if the command line is no search): how many trials, in batches of
    how many, the planned training FLOPs at the corners of the search box (the extremes of interval() params,
    every value of choice() / lists; FLOPs fall as freeze and sieve grow, so for those two the corners hold the
    range), and with a budget (search.budget, search.budget_hours) the part of the box that fits it."""
    if not asks_for_search(overrides):
        return None
    check_search_installed(overrides)
    parsed = parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_cfg = compose_config(fixed, with_hydra=True).hydra
    if not is_search(hydra_cfg):
        return None
    s = hydra_cfg.sweeper
    check_search(fixed, [o.input_line for o in parsed if o.is_sweep_override()])
    given = {o.key_or_group for o in parsed}
    params = [o for o in parsed if o.is_sweep_override()]
    params += parse_overrides([f"{k}={v}" for k, v in (s.params or {}).items() if k not in given])
    fixed = [f for f in fixed if not is_hydra(f)]
    budget = Budget.of(compose_checked(fixed))
    if budget:
        budget.check()
    axes = [sample_values(o) for o in params]
    rows = []
    for corner in itertools.product(*axes):
        cfg = compose_checked([*fixed, *corner])
        plan = build_plan(cfg)
        fits = "" if budget is None else ("fits" if budget.cost(cfg)["over"] <= 0 else "over")
        rows.append((plan["train_flops"], plan["train_flops"] / plan["dense_train_flops"], " ".join(corner), fits))
    lines = [f"{'training FLOPs':>15}{'vs dense':>10}  corner of the search box" + ("  (budget)" if budget else "")]
    lines += [f"{fmt_flops(f):>15}{100 * share:>9.1f}%  {corner}" + (f"  ({fits})" if fits else "")
              for f, share, corner, fits in rows]
    low, high = min(r[0] for r in rows), max(r[0] for r in rows)
    batches = math.ceil(s.n_trials / max(1, s.n_jobs))
    lines += ["", f"search: {s.n_trials} trials in batches of {s.n_jobs} ({batches} batches), objectives "
                  f"{', '.join(f'{d} {o}' for o, d in zip(s.objectives, directions_of(s)))}; each trial plans "
                  f"{fmt_flops(low)} to {fmt_flops(high)} training FLOPs; the search {fmt_flops(s.n_trials * low)} "
                  f"to {fmt_flops(s.n_trials * high)} in all"]
    if budget:
        lines += ["", *feasible_part(fixed, params, budget)]
    return "\n".join(lines)


def feasible_part(fixed: list[str], params: list, budget: Budget, points: int = 6) -> list[str]:
    """Which points of the box fit the budget: a map of `points` x `points` values of freeze (rows) and sieve
    (columns) when both are searched intervals (the other searched keys at the low end of their range), else none."""
    ranges = {o.key_or_group: o.value() for o in params if o.is_interval_sweep()}
    if not {"freeze", "sieve"} <= set(ranges):
        return [f"with {budget.text()}: each point is planned before it trains; one over the budget never trains"]
    others = [f"{o.key_or_group}={sample_values_low(o)}" for o in params if o.key_or_group not in ("freeze", "sieve")]

    def values(r) -> list[float]:
        return [round(r.start + (r.end - r.start) * i / (points - 1), 3) for i in range(points)]

    xs, ys = values(ranges["freeze"]), values(ranges["sieve"])
    fits = {(x, y): budget.cost(compose_checked([*fixed, *others, f"freeze={x}", f"sieve={y}"]))["over"] <= 0
            for x in xs for y in ys}
    lines = [f"feasible part of the box under {budget.text()}: {sum(fits.values())} of {len(fits)} points "
             "(# fits, . over; a point over the budget is never trained)",
             "freeze \\ sieve " + " ".join(f"{y:>6g}" for y in ys)]
    lines += [f"{x:>15g} " + " ".join(f"{'#' if fits[(x, y)] else '.':>6}" for y in ys) for x in xs]
    return lines


def sample_values_low(o) -> str:
    return sample_values(o)[0].split("=", 1)[1]


def directions_of(sweeper) -> list[str]:
    return [str(sweeper.direction)] if isinstance(sweeper.direction, str) else [str(d) for d in sweeper.direction]
