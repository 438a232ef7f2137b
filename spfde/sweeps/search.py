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

import importlib.util
import itertools
import math
import re
from dataclasses import dataclass

from spfde.config import ConfigError

# summary.json fields a trial can return to the sweeper (hydra.sweeper.objectives)
OBJECTIVES = ("final_acc", "best_acc", "final_acc5", "train_flops", "train_time_s", "memory_min_bytes",
              "memory_avg_bytes")
INSTALL = "pip install 'spfde[search]'"
SWEEPER = "SearchSweeper"


def installed() -> bool:
    return importlib.util.find_spec("optuna") is not None


def asks_for_search(overrides: list[str]) -> str | None:
    """The `+search=<name>` (or hydra/sweeper=spfde_search) override of a command line, if any."""
    return next((o for o in overrides if o.lstrip("+~").startswith(("search=", "hydra/sweeper=spfde_search"))), None)


def check_search_installed(overrides: list[str]) -> None:
    given = asks_for_search(overrides)
    if given and not installed():
        raise ConfigError(f"{given} needs Optuna, which is not installed: {INSTALL}")


def is_search(hydra_cfg) -> bool:
    """Is the composed config's sweeper spfde's search sweeper?"""
    return SWEEPER in str(hydra_cfg.sweeper.get("_target_", ""))


def check_objectives(hydra_cfg) -> None:
    """hydra.sweeper.objectives: known summary fields, one per direction."""
    check_objectives_of(hydra_cfg.sweeper)


def check_objectives_of(s) -> None:
    objectives = list(s.objectives)
    directions = [s.direction] if isinstance(s.direction, str) else list(s.direction)
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad:
        raise ConfigError(f"hydra.sweeper.direction: {bad[0]!r} is neither maximize nor minimize")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"hydra.sweeper.objectives: {unknown[0]!r} is not a result a trial can return; choose "
                          f"from {', '.join(OBJECTIVES)}")
    if len(objectives) != len(directions):
        raise ConfigError(f"hydra.sweeper.objectives={objectives} and hydra.sweeper.direction={directions} must "
                          "have one entry each per objective")


def check_search(job: list[str], sweep: list[str] = ()) -> None:
    """Every setting of a search, given a `-m` command line's (first) job and the command line's sweep overrides:
    one line each, before the sweeper runs (and so before a study file exists)."""
    from hydra.errors import HydraException

    from spfde.config import compose_config

    try:
        cfg = compose_config(job, with_hydra=True)
    except HydraException as e:  # a setting of the wrong type (hydra.sweeper.n_trials=abc): its first line
        if asks_for_search(job):
            raise ConfigError(search_setting_error(e)) from None
        return  # another sweeper, e.g. one that is not installed: Hydra says so itself
    if is_search(cfg.hydra):
        check_sweeper_settings(cfg.hydra.sweeper)
        search_space([*params_of(cfg.hydra.sweeper, sweep), *sweep], cfg.hydra.sweeper.decimals)
        if budget := Budget.of(cfg):
            budget.check()


def search_setting_error(error: Exception) -> str:
    """Hydra's chained composition error as one line: the setting, its value, what it takes."""
    chain, cause = [], error
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = " ".join(" ".join(chain).split())
    found = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    key = re.search(r"full_key: (\S+)", text)
    if found and key:
        return f"{key[1]}={found[1]}: {key[1]} takes a{'n' if found[2][0] in 'AEIOU' else ''} {found[2].lower()}"
    return " ".join(str(error).split())[:300]


def check_sweeper_settings(s) -> None:
    """hydra.sweeper.* of a search: counts, rates and seeds that the loop can use."""
    check_objectives_of(s)
    _need(isinstance(s.n_trials, int) and s.n_trials >= 1,
          f"hydra.sweeper.n_trials={s.n_trials}: a search needs at least 1 trial (the total over its launches)")
    _need(isinstance(s.n_jobs, int) and s.n_jobs >= 1,
          f"hydra.sweeper.n_jobs={s.n_jobs}: a batch holds at least 1 trial")
    _need(0 <= s.max_failure_rate <= 1,
          f"hydra.sweeper.max_failure_rate={s.max_failure_rate}: a share of a batch's trials, in [0, 1]")
    _need(s.decimals is None or (isinstance(s.decimals, int) and 0 <= s.decimals <= 9),
          f"hydra.sweeper.decimals={s.decimals}: digits of the grid x and y are drawn on, 0 to 9 (or null)")
    seed = s.sampler.get("seed")
    _need(seed is None or (isinstance(seed, int) and seed >= 0), f"hydra.sweeper.sampler.seed={seed}: an integer >= 0")
    target = str(s.sampler.get("_target_", ""))
    _need(target.startswith("optuna.samplers."), f"hydra.sweeper.sampler: {target!r} is none of Optuna's samplers")
    storage = s.storage
    _need(storage is None or str(storage).startswith(("journal:", "sqlite:", "postgresql", "mysql")),
          f"hydra.sweeper.storage={storage}: give sqlite:///<file>, journal:<file> (shared file systems) or a "
          "database URL")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def params_of(sweeper, given: list[str] = ()) -> list[str]:
    """The sweeper's params (a preset's box) as overrides, but the keys the command line sweeps itself."""
    keys = {o.split("=", 1)[0] for o in given}
    return [f"{k}={v}" for k, v in (sweeper.params or {}).items() if k not in keys]


@dataclass(frozen=True)
class Axis:
    """One searched key: a float or int interval (on a grid of `step`, or on a log scale) or a set of choices."""

    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def text(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(map(str, self.choices))})"
        grid = f" on a grid of {self.step:g}" if self.step and self.kind == "float" else ""
        return f"{'log ' if self.log else ''}interval({self.low!r}, {self.high!r}){grid}"


def search_space(overrides: list[str], decimals: int | None) -> tuple[dict[str, Axis], list[str]]:
    """The box of a search from its sweep overrides (the preset's params, then the command line's): each swept key's
    Axis, and the other overrides as they are. A box no sampler can draw from is one line."""
    from hydra.core.override_parser.types import Transformer

    from spfde.checks.validation import parse_overrides

    space, fixed = {}, []
    for o in parse_overrides(overrides):
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        name, value, given = o.get_key_element(), o.value(), o.input_line
        if o.is_interval_sweep():
            low, high, log = value.start, value.end, "log" in value.tags
            _need(low < high, f"{given}: its low end {low!r} is not below its high end {high!r}")
            _need(not log or low > 0, f"{given}: a log-scale interval needs a low end above 0, got {low!r}")
            if isinstance(low, int) and isinstance(high, int):
                space[name] = Axis("int", low, high, 1, log)
            else:
                step = 10.0 ** -decimals if decimals is not None and not log else None
                if step is not None:
                    _need(high - low >= step, f"{given}: narrower than the grid step {step:g} of "
                                              f"hydra.sweeper.decimals={decimals}")
                space[name] = Axis("float", float(low), float(high), step, log)
        elif o.is_range_sweep():
            _need(value.step != 0, f"{given}: a range's step cannot be 0")
            choices = tuple(o.sweep_iterator(transformer=Transformer.encode))
            _need(len(choices) > 0, f"{given}: the range holds no value")
            space[name] = Axis("choice", choices=choices)
        elif o.is_choice_sweep():
            choices = tuple(o.sweep_iterator(transformer=Transformer.encode))
            _need(len(choices) > 0, f"{given}: choice() holds no value")
            space[name] = Axis("choice", choices=choices)
        else:
            raise ConfigError(f"{given}: a search draws from interval(), range() and choice(); glob() is for grids")
    return space, fixed


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
        _need(0 <= self.share <= 1, f"search.budget={self.share}: a share of the plain run's FLOPs, in (0, 1]")
        _need(self.hours >= 0, f"search.budget_hours={self.hours}: hours, >= 0")
        _need(not (self.share and self.hours), "search.budget and search.budget_hours: give one of them")

    def text(self) -> str:
        return (f"search.budget={self.share:g} (of the plain run's training FLOPs)" if self.share else
                f"search.budget_hours={self.hours:g} (calibrated wall-clock)")

    def cost(self, cfg) -> dict:
        """The planned cost of a point (its job's config): {"cost", "limit", "over" (cost/limit - 1, > 0 when over),
        "plan"}; planned as spfde.planning.plan plans it (with calibration for hours)."""
        from spfde.planning.plan import add_estimate, build_plan

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
    from spfde.checks.validation import compose_checked, is_hydra, parse_overrides, sample_values
    from spfde.config import compose_config
    from spfde.planning.plan import build_plan, fmt_flops

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
    from spfde.checks.validation import compose_checked

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
    from spfde.checks.validation import sample_values

    return sample_values(o)[0].split("=", 1)[1]


def directions_of(sweeper) -> list[str]:
    return [str(sweeper.direction)] if isinstance(sweeper.direction, str) else [str(d) for d in sweeper.direction]
