"""`python -m spfde.report <sweep dir or run dirs> [--out DIR] [--wandb]`: tables and figures from
finished runs.

Finds every run directory (one holding `summary.json`) under the given paths, groups runs whose resolved
config is the same except for the seed (keys that cannot change results aside; a repeated seed in a group is
an error), and writes into --out (default: the first path's `report/`):
  runs.csv       one row per run
  summary.csv    one row per group: mean ± std of accuracy over seeds (std blank for one seed: undefined),
                 training FLOPs, memory, time, the config keys that vary between groups
  table.md       the paper's layout (method rows; per sparsity: training FLOPs and accuracy), and the
                 full grouped table
  tables.tex     the same as LaTeX booktabs tables (spfde.results.tex): Table 2's or Table 3's layout for
                 those sweeps (experiment_name table2/table3), then the grouped table
  acc_vs_flops.png/.pdf     accuracy ± std against training cost: for an x-by-y grid one line per x
                            against the FLOPs saved, otherwise one series per row against the training FLOPs
  acc_vs_train_flops.png/.pdf   for a grid, the same lines against the training FLOPs themselves
  heatmap_acc.png/.pdf, heatmap_saving.png/.pdf   x (freeze) by y (sieve) grids, when the runs span one
  pareto.csv, pareto.png/.pdf   the configurations not dominated in mean accuracy vs mean training FLOPs
                                (spfde.results.pareto), and every configuration against absolute FLOPs with the front
  timelines/<run>.png/.pdf  per run and epoch: accuracy, frozen blocks, share of the data seen, sparsity
  index.html     one page with the notes, every table and every figure above (spfde.results.html), offline
Figures say n (seeds), draw no error bar for one seed and use Okabe & Ito's colour-blind-safe palette.
With --wandb the grouped table (and the figures) are logged as one wandb run of job type `report` in the
runs' logger.project/entity, under <out>/wandb (offline unless WANDB_MODE says otherwise); offline, the
command prints the `wandb sync` line that uploads it and the runs' own offline logs (<run>/wandb/offline-run-*).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
from pathlib import Path

from spfde.results.figures import describe, write_figures
from spfde.results.html import write_index
from spfde.results.pareto import write_pareto
from spfde.results.runs import (
    ReportError,
    find_runs,
    find_unfinished,
    group,
    load_run,
    markdown,
    printable,
    read_metrics,
    write_csv,
)
from spfde.results.tex import latex_tables
from spfde.rundir.checkpoint import not_regular, read_summary


def log_to_wandb(groups: list[dict], images: list[Path], name: str, out: Path, run: Path) -> tuple[Path, str | None]:
    """One wandb run (job type `report`) in the runs' project and entity (their logger config), written
    under the report folder. Returns the run's directory (`<out>/wandb/offline-run-*` offline: what
    `wandb sync` takes) and, online, its URL."""
    import os

    from omegaconf import OmegaConf

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else OmegaConf.create()
    project = OmegaConf.select(cfg, "logger.project", default=None) or "spfde"
    entity = OmegaConf.select(cfg, "logger.entity", default=None)
    run = wandb.init(project=project, entity=entity, dir=str(out), job_type="report", name=f"report-{name}",
                     group=name)
    columns = list(groups[0])
    run.log({"ablation": wandb.Table(columns=columns, data=[[g[c] for c in columns] for g in groups]),
             **{p.stem: wandb.Image(str(p)) for p in images}})
    # the run's own directory, not run.dir (its files/ sub-folder, which `wandb sync` does not take)
    run_dir, url = Path(run.settings.sync_dir), None if run.settings.mode in ("offline", "dryrun") else run.url
    run.finish()
    return run_dir, url


def wandb_sync_command(report_run: Path, runs: list[Path]) -> str:
    """One `wandb sync` command that uploads the report's offline run and the runs' own offline logs
    (`<run>/wandb/offline-run-*`, those a run with logger.mode=offline wrote), each directory named as it is."""
    offline = [report_run, *sorted(p.absolute() for run in runs for p in (run / "wandb").glob("offline-run-*")
                                   if p.is_dir())]  # absolute: the command works from any directory
    return shlex.join(["wandb", "sync", *map(str, offline)])


def write_whole(out: Path, write) -> list:
    """`write(folder)` into a new folder beside `out`, then swapped in for `out` whole: a report stopped or failing
    while it writes leaves the previous one as it was, and a new report keeps no file of an earlier one (timelines
    of runs no longer in it). A full or read-only disk, or `out` naming a file, is a one-line ReportError."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder: give a folder (it is created if missing)")
    staging, old = out.with_name(f".{out.name}.tmp{os.getpid()}"), out.with_name(f".{out.name}.old{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for leftover in out.parent.glob(f".{out.name}.*"):  # the folders of reports that were killed
            found = re.fullmatch(rf"\.{re.escape(out.name)}\.(tmp|old)(\d+)", leftover.name)
            if found and (int(found[2]) == os.getpid() or not pid_alive(int(found[2]))):
                shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir()
        result = write(staging)
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException as e:  # a write error deep in a library may surface as another exception; Ctrl-C too
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # the swap failed half-way: the earlier report goes back
        cause = os_error_in(e) if isinstance(e, Exception) else None
        if cause is None:
            raise
        free = shutil.disk_usage(next((p for p in (out, *out.parents) if p.exists()), Path("/"))).free
        raise ReportError(f"cannot write the report in {out} ({cause.strerror or cause}; {free} bytes free on that "
                          f"disk): free some space or make it writable, or choose another folder with --out; an "
                          f"earlier report there is unchanged") from None
    shutil.rmtree(old, ignore_errors=True)
    return result


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind an exception (a full disk inside matplotlib's PDF writer surfaces as an AttributeError
    raised while it cleans up), or None."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spfde.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories or run directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first path>/report)")
    parser.add_argument("--wandb", action="store_true", help="also log the grouped table as a wandb run")
    parser.add_argument("--no-timelines", action="store_true", help="skip the per-run timeline figures")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        raise ReportError(f"no such directory: {missing[0]}")

    found = find_runs(args.paths)
    runs, rows, left_out = [], [], []
    for run in found:  # a damaged summary leaves its run out, named, and the report goes on
        summary, problem = read_summary(run / "summary.json")
        if problem:
            left_out.append(f"damaged: {run / 'summary.json'} ({problem}); relaunch the run to rewrite it")
            continue
        if kind := next((f"{name} is {k}" for name in ("config.yaml", "metrics.jsonl")
                         if (k := not_regular(run / name))), ""):
            left_out.append(f"damaged: {run} ({kind}, not a regular file); remove it and relaunch the run")
            continue
        runs.append(run)
        rows.append(load_run(run, summary))
        if bad := read_metrics(run)[1]:
            left_out.append(f"damaged: {run / 'metrics.jsonl'} ({bad} lines unreadable; its timeline shows the rest); "
                            "relaunch the run to rebuild it")
    left_out += [f"unfinished: {run} (no summary.json yet)" for run in find_unfinished(args.paths, found)]
    left_out = [printable(line) for line in left_out]
    for line in left_out:
        print(line)
    if not runs:
        raise ReportError(f"no finished runs (summary.json) under {', '.join(map(str, args.paths))}")
    out = (args.out or args.paths[0] / "report").absolute()
    groups = group(rows)
    experiments = sorted({str(r["experiment"]) for r in rows})

    def write(folder: Path) -> list[Path]:
        (folder / "left_out.txt").write_text("".join(line + "\n" for line in left_out))
        write_csv(folder / "runs.csv", [{k: v for k, v in r.items() if k != "config"} for r in rows])
        write_csv(folder / "summary.csv", groups)
        (folder / "table.md").write_text(markdown(groups))
        (folder / "tables.tex").write_text(latex_tables(groups, experiments))
        images = write_figures(groups, runs, folder, timelines=not args.no_timelines)
        images += write_pareto(groups, folder, describe(groups))
        # last: the page shows every table and figure written above
        sweeps = ", ".join(e for e in experiments if e != "None") or ", ".join(p.name for p in args.paths)
        write_index(folder, printable(f"SpFDE report: {sweeps}"), printable(f"{len(runs)} runs in {len(groups)} "
                    f"groups, from {', '.join(map(str, args.paths))}"), left_out)
        return [out / p.relative_to(folder) for p in images]

    images = write_whole(out, write)
    page = out / "index.html"
    print(markdown(groups))
    print(f"{len(runs)} runs in {len(groups)} groups -> {out}" + (f" ({len(left_out)} left out or damaged, listed in "
                                                               f"left_out.txt)" if left_out else ""))
    print(f"every table and figure on one page: {page}")
    if args.wandb:
        summary_figures = [p for p in images if p.parent == out]  # not one timeline per run
        report_run, url = log_to_wandb(groups, summary_figures, args.paths[0].name, out, runs[0])
        if url:
            print(f"wandb: {url}")
        else:  # offline (unless WANDB_MODE=online): nothing is uploaded until this command runs
            print(f"wandb (offline): to upload: {wandb_sync_command(report_run, runs)}")

