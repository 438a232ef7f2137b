"""How fast the commands that do not train start, and that none of them loads torch (`python -m spfde.bench.startup`).

Builds a sweep of `runs` run directories in a temporary folder: one tiny run is trained for real (a one-job basic
sweep of the quickstart setup, ResNet-8, one epoch: ~20 s on 2 cores), then copied into every job of a sweep over
`seed=range(runs)` with Hydra's own multirun.yaml (the job list `spfde.status` reads), each copy's config.yaml and
summary.json naming its seed; every fifth run loses its summary.json (stopped after its epoch). Then each command
runs `repeats` times in a fresh process, timed by the wall-clock, and once more under `python -X importtime`:

  command | wall-clock median (s) | import time of the biggest top-level packages | torch imported?

The import time of a package is the cumulative time (µs, shown in ms) of its outermost imports (those not made
from inside the same package): what loading it cost, the packages it loaded itself included (so spfde's holds
hydra's where spfde imports hydra); what Python's start-up (`site`) imports is left out of the packages but not of
"total", Python's whole import time of the command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import spfde

SRC = Path(spfde.__file__).resolve().parent.parent  # the checkout (or site-packages) this spfde comes from
TINY = ["experiment=quickstart", "epochs=1", "model.depth=8", "logger=none", "progress=false", "device=cpu"]
HEAVY = ("torch", "torchvision", "wandb")  # what a command that does not train must never load
SHOWN = 4  # packages named per command


def python_env() -> dict:
    """This spfde first on the path, no network, no progress bars."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def train_tiny_sweep(folder: Path) -> Path:
    """A real one-job basic sweep (seed=0) of the tiny run: its multirun.yaml and its one run directory."""
    sweep = folder / "one"
    proc = subprocess.run([sys.executable, "-m", "spfde.run", "-m", *TINY, "seed=0", f"hydra.sweep.dir={sweep}"],
                          cwd=folder, env=python_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the tiny run failed:\n{proc.stderr[-3000:]}")
    return sweep


def copy_sweep(source: Path, dest: Path, runs: int, partial_every: int = 5) -> Path:
    """`runs` copies of `source`'s one run as the jobs of a sweep over seed=range(runs), in Hydra's layout
    (multirun.yaml; <dest>/<job's override_dirname>/), each copy's config and summary naming its seed and run
    directory. Every `partial_every`-th run (0 for none) has no summary.json: stopped after its epoch."""
    from spfde.results.status import sweep_jobs

    (run,) = [p for p in source.iterdir() if (p / "summary.json").exists()]
    dest.mkdir(parents=True)
    text = (source / "multirun.yaml").read_text()
    text = re.sub(r"(?m)^(\s*- )seed=0$", rf"\g<1>seed=range(0,{runs})", text)
    text = text.replace(str(source), str(dest))
    (dest / "multirun.yaml").write_text(text)
    names = sweep_jobs(dest)
    if names is None or len(names) != runs:
        raise RuntimeError(f"multirun.yaml of {dest} does not list {runs} jobs: {names}")
    for seed, name in enumerate(names):
        job = dest / name
        shutil.copytree(run, job)
        for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
            text = path.read_text().replace(str(run), str(job))
            path.write_text(re.sub(r"(?m)^seed: 0$", f"seed: {seed}", text))
        overrides = job / ".hydra" / "overrides.yaml"
        overrides.write_text(re.sub(r"(?m)^- seed=0$", f"- seed={seed}", overrides.read_text()))
        summary = json.loads((job / "summary.json").read_text())
        (job / "summary.json").write_text(json.dumps({**summary, "seed": seed, "run_dir": str(job)}, indent=2))
        if partial_every and seed % partial_every == partial_every - 1:
            (job / "summary.json").unlink()
    return dest


def import_times(stderr: str) -> dict[str, int]:
    """Per top-level package, the cumulative µs of its outermost imports in `-X importtime`'s lines
    ("import time: self | cumulative | <two spaces per level>name", each printed when its import ends), and
    "total": the sum over the imports made at the top level."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|", 2)
            if cumulative.strip().isdigit():
                body = name.rstrip()
                lines.append((len(body) - len(body.lstrip(" ")) - 1, int(cumulative), body.strip()))
    times: dict[str, int] = {"total": 0}
    ancestors: list[str] = []  # read backwards, an import's enclosing ones come before it
    for level, cumulative, name in reversed(lines):
        level = max(0, level // 2)
        ancestors = ancestors[:level]
        top = name.split(".")[0]
        if level == 0:
            times["total"] += cumulative
        tops = {a.split(".")[0] for a in ancestors}
        if top not in tops and "site" not in tops | {top}:  # Python's own start-up (site) is no command's
            times[top] = times.get(top, 0) + cumulative
        ancestors.append(name)
    return times


def heavy_imported(stderr: str) -> list[str]:
    """The modules of torch, torchvision or wandb that `-X importtime`'s lines name."""
    names = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def commands(sweep: Path, out: Path) -> list[tuple[str, list[str], dict]]:
    """(label, arguments after `python`, extra environment) of each command that does not train."""
    completion = {"COMP_LINE": "spfde-run sparsity=r", "COMP_POINT": "20"}  # what bash gives Hydra at a Tab
    return [
        (f"status <sweep of {len(sweep_dirs(sweep))} runs>", ["-m", "spfde.status", str(sweep)], {}),
        ("status --help", ["-m", "spfde.status", "--help"], {}),
        ("report <sweep> --no-timelines", ["-m", "spfde.report", str(sweep), "--out", str(out), "--no-timelines"],
         {}),
        ("report --help", ["-m", "spfde.report", "--help"], {}),
        ("dashboard --help", ["-m", "spfde.dashboard", "--help"], {}),
        ("analyze --help", ["-m", "spfde.analyze", "--help"], {}),
        ("plan --help", ["-m", "spfde.plan", "--help"], {}),
        ("run --help", ["-m", "spfde.run", "--help"], {}),
        ("bench --help", ["-m", "spfde.bench", "--help"], {}),
        ("run -sc query=bash (Tab)", ["-m", "spfde.run", "-sc", "query=bash"], completion),
    ]


def sweep_dirs(sweep: Path) -> list[Path]:
    return [p for p in sweep.iterdir() if p.is_dir() and (p / "config.yaml").exists()]


def measure(args: list[str], env: dict, cwd: Path, repeats: int) -> tuple[float, dict[str, int], list[str]]:
    """The median wall-clock of `repeats` runs, then one run's import times and heavy modules."""
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    return statistics.median(walls), import_times(proc.stderr), heavy_imported(proc.stderr)


def packages_text(times: dict[str, int]) -> str:
    biggest = sorted(((t, p) for p, t in times.items() if p != "total"), reverse=True)[:SHOWN]
    return ", ".join(f"{p} {t / 1000:.0f}" for t, p in biggest) + f" (total {times['total'] / 1000:.0f})"


def startup(runs: int = 75, repeats: int = 5) -> str:
    """The Markdown table of every command that does not train, on a sweep of `runs` copies of one tiny run."""
    with tempfile.TemporaryDirectory(prefix="spfde-startup-") as tmp:
        folder = Path(tmp)
        sweep = copy_sweep(train_tiny_sweep(folder), folder / "sweep", runs)
        rows = ["| command | wall-clock median (s) | import time, ms: biggest top-level packages (cumulative) "
                "| torch imported? |", "|---|---|---|---|"]
        for label, args, extra in commands(sweep, folder / "report"):
            wall, times, heavy = measure(args, {**python_env(), **extra}, folder, repeats)
            rows.append(f"| `{label}` | {wall:.2f} | {packages_text(times)} | "
                        f"{'yes: ' + ', '.join(sorted({m.split('.')[0] for m in heavy})) if heavy else 'no'} |")
    cores = os.cpu_count()
    return "\n".join([*rows, "", f"median of {repeats} runs each, {cores} CPU cores, Python {sys.version.split()[0]}"])


if __name__ == "__main__":
    print(startup())
