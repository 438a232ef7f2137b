"""`python -m spfde.report <sweep dir or run dirs> [--out DIR] [--wandb]`: tables and figures from
finished runs.

Finds every run directory (one holding `summary.json`) under the given paths, groups runs whose resolved
config is the same except for the seed (keys that cannot change results aside; a repeated seed in a group is
an error), and writes into --out (default: the first path's `report/`):
  runs.csv       one row per run
  summary.csv    one row per group: mean ± std of accuracy over seeds, training FLOPs, memory, time, the
                 config keys that vary between groups
  table.md       the paper's layout (method rows; per sparsity: training FLOPs and accuracy), and the
                 full grouped table
  acc_vs_flops.png/.pdf     accuracy ± std against training cost: for an x-by-y grid one line per x
                            against the FLOPs saved, otherwise one series per row
  heatmap_acc.png/.pdf, heatmap_saving.png/.pdf   x (freeze) by y (sieve) grids, when the runs span one
  pareto.csv, pareto.png/.pdf   the configurations not dominated in mean accuracy vs mean training FLOPs
                                (spfde.pareto), and every configuration against absolute FLOPs with the front
  timelines/<run>.png   per run: frozen blocks, share of the data seen, sparsity per epoch
With --wandb the grouped table (and the figures) are logged as one wandb run of job type `report` in the
runs' logger.project/entity, under <out>/wandb (offline unless WANDB_MODE says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from spfde.checkpoint import read_summary
from spfde.pareto import write_pareto

# the columns of the grouped table; the grouping itself uses the whole resolved config (see config_key)
KEYS = ("model", "dataset", "method", "ratio", "freeze", "freeze_scheme", "sieve", "sieve_method", "epochs")
# keys that do not change a run's results besides those left out of run directory names (conf/config.yaml):
# the seed (what a group averages over), where the run lives, labels, and the LTH driver's bookkeeping
NOT_RESULT_KEYS = ("seed", "run_dir", "experiment_name", "sparsity.lth.round", "sparsity.lth.workdir")


class ReportError(ValueError):
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
        "run_dir": str(run), "model": model_label(get("model.name", summary.get("model")), get("model.depth"),
                                                  get("model.width")),
        "dataset": get("dataset.name", summary.get("dataset")), "method": get("sparsity.name"),
        "ratio": run_ratio(cfg),
        "freeze": get("freeze", 0.0), "freeze_scheme": get("freeze_scheme.name"),
        "sieve": get("sieve", 0.0), "sieve_method": get("sieve_method"), "epochs": get("epochs"),
        "seed": get("seed", summary.get("seed")),
        "final_acc": summary["final_acc"], "best_acc": summary.get("best_acc"),
        "final_acc5": summary.get("final_acc5"), "final_sparsity": summary.get("final_sparsity"),
        "train_flops": summary.get("train_flops"), "dense_train_flops": summary.get("dense_train_flops"),
        "memory_min_bytes": summary.get("memory_min_bytes"), "memory_avg_bytes": summary.get("memory_avg_bytes"),
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
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else 0.0


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
        extra = {k: config[k] for k in extra_keys if k in first["config"]}
        g.update({"label": label(g, extra), **{k: _value_text(v) for k, v in config.items() if k not in KEYS},
                  "seeds": len(members), "acc_mean": mean(accs), "acc_std": std(accs),
                  "train_flops": mean([m["train_flops"] for m in members]),
                  "dense_train_flops": mean([m["dense_train_flops"] for m in members]),
                  "memory_min_bytes": mean([m["memory_min_bytes"] for m in members]),
                  "memory_avg_bytes": mean([m["memory_avg_bytes"] for m in members]),
                  "memory_dst_min_bytes": mean([m["memory_dst_min_bytes"] for m in members]),
                  "train_time_s": mean([m["train_time_s"] for m in members])})
        out.append(g)
    return sorted(out, key=lambda g: (str(g["dataset"]), str(g["model"]), g["label"], g["ratio"] or 0))


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
    spread = f" ± {100 * g['acc_std']:.2f}" if g["seeds"] > 1 else ""
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


def save_figure(fig, path: Path, dpi: int = 150) -> None:
    """PNG for a quick look, PDF (vector) for a paper."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")


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
    parts = [" / ".join(sorted({f"{g['model']} on {g['dataset']}" for g in groups}))]
    ratios = sorted({g["ratio"] for g in groups if g["ratio"]})
    if ratios:
        parts.append("sparsity " + ", ".join(f"{100 * r:g}%" for r in ratios))
    return ", ".join(parts)


def plot_acc_vs_flops(groups: list[dict], path: Path) -> tuple[str, list[str]]:
    """Accuracy (± std over seeds) against training cost. An x-by-y grid gets one line per freeze x across
    the sieve values y, against the FLOPs saved relative to x = y = 0; anything else one series per row.
    Returns the title and the legend entries."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    grid = xy_grid(groups)
    if grid:
        base = [g for g in grid if g["freeze"] == 0 and g["sieve"] == 0]
        base_flops = base[0]["train_flops"] if base else max(g["train_flops"] for g in grid)
        ys = sorted({g["sieve"] for g in grid})
        by_x = sorted(_by(grid, ("freeze",)).items())
        markers = "osD^vP*Xh<>"
        for i, (x, rows) in enumerate(by_x):
            rows = sorted(rows, key=lambda g: g["sieve"])
            saved = [100 * (1 - g["train_flops"] / base_flops) for g in rows]
            color = plt.get_cmap("viridis")(0.85 * i / max(1, len(by_x) - 1))  # 0.85: no pale yellow line
            ax.errorbar(saved, [100 * g["acc_mean"] for g in rows], yerr=[100 * g["acc_std"] for g in rows],
                        color=color, capsize=3, label=f"freeze x = {x[0]:g}")
            for g, s in zip(rows, saved):
                ax.plot(s, 100 * g["acc_mean"], markers[ys.index(g["sieve"]) % len(markers)], color=color)
        for j, y in enumerate(ys):  # marker legend entries for y
            ax.plot([], [], markers[j % len(markers)], color="gray", label=f"sieve y = {y:g}")
        ax.set_xlabel("training FLOPs saved vs x = y = 0 (%)")
        ax.set_title(f"Accuracy vs FLOPs saved — {describe(grid)}, {grid[0]['method']}", fontsize=9)
    else:
        colors, markers = plt.get_cmap("tab20").colors, "osD^vP*Xh<>"
        for i, (name, rows) in enumerate(_by(groups, ("label",)).items()):
            rows = sorted(rows, key=lambda g: g["train_flops"] or 0)
            ax.errorbar([g["train_flops"] for g in rows], [100 * g["acc_mean"] for g in rows],
                        yerr=[100 * g["acc_std"] for g in rows], marker=markers[i // len(colors) % len(markers)],
                        color=colors[i % len(colors)], capsize=3, label=name[0])
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(f"Accuracy vs training FLOPs — {describe(groups)}", fontsize=9)
    ax.set_ylabel("test accuracy (%, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside the data
    save_figure(fig, path)
    plt.close(fig)
    return ax.get_title(), [t.get_text() for t in legend.get_texts()]


def text_color(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def plot_heatmaps(groups: list[dict], out: Path) -> list[Path]:
    """x (freeze) by y (sieve) grids of accuracy (± std) and FLOPs saving, for the first set of runs that has one."""
    import matplotlib.pyplot as plt

    written = []
    for _key, members in _by(groups, ("model", "dataset", "method", "ratio")).items():
        xs = sorted({g["freeze"] for g in members})
        ys = sorted({g["sieve"] for g in members})
        if len(xs) < 2 or len(ys) < 2:
            continue
        base = [g for g in members if g["freeze"] == 0 and g["sieve"] == 0]
        base_flops = base[0]["train_flops"] if base else max(g["train_flops"] for g in members)
        for name, value, text in (
                ("acc", lambda g: 100 * g["acc_mean"],
                 lambda g: f"{100 * g['acc_mean']:.2f}\n±{100 * g['acc_std']:.2f}"),
                ("saving", lambda g, b=base_flops: 100 * (1 - g["train_flops"] / b),
                 lambda g, b=base_flops: f"{100 * (1 - g['train_flops'] / b):.1f}")):
            grid = [[math.nan] * len(xs) for _ in ys]
            cells = {}
            for g in members:
                grid[ys.index(g["sieve"])][xs.index(g["freeze"])] = value(g)
                cells[ys.index(g["sieve"]), xs.index(g["freeze"])] = text(g)
            fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
            im = ax.imshow(grid, origin="lower", cmap="viridis")
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
            ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
            ax.set_xlabel("freeze x")
            ax.set_ylabel("sieve y")
            for (i, j), label_text in cells.items():
                ax.text(j, i, label_text, ha="center", va="center", fontsize=7,
                        color=text_color(im.cmap(im.norm(grid[i][j]))))
            what = "test accuracy (%, mean ± std)" if name == "acc" else "training FLOPs saved (%)"
            ax.set_title(f"{what}\n{describe(members)}", fontsize=9)
            fig.colorbar(im, ax=ax)
            path = out / f"heatmap_{name}.png"
            save_figure(fig, path)
            plt.close(fig)
            written.append(path)
        break
    return written


def plot_timeline(run: Path, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records, _ = read_metrics(run)
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step(epochs, [r.get("freeze/frozen_blocks", 0) for r in records], where="post", label="frozen blocks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("frozen blocks")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.get("sieve/seen_fraction", 1.0) for r in records], color="tab:orange",
             label="data seen (share)")
    ax2.plot(epochs, [r.get("sparsity/overall", 0.0) for r in records], color="tab:green", label="sparsity")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("share")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="lower right")
    ax.set_title(run.name[:80], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        print(f"spfde: error: no such directory: {missing[0]}", file=sys.stderr)
        sys.exit(2)
    found = find_runs(args.paths)
    runs, rows, left_out = [], [], []
    for run in found:  # a damaged summary leaves its run out, named, and the report goes on
        summary, problem = read_summary(run / "summary.json")
        if problem:
            left_out.append(f"damaged: {run / 'summary.json'} ({problem}); relaunch the run to rewrite it")
            continue
        runs.append(run)
        rows.append(load_run(run, summary))
        if bad := read_metrics(run)[1]:
            left_out.append(f"damaged: {run / 'metrics.jsonl'} ({bad} lines unreadable; its timeline shows the rest); "
                            "relaunch the run to rebuild it")
    left_out += [f"unfinished: {run} (no summary.json yet)" for run in find_unfinished(args.paths, found)]
    for line in left_out:
        print(line)
    if not runs:
        print(f"spfde: error: no finished runs (summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        sys.exit(2)
    out = args.out or args.paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "left_out.txt").write_text("".join(line + "\n" for line in left_out))
    try:
        groups = group(rows)
    except ReportError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if k != "config"} for r in rows])
    write_csv(out / "summary.csv", groups)
    (out / "table.md").write_text(markdown(groups))
    images = [out / "acc_vs_flops.png"]
    plot_acc_vs_flops(groups, images[0])
    images += plot_heatmaps(groups, out)
    images += write_pareto(groups, out, describe(groups))
    if not args.no_timelines:
        (out / "timelines").mkdir(exist_ok=True)
        for run in runs:
            plot_timeline(run, out / "timelines" / f"{run.name[:100]}.png")
    print(markdown(groups))
    print(f"{len(runs)} runs in {len(groups)} groups -> {out}" + (f" ({len(left_out)} left out or damaged, listed in "
                                                               f"left_out.txt)" if left_out else ""))
    if args.wandb:
        where = log_to_wandb(groups, images, args.paths[0].name, out, runs[0])
        print(f"wandb (offline unless WANDB_MODE=online): {where}")


if __name__ == "__main__":
    main()
