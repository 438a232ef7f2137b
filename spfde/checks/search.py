"""The settings of a search (`+search=...`), checked before the sweeper runs and before a study file exists: the
objectives, the sweeper's counts and sampler, the search box, the budget. The search itself: `spfde.sweeps.search`."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

from spfde.checks.validation import parse_overrides
from spfde.config import ConfigError, compose_config

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

    try:
        cfg = compose_config(job, with_hydra=True)
    except HydraException as e:  # a setting of the wrong type (hydra.sweeper.n_trials=abc): its first line
        if asks_for_search(job):
            raise ConfigError(search_setting_error(e)) from None
        return  # another sweeper, e.g. one that is not installed: Hydra says so itself
    if is_search(cfg.hydra):
        check_sweeper_settings(cfg.hydra.sweeper)
        search_space([*params_of(cfg.hydra.sweeper, sweep), *sweep], cfg.hydra.sweeper.decimals)
        search = cfg.get("search") or {}
        check_budget(float(search.get("budget") or 0.0), float(search.get("budget_hours") or 0.0))


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




def check_budget(share: float, hours: float) -> None:
    """search.budget (a share of the plain run's FLOPs) and search.budget_hours: in range, at most one given."""
    _need(0 <= share <= 1, f"search.budget={share}: a share of the plain run's FLOPs, in (0, 1]")
    _need(hours >= 0, f"search.budget_hours={hours}: hours, >= 0")
    _need(not (share and hours), "search.budget and search.budget_hours: give one of them")
