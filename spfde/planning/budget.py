"""The budget solver of `spfde.planning.plan`: which layer-freezing target x and data-sieving fraction y to run.

`plan.budget=F` (a fraction of the plain sparse run's training FLOPs, i.e. the same run with freeze=0 sieve=0)
or `plan.budget_hours=H` (calibrated wall-clock): every pair (x, y) on a 0.05 grid with x, y <= 0.5 is planned
(pairs the freezing solver or the sieve's check refuse are left out) and those within the budget are listed.

The choice (docs/cost.md): in the paper's Table 2 SpFDE's accuracy falls as its saving grows
(15%+15% > 20%+20% > 25%+25% at every sparsity), and every SpFDE configuration it reports, in Tables 2 and 3,
splits the saving evenly between freezing and sieving (x = y). So among the pairs within the budget we take the
ones as even as the grid allows (|x - y| <= 0.05, else the least uneven), and of those the one that saves the
least (the most planned FLOPs, or hours, within the budget). With `plan.results=<sweep dir>` the choice is
instead the finished configuration of that sweep with the best measured mean test accuracy within the budget.
"""

from __future__ import annotations

import copy
import shlex

from spfde.config import ConfigError
from spfde.planning.calibrate import calibrate, estimate, fmt_duration, used_depths
from spfde.planning.plan import build_plan, planned_data
from spfde.results.pareto import pareto_front
from spfde.results.runs import find_runs, group, load_run, result_config
from spfde.training.freeze import FreezeError
from spfde.training.sieve import SieveError

STEP = 0.05
LARGEST = 0.5
GRID = [round(STEP * i, 2) for i in range(int(round(LARGEST / STEP)) + 1)]


def unevenness(x: float, y: float) -> int:
    """Grid steps between x and y beyond one (0: as even as the grid allows)."""
    return max(0, int(round(abs(x - y) / STEP)) - 1)


def candidates(cfg, pairs=None, calibrated: bool = False) -> tuple[list[dict], dict]:
    """Every plannable (x, y) pair of `pairs` (default: the grid) with its planned FLOPs, their fraction of the
    plain run's and, with `calibrated`, its estimated wall-clock; and the plain run's plan."""
    work = copy.deepcopy(planned_data(cfg)[0])  # one copy (an image folder counted once), set pair by pair
    convention = (cfg.cost.memory,)
    work.freeze, work.sieve = 0.0, 0.0
    plain = build_plan(work, conventions=convention)
    base = plain["train_flops_no_freeze_sieve"]
    out, plans = [], []
    for x, y in pairs if pairs is not None else [(x, y) for x in GRID for y in GRID]:
        work.freeze, work.sieve = float(x), float(y)
        try:
            plan = build_plan(work, conventions=convention)
        except (FreezeError, SieveError):
            continue  # out of reach for the solver, or too few samples left: not a candidate
        out.append({"freeze": x, "sieve": y, "train_flops": plan["train_flops"], "fraction": plan["train_flops"] / base,
                    "saving": 1 - plan["train_flops"] / base})
        plans.append(plan)
    if calibrated and plans:  # every depth any pair uses, timed in one go (or read from the cache)
        depths = sorted({k for plan in plans for k in used_depths(plan)})
        times, _ = calibrate(work, plain["num_classes"], tuple(plain["input_shape"]), depths)
        for row, plan in zip(out, plans):
            work.freeze, work.sieve = float(row["freeze"]), float(row["sieve"])
            e = estimate(work, plan, times)
            row["estimated_s"], row["unit"] = e["total_s"], e["unit"]
    return out, plain


def within(rows: list[dict], cfg) -> list[dict]:
    if cfg.plan.budget_hours:
        return [r for r in rows if r["estimated_s"] <= 3600 * cfg.plan.budget_hours]
    return [r for r in rows if r["fraction"] <= cfg.plan.budget + 1e-12]


def out_of_reach(rows: list[dict], cfg) -> ConfigError:
    if cfg.plan.budget_hours:
        best = min(rows, key=lambda r: r["estimated_s"])
        return ConfigError(f"plan.budget_hours={cfg.plan.budget_hours:g} is out of reach: the fastest pair on the grid "
                           f"(freeze={best['freeze']:g} sieve={best['sieve']:g}) is estimated at "
                           f"{best['estimated_s'] / 3600:.3g} h")
    best = min(rows, key=lambda r: r["fraction"])
    return ConfigError(f"plan.budget={cfg.plan.budget:g} is out of reach: the smallest reachable fraction is "
                       f"{best['fraction']:.3f} of the run without freezing and sieving (freeze={best['freeze']:g} "
                       f"sieve={best['sieve']:g}, each at most {LARGEST:g})")


def choose(rows: list[dict], cfg) -> dict:
    """The rule of docs/cost.md: as even a split as the grid allows, then the least saving within the budget."""
    cost = "estimated_s" if cfg.plan.budget_hours else "train_flops"
    best = min(rows, key=lambda r: (unevenness(r["freeze"], r["sieve"]), -r[cost], r["freeze"]))
    return {**best, "rule": "the most even split of x and y (|x - y| <= 0.05 where the grid allows), then the least "
                            "saving within the budget (paper Table 2: accuracy falls as the saving grows; its SpFDE "
                            "configurations all split it evenly)"}


# keys of a dimension's options: a run with the dimension off has none of them (spfde.results.report.result_config)
DIMENSION_OPTIONS = ("freeze_scheme.", "freeze_fraction", "sieve_update", "sieve_method", "sieve_oneshot_at")


def differing_key(config: dict, planned: dict) -> str | None:
    """The first key in which a run's result config (spfde.results.report.result_config) differs from the planned run's,
    freeze and sieve (and the options of a dimension that one of them has off) aside; None: the same run."""
    for key in sorted(set(config) | set(planned)):
        if key in ("freeze", "sieve") or (key.startswith(DIMENSION_OPTIONS) and (key not in config) != (key not in
                                                                                                     planned)):
            continue
        if config.get(key) != planned.get(key):
            return f"{key}={config.get(key)} there, {planned.get(key)} here"
    return None


def measured(cfg, results: str) -> tuple[list[dict], int]:
    """The sweep's finished configurations that are this run but for freeze and sieve (every other result-changing
    key equal: an accuracy measured with another learning rate says nothing of the command printed): their (x, y),
    mean test accuracy and seed count (spfde.results.report's grouping); and how many finished configurations differ."""
    from pathlib import Path

    root = Path(results).expanduser()
    if not root.is_dir():
        raise ConfigError(f"plan.results={results}: no such directory (give a sweep directory, e.g. "
                          "outputs/sweeps/grid_xy)")
    runs = find_runs([root])
    if not runs:
        raise ConfigError(f"plan.results={results} holds no finished run (no summary.json under it)")

    planned = result_config(cfg)
    rows = [load_run(r) for r in runs]
    differ = {r["run_dir"]: differing_key(r["config"], planned) for r in rows}
    same = group([r for r in rows if differ[r["run_dir"]] is None])
    if not same:
        example = next(d for d in differ.values() if d)
        raise ConfigError(f"plan.results={results} holds no finished run of this configuration: its runs differ in "
                          f"more than freeze and sieve (e.g. {example}); give the sweep's settings to the plan as well")
    others = len(group(rows)) - len(same)
    front = [id(g) for g in pareto_front(same)]  # the report's front of these configurations (pareto.csv)
    return ([{"freeze": float(g["freeze"] or 0), "sieve": float(g["sieve"] or 0), "acc_mean": g["acc_mean"],
              "acc_std": g["acc_std"], "seeds": g["seeds"], "label": g["label"], "on_front": id(g) in front}
             for g in same],
            others)


def command(overrides: list[str], x: float, y: float) -> str:
    """`python -m spfde.run` with the plan's overrides, freeze and sieve set to the choice (plan.* dropped)."""
    keep = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in ("freeze", "sieve")
            and not o.lstrip("+~").startswith("plan.")]
    return shlex.join(["python", "-m", "spfde.run", *keep, f"freeze={x:g}", f"sieve={y:g}"])


def solve(cfg, overrides: list[str]) -> dict:
    """The solver's answer: `candidates` (within the budget), `choice` (with its command) and the budget."""
    calibrated = bool(cfg.plan.budget_hours)
    rows, plain = candidates(cfg, calibrated=calibrated)
    if not rows:
        raise ConfigError("no (freeze, sieve) pair on the grid can be planned for this run (the freezing solver and "
                          "the sieve's check refuse them all)")
    fitting = within(rows, cfg)
    if not fitting:
        raise out_of_reach(rows, cfg)
    answer = {"budget": cfg.plan.budget or None, "budget_hours": cfg.plan.budget_hours or None,
              "plain_train_flops": plain["train_flops_no_freeze_sieve"], "grid_pairs": len(GRID) ** 2,
              "plannable_pairs": len(rows), "candidates": fitting}
    if cfg.plan.results:
        found, other = measured(cfg, cfg.plan.results)
        planned = {(r["freeze"], r["sieve"]): r for r in candidates(cfg, [(g["freeze"], g["sieve"]) for g in found],
                                                                     calibrated)[0]}
        inside = {k: r for k, r in planned.items() if within([r], cfg)}
        usable = [g for g in found if (g["freeze"], g["sieve"]) in inside]
        if not usable:
            raise ConfigError(f"plan.results={cfg.plan.results}: none of its {len(found)} finished configurations of "
                              f"this run ({other} others skipped: they differ in more than freeze and sieve) is "
                              "within the budget")
        best = max(usable, key=lambda g: g["acc_mean"])
        choice = {**inside[(best["freeze"], best["sieve"])], "acc_mean": best["acc_mean"], "acc_std": best["acc_std"],
                  "seeds": best["seeds"], "on_front": best["on_front"],
                  "measured_configurations": len(usable), "skipped_configurations": other,
                  "rule": f"the best measured mean test accuracy among the {len(usable)} finished configurations of "
                          f"{cfg.plan.results} within the budget"}
    else:
        choice = choose(fitting, cfg)
    choice["command"] = command(overrides, choice["freeze"], choice["sieve"])
    answer["choice"] = choice
    return answer


def render(answer: dict) -> str:
    hours = answer["budget_hours"] is not None
    budget = (f"{answer['budget_hours']:g} h of wall-clock" if hours else
              f"{answer['budget']:g} x the training FLOPs without freezing and sieving "
              f"({answer['plain_train_flops']:.4g})")
    lines = [f"Budget: {budget}. {len(answer['candidates'])} of {answer['plannable_pairs']} plannable (x, y) pairs on "
             f"the grid ({answer['grid_pairs']} pairs, step {STEP:g}, each <= {LARGEST:g}) meet it:",
             f"  {'freeze x':>8}  {'sieve y':>7}  {'planned FLOPs':>13}  {'fraction':>8}  {'saving':>7}"
             + (f"  {'estimated':>10}" if hours else "")]
    for r in sorted(answer["candidates"], key=lambda r: (r["freeze"], r["sieve"])):
        lines.append(f"  {r['freeze']:>8g}  {r['sieve']:>7g}  {r['train_flops']:>13.4g}  {r['fraction']:>8.3f}  "
                     f"{100 * r['saving']:>6.1f}%" + (f"  {fmt_duration(r['estimated_s']):>10}" if hours else ""))
    c = answer["choice"]
    lines += ["", f"Choice: freeze={c['freeze']:g} sieve={c['sieve']:g}: planned {c['train_flops']:.4g} FLOPs, "
                  f"{c['fraction']:.3f} of the plain run (saving {100 * c['saving']:.1f}%)"
              + (f", estimated {fmt_duration(c['estimated_s'])}" if "estimated_s" in c else "")
              + (f"; measured test accuracy {c['acc_mean']:.4f}"
                 + (f" ± {c['acc_std']:.4f}" if c["acc_std"] is not None else "")  # no std for one seed
                 + f" over {c['seeds']} seed{'s' if c['seeds'] != 1 else ''}"
                 + (", on the sweep's Pareto front" if c["on_front"] else "") if "acc_mean" in c else ""),
              f"  rule: {c['rule']}",
              f"  run it: {c['command']}"]
    return "\n".join(lines)
