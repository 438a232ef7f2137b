"""Searching the x% (freeze) + y% (sieve) trade-off with Hydra's Optuna sweeper (`+search=pareto`,
`+search=best_acc`: conf/search/). The sweeper itself is hydra_plugins/spfde_search (Hydra's Optuna sweeper
with a study that continues across launches); this module is the project's side of it, and imports no optuna:
- `search_objectives` / `trial_values`: what a trial's task function returns (spfde.run);
- `check_search_installed`, `check_objectives`: one-line errors before anything starts (the precheck);
- `plan_search`: the trial count and the planned FLOPs at the corners of the search box (spfde.plan -m).
"""

from __future__ import annotations

import importlib.util
import itertools
import math

from spfde.config import ConfigError

# summary.json fields a trial can return to the sweeper (hydra.sweeper.objectives)
OBJECTIVES = ("final_acc", "best_acc", "final_acc5", "train_flops", "train_time_s", "memory_min_bytes",
              "memory_avg_bytes")
INSTALL = "pip install 'spfde[search]'"
SWEEPER = "SearchSweeper"


def installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("optuna", "hydra_plugins.hydra_optuna_sweeper"))


def asks_for_search(overrides: list[str]) -> str | None:
    """The `+search=<name>` (or hydra/sweeper=spfde_search) override of a command line, if any."""
    return next((o for o in overrides if o.lstrip("+~").startswith(("search=", "hydra/sweeper=spfde_search"))), None)


def check_search_installed(overrides: list[str]) -> None:
    given = asks_for_search(overrides)
    if given and not installed():
        raise ConfigError(f"{given} needs Hydra's Optuna sweeper, which is not installed: {INSTALL}")


def is_search(hydra_cfg) -> bool:
    """Is the composed config's sweeper spfde's search sweeper?"""
    return SWEEPER in str(hydra_cfg.sweeper.get("_target_", ""))


def check_objectives(hydra_cfg) -> None:
    """hydra.sweeper.objectives: known summary fields, one per direction."""
    s = hydra_cfg.sweeper
    objectives = list(s.objectives)
    directions = [s.direction] if isinstance(s.direction, str) else list(s.direction)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"hydra.sweeper.objectives: {unknown[0]!r} is not a result a trial can return; choose "
                          f"from {', '.join(OBJECTIVES)}")
    if len(objectives) != len(directions):
        raise ConfigError(f"hydra.sweeper.objectives={objectives} and hydra.sweeper.direction={directions} must "
                          "have one entry each per objective")


def check_search(job: list[str]) -> None:
    """The search settings of a `-m` command line's (first) job, if its sweeper is spfde's search sweeper."""
    from hydra.errors import HydraException

    from spfde.config import compose_config

    try:
        hydra_cfg = compose_config(job, with_hydra=True).hydra
    except HydraException:  # e.g. a sweeper plugin that is not installed: Hydra says so itself
        return
    if is_search(hydra_cfg):
        check_objectives(hydra_cfg)


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
    """For `spfde.plan -m` of a search (None if the command line is no search): how many trials, in batches of
    how many, and the planned training FLOPs at the corners of the search box (the extremes of interval()
    params, every value of choice() / lists; FLOPs fall as freeze and sieve grow, so for those two the
    corners hold the range)."""
    from spfde.config import compose_config
    from spfde.plan import build_plan, fmt_flops
    from spfde.validation import compose_checked, is_hydra, parse_overrides, sample_values

    if not asks_for_search(overrides):
        return None
    check_search_installed(overrides)
    parsed = parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_cfg = compose_config(fixed, with_hydra=True).hydra
    if not is_search(hydra_cfg):
        return None
    check_objectives(hydra_cfg)
    s = hydra_cfg.sweeper
    given = {o.key_or_group for o in parsed}
    params = [o for o in parsed if o.is_sweep_override()]
    params += parse_overrides([f"{k}={v}" for k, v in (s.params or {}).items() if k not in given])
    fixed = [f for f in fixed if not is_hydra(f)]
    axes = [sample_values(o) for o in params]
    rows = []
    for corner in itertools.product(*axes):
        plan = build_plan(compose_checked([*fixed, *corner]))
        rows.append((plan["train_flops"], plan["train_flops"] / plan["dense_train_flops"], " ".join(corner)))
    lines = [f"{'training FLOPs':>15}{'vs dense':>10}  corner of the search box"]
    lines += [f"{fmt_flops(f):>15}{100 * share:>9.1f}%  {corner}" for f, share, corner in rows]
    low, high = min(r[0] for r in rows), max(r[0] for r in rows)
    batches = math.ceil(s.n_trials / max(1, s.n_jobs))
    lines += ["", f"search: {s.n_trials} trials in batches of {s.n_jobs} ({batches} batches), objectives "
                  f"{', '.join(f'{d} {o}' for o, d in zip(s.objectives, directions_of(s)))}; each trial plans "
                  f"{fmt_flops(low)} to {fmt_flops(high)} training FLOPs; the search {fmt_flops(s.n_trials * low)} "
                  f"to {fmt_flops(s.n_trials * high)} in all"]
    return "\n".join(lines)


def directions_of(sweeper) -> list[str]:
    return [str(sweeper.direction)] if isinstance(sweeper.direction, str) else [str(d) for d in sweeper.direction]
