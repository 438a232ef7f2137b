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
runs' logger.project/entity, under <out>/wandb (offline unless WANDB_MODE says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

from spfde.errors import SpfdeError
from spfde.results.pareto import write_pareto
from spfde.rundir.checkpoint import not_regular, read_summary

# the columns of the grouped table; the grouping itself uses the whole resolved config (see config_key)
KEYS = ("model", "dataset", "method", "ratio", "freeze", "freeze_scheme", "sieve", "sieve_method", "epochs")
# keys that do not change a run's results besides those left out of run directory names (conf/config.yaml):
# the seed (what a group averages over), where the run lives, labels, and the LTH driver's bookkeeping
NOT_RESULT_KEYS = ("seed", "run_dir", "experiment_name", "search", "sparsity.lth.round", "sparsity.lth.workdir")


class ReportError(SpfdeError, ValueError):
    """Runs that cannot be reported as asked (one line, for the user)."""


def find_runs(paths: list[Path]) -> list[Path]:
    runs = set()
    for path in paths:
        for summary in Path(path).rglob("summary.json"):
            run = summary.parent
            if any(part.startswith(("round-", "previous-")) for part in run.relative_to(path).parts):
                continue  # LTH rounds and archived results belong to another run
            runs.add(run)
    return sorted(runs)


def not_result_keys() -> tuple[str, ...]:
    """Keys whose values do not change results: those Hydra leaves out of run directory names, plus
    NOT_RESULT_KEYS."""
    from omegaconf import OmegaConf

    from spfde.config import CONF_DIR

    hydra_cfg = OmegaConf.load(CONF_DIR / "config.yaml").hydra
    return (*hydra_cfg.job.config.override_dirname.exclude_keys, *NOT_RESULT_KEYS)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@functools.cache
def method_file_settings(method: str) -> dict:
    """The shared sparsity keys a method's own file sets (conf/sparsity/<method>.yaml: its masking rule, ITOP's
    ERK), flat: part of what the method's name means."""
    from omegaconf import OmegaConf

    from spfde.config import CONF_DIR

    path = CONF_DIR / "sparsity" / f"{method}.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    return {f"sparsity.{k}": v for k, v in data.items() if k != "name" and not isinstance(v, (dict, list))}


def printable(text: str) -> str:
    """A path as text files and pages can hold it: bytes of a file name that are not UTF-8 (kept by Python as
    surrogates, which no UTF-8 file takes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def result_config(cfg) -> dict:
    """The run's resolved config as flat `dotted.key: value` pairs, without the keys that cannot change
    its results: seed, non-result keys, other methods' options, and options of a dimension that is off."""
    from omegaconf import OmegaConf

    from spfde.sparse import METHODS

    flat = flatten(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False))
    skip = not_result_keys()
    method = flat.get("sparsity.name")
    off = [f"sparsity.{m}." for m in METHODS if m != method]
    if method in METHODS and not METHODS[method].uses_ratio:
        off.append("sparsity.ratio")  # e.g. dense ignores the ratio
    if not flat.get("freeze"):
        off += ["freeze_scheme.", "freeze_fraction"]
    if not flat.get("sieve"):
        off += ["sieve_update", "sieve_method", "sieve_oneshot_at"]
    return {k: v for k, v in flat.items()
            if not any(k == s or k.startswith(s + ".") for s in skip) and not k.startswith(tuple(off))}


def run_ratio(cfg) -> float | None:
    """The run's target sparsity (0 for a method that ignores sparsity.ratio, e.g. dense)."""
    from spfde.sparse import METHODS, target_sparsity

    if cfg is None:
        return None
    return target_sparsity(cfg.sparsity) if cfg.sparsity.name in METHODS else cfg.sparsity.ratio


def model_label(name, depth, width) -> str:
    """resnet32 and vgg19 are families with a depth and a width; say which member ran."""
    if name == "resnet32":
        return f"resnet{depth}-w{width}"
    if name == "vgg19":
        return f"vgg{depth}-w{width}"
    return str(name)


def find_unfinished(paths: list[Path], finished: list[Path]) -> list[Path]:
    """Run directories (a config.yaml or a checkpoint) without a finished summary: left out of the report."""
    seen = set(finished)
    out = set()
    for path in paths:
        for marker in [*Path(path).rglob("config.yaml"), *Path(path).rglob("last.pt")]:
            run = marker.parent
            parts = run.relative_to(path).parts
            if run in seen or any(part.startswith(("round-", "previous-", ".")) or part == "report" for part in parts):
                continue
            out.add(run)
    return sorted(out)


def read_metrics(run: Path) -> tuple[list[dict], int]:
    """metrics.jsonl's records and the number of lines that do not parse (a damaged file)."""
    records, bad = [], 0
    path = run / "metrics.jsonl"
    if not_regular(path):
        return [], 1  # a FIFO or device: reading would wait forever
    for line in (path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += bool(line.strip())
            continue
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad


def load_run(run: Path, summary: dict | None = None) -> dict:
    from omegaconf import OmegaConf

    summary = summary if summary is not None else json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else None

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default) if cfg is not None else default

    return {
        "run_dir": printable(str(run)),
        "model": model_label(get("model.name", summary.get("model")), get("model.depth"), get("model.width")),
        "dataset": get("dataset.name", summary.get("dataset")), "method": get("sparsity.name"),
        "ratio": run_ratio(cfg),
        "freeze": get("freeze", 0.0), "freeze_scheme": get("freeze_scheme.name"),
        "sieve": get("sieve", 0.0), "sieve_method": get("sieve_method"), "epochs": get("epochs"),
        "seed": get("seed", summary.get("seed")), "experiment": get("experiment_name"),
        "final_acc": summary["final_acc"], "best_acc": summary.get("best_acc"),
        "final_acc5": summary.get("final_acc5"), "final_sparsity": summary.get("final_sparsity"),
        "train_flops": summary.get("train_flops"), "dense_train_flops": summary.get("dense_train_flops"),
        "inference_flops": summary.get("inference_flops"), "memory_min_bytes": summary.get("memory_min_bytes"),
        "memory_avg_bytes": summary.get("memory_avg_bytes"),
        "memory_dst_min_bytes": summary.get("memory_dst_min_bytes"), "train_time_s": summary.get("train_time_s"),
        "sieve_seen_fraction": summary.get("sieve_seen_fraction"),
        "config": result_config(cfg) if cfg is not None else {"run_dir": str(run)},  # no config: its own group
    }


# keys the paper's table shows by itself (section heading, ratio column, label); others that vary join the label
SHOWN_KEYS = ("model.name", "model.depth", "model.width", "dataset.name", "sparsity.name", "sparsity.ratio",
              "freeze", "sieve", "sieve_method")


MEST_ONESHOT = 0.24  # the paper's MEST row: MEST's one-shot removal of 12,000 of 50,000 samples (sweeps/row/mest.yaml)


def label(row: dict, extra: dict | None = None) -> str:
    """How the paper names a configuration: "MEST" for MEST with its one-shot data removal, "MEST (EM&S)"
    without it, "SpFDE x%+y%" for MEST with freezing/sieving, "<method> + SpFDE x%+y%" on another method;
    followed by the other config keys that tell it apart from the other rows of the report."""
    if extra:
        return paper_name(row) + " (" + ", ".join(f"{k}={_value_text(v)}" for k, v in extra.items()) + ")"
    return paper_name(row)


def method_of(name):
    from spfde.sparse import METHODS

    return METHODS.get(name)


def is_spfde_base(name) -> bool:
    return bool(method_of(name) and method_of(name).spfde_base)


def method_name(row: dict) -> str:
    """The sparse-training method's own name (e.g. "MEST (EM&S)"), without freezing or sieving."""
    method = method_of(row["method"])
    return method.label if method else str(row["method"])


def paper_name(row: dict) -> str:
    method = method_of(row["method"])
    name = method.label if method else str(row["method"])
    if not (row["freeze"] or row["sieve"]):
        return name
    if is_spfde_base(row["method"]) and not row["freeze"] and row["sieve_method"] == "oneshot":
        return "MEST" if row["sieve"] == MEST_ONESHOT else f"MEST one-shot {100 * row['sieve']:g}%"
    spfde = f"SpFDE {100 * row['freeze']:g}%+{100 * row['sieve']:g}%"
    if row["sieve"] and row["sieve_method"] != "circular":
        spfde += f" ({row['sieve_method']} sieve)"
    return spfde if is_spfde_base(row["method"]) else f"{name} + {spfde}"


def _value_text(v) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, tuple) else str(v)


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def std(values):
    """Sample standard deviation; None (undefined, a blank cell) for fewer than two values, never 0.0."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def natural_key(text) -> list:
    """Sort key that orders the numbers inside a text by value: "x=0.1" < "x=0.15" < "x=0.2" < "x=10"."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(text))
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def varying_keys(rows: list[dict]) -> list[str]:
    """Result-changing config keys that take more than one value among the runs that have them (options of
    a dimension that is off are absent, not different)."""
    keys = sorted({k for r in rows for k in r["config"]})
    return [k for k in keys if len({repr(r["config"][k]) for r in rows if k in r["config"]}) > 1]


def group(rows: list[dict]) -> list[dict]:
    """One group per configuration: runs whose result-changing config is identical except for the seed.
    Two runs of one configuration with the same seed are an error (they would count as two seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted((k, repr(v)) for k, v in row["config"].items())), []).append(row)
    varying = varying_keys(rows)
    extra_keys = [k for k in varying if k not in SHOWN_KEYS]
    out = []
    for members in groups.values():
        seeds: dict = {}
        for m in members:
            if m["seed"] in seeds:
                raise ReportError(f"runs {seeds[m['seed']]} and {m['run_dir']} have the same configuration and the "
                                  f"same seed {m['seed']}: report one of them (or give them different seeds)")
            seeds[m["seed"]] = m["run_dir"]
        first = members[0]
        g = {k: first[k] for k in KEYS}
        config = {k: first["config"].get(k) for k in varying}
        accs = [m["final_acc"] for m in members]
        own = method_file_settings(first["method"]) if method_of(first["method"]) else {}
        # what tells it apart, but the settings its method's own file gives it (its name says them: a masking rule)
        extra = {k: config[k] for k in extra_keys if k in first["config"] and own.get(k, ()) != config[k]}
        g.update({"label": label(g, extra), **{k: _value_text(v) for k, v in config.items() if k not in KEYS},
                  "seeds": len(members), "acc_mean": mean(accs), "acc_std": std(accs),
                  "train_flops": mean([m["train_flops"] for m in members]),
                  "dense_train_flops": mean([m["dense_train_flops"] for m in members]),
                  "inference_flops": mean([m.get("inference_flops") for m in members]),
                  "memory_min_bytes": mean([m["memory_min_bytes"] for m in members]),
                  "memory_avg_bytes": mean([m["memory_avg_bytes"] for m in members]),
                  "memory_dst_min_bytes": mean([m["memory_dst_min_bytes"] for m in members]),
                  "train_time_s": mean([m["train_time_s"] for m in members])})
        out.append(g)
    return sorted(out, key=lambda g: (str(g["dataset"]), natural_key(g["model"]), natural_key(g["label"]),
                                      g["ratio"] or 0))


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def flops_scale(values) -> tuple[float, str]:
    top = max((v for v in values if v), default=1.0)
    exp = int(math.floor(math.log10(top))) if top > 0 else 0
    return 10.0 ** exp, f"×e{exp}"


def acc_text(g: dict) -> str:
    """Mean accuracy (%), ± std where there are several seeds, and n."""
    spread = f" ± {100 * g['acc_std']:.2f}" if g["acc_std"] is not None else ""
    return f"{100 * g['acc_mean']:.2f}{spread} (n={g['seeds']})"


def markdown(groups: list[dict]) -> str:
    parts = []
    for (dataset, model), members in _by(groups, ("dataset", "model")).items():
        ratios = sorted({g["ratio"] for g in members if g["ratio"] is not None})
        scale, unit = flops_scale([g["train_flops"] for g in members])
        head = "| Method | " + " | ".join(f"{100 * r:g}% FLOPs ({unit}) | {100 * r:g}% Acc. (%)" for r in ratios) + " |"
        lines = [f"### {model} on {dataset}", "", head, "|---|" + "---|---|" * len(ratios)]
        for name, rows in _by(members, ("label",)).items():
            cells = []
            for r in ratios:
                match = [g for g in rows if g["ratio"] == r]
                if match:
                    cells += [f"{match[0]['train_flops'] / scale:.3g}" if match[0]["train_flops"] else "n/a",
                              acc_text(match[0])]
                else:
                    cells += ["", ""]
            lines.append(f"| {name[0]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts += compat_markdown(groups)
    full = ["### All groups", "",
            "| label | model | dataset | ratio | freeze | scheme | sieve | sieve method | seeds | "
            "acc (%) | train FLOPs | memory min / avg (MiB) | time (s) |", "|" + "---|" * 13]
    for g in groups:
        mem = (f"{g['memory_min_bytes'] / 2**20:.1f} / {g['memory_avg_bytes'] / 2**20:.1f}"
               if g["memory_min_bytes"] else "")
        full.append(f"| {g['label']} | {g['model']} | {g['dataset']} | {g['ratio']} | {g['freeze']} | "
                    f"{g['freeze_scheme']} | {g['sieve']} | {g['sieve_method']} | {g['seeds']} | {acc_text(g)} | "
                    f"{g['train_flops']:.4g} | {mem} | {g['train_time_s']:.1f} |")
    return "\n\n".join(parts + ["\n".join(full)]) + "\n"


def compat_markdown(groups: list[dict]) -> list[str]:
    """SpFDE on top of other sparse methods (sweeps/dst_compat.yaml): each method alone next to the same
    method with layer freezing and circular sieving. Only when such pairs exist for a method besides MEST."""
    pairs = []
    for key, members in _by(groups, ("dataset", "model", "ratio", "method", "epochs")).items():
        alone = [g for g in members if not g["freeze"] and not g["sieve"]]
        for g in members:
            if alone and (g["freeze"] or g["sieve"]) and g["sieve_method"] == "circular":
                pairs.append((key, alone[0], g))
    if all(is_spfde_base(key[3]) for key, _, _ in pairs):
        return []
    lines = ["### SpFDE on other sparse-training methods", "",
             "| method | model | dataset | sparsity | alone: FLOPs | alone: acc (%) | with | FLOPs | acc (%) | "
             "FLOPs saved | Δ acc (points) |", "|" + "---|" * 11]
    for (dataset, model, ratio, _, _), alone, g in pairs:
        spfde = f"SpFDE {100 * g['freeze']:g}%+{100 * g['sieve']:g}%"
        lines.append(f"| {alone['label']} | {model} | {dataset} | {ratio} | {alone['train_flops']:.4g} | "
                     f"{acc_text(alone)} | {spfde} | {g['train_flops']:.4g} | {acc_text(g)} | "
                     f"{100 * (1 - g['train_flops'] / alone['train_flops']):.1f}% | "
                     f"{100 * (g['acc_mean'] - alone['acc_mean']):+.2f} |")
    return ["\n".join(lines)]


def _by(rows: list[dict], keys: tuple) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


# Okabe & Ito's colour-blind-safe qualitative palette (https://jfly.uni-koeln.de/color/), black first and yellow
# last (weak on white); series beyond eight change marker as well as colour. Ordered quantities use viridis.
PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
MARKERS = "osD^vP*Xh<>"


def save_figure(fig, path: Path, dpi: int = 150) -> None:
    """PNG for a quick look, PDF (vector) for a paper; the PDF without a creation date, so that the same
    figure writes the same file."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None})


def xy_grid(groups: list[dict]) -> list[dict] | None:
    """The groups when they are one full x (freeze) by y (sieve) grid of one model/dataset/method/ratio."""
    if len(_by(groups, ("model", "dataset", "method", "ratio", "epochs"))) != 1:
        return None
    cells = {(g["freeze"], g["sieve"]) for g in groups}
    xs, ys = {x for x, _ in cells}, {y for _, y in cells}
    full = len(xs) >= 2 and len(ys) >= 2 and len(cells) == len(groups) == len(xs) * len(ys)
    return groups if full else None


def describe(groups: list[dict]) -> str:
    """Model, dataset and ratio(s) of a set of groups, for figure titles."""
    parts = [" / ".join(sorted({f"{g['model']} on {g['dataset']}" for g in groups}, key=natural_key))]
    ratios = sorted({g["ratio"] for g in groups if g["ratio"]})
    if ratios:
        parts.append("sparsity " + ", ".join(f"{100 * r:g}%" for r in ratios))
    return ", ".join(parts)


def n_text(members: list[dict]) -> str:
    """The number of seeds behind a set of points: "n=3", or "n=1–3" when it differs."""
    ns = sorted({g["seeds"] for g in members})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def series_name(g: dict, groups: list[dict]) -> str:
    """A row's label in a figure: the paper's name with its distinguishing keys (label()), and the model and
    dataset when the figure holds more than one (table.md says them in its section headings)."""
    parts = [g[k] for k in ("model", "dataset") if len({h[k] for h in groups}) > 1]
    return ", ".join([g["label"], *map(str, parts)])


def yerr(rows: list[dict]) -> list[float] | None:
    """Error bars of std over seeds; none for a single seed (undefined, not zero)."""
    if all(g["acc_std"] is None for g in rows):
        return None
    return [100 * g["acc_std"] if g["acc_std"] is not None else 0.0 for g in rows]


def flops_axis(ax, values: list[float], label: str = "training FLOPs") -> None:
    """Training FLOPs on x: a log axis with labels at 1, 2 and 5 per decade (no minor labels, which overlap) when
    the values span a decade or more, otherwise a linear axis in units of the largest power of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    values = [v for v in values if v]
    lo, hi = (min(values), max(values)) if values else (1.0, 1.0)
    if hi / lo >= 10:
        ax.set_xscale("log")
        decades = math.log10(hi / lo)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 10 ** math.floor(math.log10(v)):g}e"
                                                               f"{math.floor(math.log10(v))}" if v > 0 else ""))
        ax.set_xlabel(f"{label} (log scale)")
    else:
        scale, unit = flops_scale(values)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / scale:g}"))
        ax.set_xlabel(f"{label} ({unit})")


def accuracy_label(groups: list[dict]) -> str:
    return "test accuracy (%, mean ± std over seeds)" if any(g["seeds"] > 1 for g in groups) \
        else "test accuracy (%, one seed per point)"


def plot_acc_vs_flops(groups: list[dict], path: Path, absolute: bool = False) -> tuple[str, list[str]]:
    """Accuracy (± std over seeds) against training cost. An x-by-y grid gets one line per freeze x across
    the sieve values y, against the FLOPs saved relative to x = y = 0 (or, `absolute`, against the training
    FLOPs themselves); anything else one series per row against the training FLOPs. Legend entries say n (seeds)
    and come in numeric order. Returns the title and the legend entries."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    drawn = []  # legend entries in the order drawn (numeric)
    grid = xy_grid(groups)
    if grid:
        base = [g for g in grid if g["freeze"] == 0 and g["sieve"] == 0]
        base_flops = base[0]["train_flops"] if base else max(g["train_flops"] for g in grid)
        ys = sorted({g["sieve"] for g in grid})
        for i, (x, rows) in enumerate(sorted(_by(grid, ("freeze",)).items())):
            rows = sorted(rows, key=lambda g: g["sieve"])
            at = [g["train_flops"] if absolute else 100 * (1 - g["train_flops"] / base_flops) for g in rows]
            color = PALETTE[i % len(PALETTE)]
            drawn.append(f"freeze x = {x[0]:g} ({n_text(rows)})")
            ax.errorbar(at, [100 * g["acc_mean"] for g in rows], yerr=yerr(rows), color=color, capsize=3,
                        label=drawn[-1])
            for g, s in zip(rows, at):
                ax.plot(s, 100 * g["acc_mean"], MARKERS[ys.index(g["sieve"]) % len(MARKERS)], color=color, ms=7)
        for j, y in enumerate(ys):  # marker legend entries for y
            drawn.append(f"sieve y = {y:g}")
            ax.plot([], [], MARKERS[j % len(MARKERS)], color="gray", label=drawn[-1])
        if absolute:
            flops_axis(ax, [g["train_flops"] for g in grid])
            ax.set_title(f"Accuracy vs training FLOPs — {describe(grid)}, {method_name(grid[0])}", fontsize=9)
        else:
            ax.set_xlabel("training FLOPs saved vs x = y = 0 (%)")
            ax.set_title(f"Accuracy vs FLOPs saved — {describe(grid)}, {method_name(grid[0])}", fontsize=9)
    else:
        series = sorted(_by(groups, ("label", "model", "dataset")).values(),
                        key=lambda rows: natural_key(series_name(rows[0], groups)))
        for i, rows in enumerate(series):
            rows = sorted(rows, key=lambda g: g["train_flops"] or 0)
            drawn.append(f"{series_name(rows[0], groups)} ({n_text(rows)})")
            ax.errorbar([g["train_flops"] for g in rows], [100 * g["acc_mean"] for g in rows], yerr=yerr(rows),
                        marker=MARKERS[i // len(PALETTE) % len(MARKERS)], color=PALETTE[i % len(PALETTE)],
                        capsize=3, label=drawn[-1])
        flops_axis(ax, [g["train_flops"] for g in groups])
        ax.set_title(f"Accuracy vs training FLOPs — {describe(groups)}", fontsize=9)
    ax.set_ylabel(accuracy_label(groups))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # lines before error bars: put back in the order drawn
    order = sorted(range(len(labels)), key=lambda i: drawn.index(labels[i]))
    legend = ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside the data
    save_figure(fig, path)
    plt.close(fig)
    return ax.get_title(), [t.get_text() for t in legend.get_texts()]


def text_color(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def plot_heatmaps(groups: list[dict], out: Path) -> list[Path]:
    """x (freeze) by y (sieve) grids of accuracy (± std where n > 1) and FLOPs saving, for the first set of runs
    that has one; a labelled colour bar, n in the title (or in each cell when it differs)."""
    import matplotlib.pyplot as plt

    written = []
    for _key, members in _by(groups, ("model", "dataset", "method", "ratio")).items():
        xs = sorted({g["freeze"] for g in members})
        ys = sorted({g["sieve"] for g in members})
        if len(xs) < 2 or len(ys) < 2:
            continue
        base = [g for g in members if g["freeze"] == 0 and g["sieve"] == 0]
        base_flops = base[0]["train_flops"] if base else max(g["train_flops"] for g in members)
        same_n = len({g["seeds"] for g in members}) == 1

        def acc_cell(g, same_n=same_n):
            spread = f"\n± {100 * g['acc_std']:.2f}" if g["acc_std"] is not None else ""
            return f"{100 * g['acc_mean']:.2f}{spread}" + ("" if same_n else f"\nn={g['seeds']}")

        for name, value, text, what in (
                ("acc", lambda g: 100 * g["acc_mean"], acc_cell,
                 "test accuracy (%" + (", mean ± std" if any(g["seeds"] > 1 for g in members) else "") + ")"),
                ("saving", lambda g, b=base_flops: 100 * (1 - g["train_flops"] / b),
                 lambda g, b=base_flops: f"{100 * (1 - g['train_flops'] / b):.1f}",
                 "training FLOPs saved vs x = y = 0 (%)")):
            grid = [[math.nan] * len(xs) for _ in ys]
            cells = {}
            for g in members:
                grid[ys.index(g["sieve"])][xs.index(g["freeze"])] = value(g)
                cells[ys.index(g["sieve"]), xs.index(g["freeze"])] = text(g)
            fig, ax = plt.subplots(figsize=(1.5 * len(xs) + 3, 1.1 * len(ys) + 2))
            im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
            ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
            ax.set_xlabel("freeze x (target FLOPs reduction by layer freezing)")
            ax.set_ylabel("sieve y (share of data removed)")
            for (i, j), label_text in cells.items():
                ax.text(j, i, label_text, ha="center", va="center", fontsize=10,
                        color=text_color(im.cmap(im.norm(grid[i][j]))))
            n = members[0]["seeds"]
            seeds = ("" if not same_n else ", one seed per cell" if n == 1 else f", n={n} seeds per cell")
            ax.set_title(f"{what}\n{describe(members)}, {method_name(members[0])}{seeds}", fontsize=9)
            fig.colorbar(im, ax=ax).set_label("mean test accuracy (%)" if name == "acc" else what)  # colour: the mean
            path = out / f"heatmap_{name}.png"
            save_figure(fig, path)
            plt.close(fig)
            written.append(path)
        break
    return written


def epoch_axis(ax, epochs: list) -> None:
    """Whole epochs on x; a single epoch gets its one tick (not 2.84 ... 3.16 around it)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    if len(set(epochs)) == 1:
        ax.set_xticks(list(set(epochs)))
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# the timeline's panels: (y label, what it shows, metrics key, default when a record lacks it, scale, step plot)
TIMELINE = (("test acc. (%)", "test accuracy after each epoch", "test/acc", math.nan, 100, False),
            ("frozen blocks", "blocks frozen by progressive layer freezing", "freeze/frozen_blocks", 0, 1, True),
            ("data seen", "share of the training set seen so far (circular data sieving)", "sieve/seen_fraction",
             1.0, 1, False),
            ("sparsity", "share of the masked weights that are zero", "sparsity/overall", 0.0, 1, False))


def plot_timeline(run: Path, path: Path) -> list[str]:
    """Per run and epoch: accuracy, frozen blocks, share of the data seen and sparsity, one axis each (PNG and
    PDF). Returns the panels' y labels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records, _ = read_metrics(run)
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(len(TIMELINE), 1, figsize=(8, 9), sharex=True)
    colors = (PALETTE[4], PALETTE[5], PALETTE[3], PALETTE[6])
    for ax, (ylabel, what, key, default, scale, step), color in zip(axes, TIMELINE, colors):
        values = [scale * r.get(key, default) for r in records]
        if step:
            ax.step(epochs, values, where="post", color=color, lw=2)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.plot(epochs, values, marker="o", ms=4, color=color, lw=2)
        if scale == 1 and not step:
            ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(ylabel)
        ax.set_title(what, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    epoch_axis(axes[-1], epochs)
    fig.suptitle(f"Timeline of {printable(run.name[:100])}", fontsize=10)
    fig.align_ylabels(axes)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return [ax.get_ylabel() for ax in axes]


def write_figures(groups: list[dict], runs: list[Path], out: Path, timelines: bool = True) -> list[Path]:
    """Every figure of the report (PNG and PDF); returns the PNGs."""
    images = [out / "acc_vs_flops.png"]
    plot_acc_vs_flops(groups, images[0])
    if xy_grid(groups):  # the grid's figure is against FLOPs saved: the same against the training FLOPs themselves
        images.append(out / "acc_vs_train_flops.png")
        plot_acc_vs_flops(groups, images[-1], absolute=True)
    images += plot_heatmaps(groups, out)
    if timelines:
        (out / "timelines").mkdir(exist_ok=True)
        for run, name in timeline_names(runs).items():
            images.append(out / "timelines" / f"{name}.png")
            plot_timeline(run, images[-1])
    return images


def timeline_names(runs: list[Path]) -> dict[Path, str]:
    """A file name for each run's timeline: its directory's name, with as many parent folders ('sweep__run') as
    tell runs of the same name apart; characters a file name or a link cannot hold replaced by _; a name that is
    long, or that the replacing made the same as another's, ends in a hash of its run's path."""
    import hashlib

    for depth in range(1, max((len(r.parts) for r in runs), default=1) + 1):
        names = {r: re.sub(r"[^\w.,=+-]", "_", "__".join(r.parts[-depth:]), flags=re.ASCII) for r in runs}
        if len(set(names.values())) == len(runs):
            break
    taken = list(names.values())
    return {run: name if len(name) <= 100 and taken.count(name) == 1 else
            f"{name[:90]}-{hashlib.sha1(os.fsencode(str(run))).hexdigest()[:8]}" for run, name in names.items()}


def log_to_wandb(groups: list[dict], images: list[Path], name: str, out: Path, run: Path) -> str:
    """One wandb run (job type `report`) in the runs' project and entity (their logger config), written
    under the report folder."""
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
    run_dir = run.dir
    run.finish()
    return run_dir


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
    from spfde.results.html import write_index
    from spfde.results.tex import latex_tables

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
        where = log_to_wandb(groups, summary_figures, args.paths[0].name, out, runs[0])
        print(f"wandb (offline unless WANDB_MODE=online): {where}")

