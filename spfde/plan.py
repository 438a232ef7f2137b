"""`python -m spfde.plan [same overrides as spfde.run]`: what a run will cost, without training it.

Prints the model's per-block FLOPs, the planned schedules, the expected training FLOPs (total, against
dense training and against the same run without freezing and sieving), inference FLOPs and training
memory (minimum and average over the run, and the plain-DST minimum). `plan.format=json` prints one
JSON object instead. With `-m` (a sweep: `-m +sweep=grid_xy`, `-m freeze=0,0.1 seed=0,1`) it plans every
job and prints the job count and the sweep's total planned training FLOPs. Needs no data: sizes come from
the dataset config (an image folder's are counted in dataset.root, file names only); the model lives on the
meta device, so even ResNet-50 plans in seconds, and a sweep's jobs share one model build and FLOP table.

plan.calibrate=true: also the estimated wall-clock, from the run's own step timed on its device at each frozen
depth (spfde/planning/calibrate.py; cached in plan.calibration_file); with -m per job, in device-hours, and with a SLURM
launcher a warning for each job over hydra.launcher.timeout_min.
plan.budget=F (or plan.budget_hours=H with calibration): the (freeze, sieve) pairs within the budget and the
one to run (spfde/planning/budget.py); plan.results=<sweep dir> chooses by measured accuracy instead.
"""

from __future__ import annotations

# the planner's modules (Hydra, torch) load inside main, after --help: keeps start-up fast
import json
import re
import sys

from spfde.errors import exit_on_error


def hydra_quoted(value: str) -> str:
    """`value` as a single-quoted Hydra override string that reads back as `value`. In a quoted string Hydra
    un-escapes only backslashes that precede a quote (or the closing quote): those are doubled, and a quote
    inside gets one more backslash."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value) + "'"


def quote_results(args: list[str]) -> list[str]:
    """`plan.results=<dir>` with its value quoted for Hydra, unless it is quoted already: a sweep's run directory
    (`outputs/sweeps/smoke/freeze=0.1,sieve=0.2`) or ad-hoc sweep directory holds `=` and `,`, which Hydra's
    override grammar would read as syntax (`,` as a sweep list), so the path works as the shell gives it."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        out.append(f"{key}={hydra_quoted(value)}" if sep and key.lstrip("+") == "plan.results" and value
                   and not quoted else arg)
    return out


def plan_command(argv: list[str] | None = None) -> None:
    args = quote_results(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(f"usage: python -m spfde.plan [overrides]   (or -m [sweep overrides], e.g. -m +sweep=grid_xy)\n"
              f"{__doc__}")
        return
    # imported here, after --help: the planner builds models (torch), help needs none of it
    from spfde.checks.validation import check_before_work, compose_checked, is_hydra
    from spfde.planning import budget
    from spfde.planning.plan import add_estimate, build_plan, plan_sweep, planned_data, render
    from spfde.sweeps.search import plan_search

    overrides = [a for a in args if not a.startswith("-") and not is_hydra(a)]  # Hydra's settings plan nothing
    hydra_args = [a for a in args if not a.startswith("-") and is_hydra(a)]  # but a sweep's time limit is one
    if {"-m", "--multirun"} & set(args):  # a search (+search=...): its trials and FLOPs range, not a grid
        print(plan_search([a for a in args if not a.startswith("-")]) or plan_sweep(overrides, hydra_args))
        return
    cfg = compose_checked(overrides)
    check_before_work(planned_data(cfg)[0], data=False)  # with an image folder's own counts
    if cfg.plan.budget or cfg.plan.budget_hours:
        answer = budget.solve(cfg, overrides)
        print(json.dumps(answer) if cfg.plan.format == "json" else budget.render(answer))
        return
    plan = build_plan(cfg)
    if cfg.plan.calibrate:
        add_estimate(cfg, plan)
    if cfg.plan.format == "json":
        print(json.dumps({k: v for k, v in plan.items() if k != "schedule"} | {"schedule": plan["schedule"]}))
    else:
        print(render(plan))


main = exit_on_error(plan_command)  # the `spfde-plan` command

if __name__ == "__main__":
    main()
