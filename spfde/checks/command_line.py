"""A command line of `spfde.run`, checked before Hydra starts (and creates a run directory or queues a job)."""

from __future__ import annotations

from spfde.checks.search import asks_for_search, check_search, check_search_installed
from spfde.checks.validation import (
    _check,
    check_before_work,
    check_booleans,
    check_output_dirs,
    check_user_config_dir,
    checked_sweep,
    compose_checked,
    is_hydra,
    is_searchpath,
    parse_overrides,
)
from spfde.config import compose_config


def precheck_overrides(args: list[str]) -> None:
    """Check a command line of `spfde.run` before Hydra starts (and creates a run directory): every
    override parses, an explicit hydra.run.dir / hydra.sweep.dir can be a directory, the config composes
    and validates (Hydra's multi-line composition errors become one line), then `check_before_work`. With
    -m every job of the sweep is checked before the first one starts or is queued (one line per bad job).
    Other Hydra flags are left to Hydra itself."""
    overrides = [a for a in args if not a.startswith("-")]
    check_search_installed(overrides)  # +search=... without the `search` extra: one line naming it
    search = asks_for_search(overrides)
    check_output_dirs(parse_overrides(overrides))
    check_booleans([a for a in overrides if not is_hydra(a)])  # a sweep's values too, in one line
    check_user_config_dir()
    flags = [a for a in args if a.startswith("-")]
    settings = [a for a in overrides if is_hydra(a)]
    # a hydra.searchpath given here decides which config files exist: the checks compose with it, as Hydra will
    overrides = [a for a in overrides if not is_hydra(a) or is_searchpath(a)]
    if not flags:
        _check(search is None, f"{search} is a search: add -m (it launches one run per trial; without -m one plain run "
                               "would train and the search would not happen)")
        check_before_work(compose_checked(overrides))
    elif set(flags) <= {"-m", "--multirun"}:
        if search:  # the search's own settings and box first: their line says what is wrong with them
            parsed = parse_overrides([a for a in overrides if not is_hydra(a)])
            check_search([*(o.input_line for o in parsed if not o.is_sweep_override()), *settings],
                         [o.input_line for o in parsed if o.is_sweep_override()])
        jobs, drawn = checked_sweep(overrides)
        if drawn:
            check_sweeper_draws(drawn[0], [*jobs[0][0], *settings])


def check_sweeper_draws(drawn: str, job: list[str]) -> None:
    """interval() values are drawn by a sweeper such as Optuna's; Hydra's basic sweeper refuses them."""
    from hydra.errors import HydraException

    try:
        sweeper = str(compose_config(job, with_hydra=True).hydra.sweeper.get("_target_", ""))
    except HydraException:  # e.g. a sweeper plugin that is not installed: Hydra says so itself
        return
    _check("BasicSweeper" not in sweeper, f"{drawn} needs a sweeper that draws values (such as Optuna's, "
           "hydra/sweeper=optuna); Hydra's basic sweeper, used here, takes lists: a=1,2, choice(), range(), glob()")
