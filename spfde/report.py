"""`python -m spfde.report <sweep dir or run dirs> [--out DIR] [--wandb]`: tables and figures from
finished runs.

Finds every run directory (one holding `summary.json`) under the given paths, groups runs that differ
only in their seed, and writes into --out (default: the first path's `report/`):
  runs.csv       one row per run
  summary.csv    one row per group: mean ± std of accuracy over seeds, training FLOPs, memory, time
  table.md       the paper's layout (method rows; per sparsity: training FLOPs and accuracy), and the
                 full grouped table
  acc_vs_flops.png      accuracy against training FLOPs, one series per method
  heatmap_acc.png, heatmap_saving.png   x (freeze) by y (sieve) grids, when the runs span one
  timelines/<run>.png   per run: frozen blocks, share of the data seen, sparsity per epoch
With --wandb the grouped table (and the figures) are logged as one wandb run (offline unless
WANDB_MODE says otherwise; sync later with `wandb sync`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

KEYS = ("model", "dataset", "method", "ratio", "freeze", "freeze_scheme", "sieve", "sieve_method", "epochs")


def find_runs(paths: list[Path]) -> list[Path]:
    runs = set()
    for path in paths:
        for summary in Path(path).rglob("summary.json"):
            run = summary.parent
            if any(part.startswith(("round-", "previous-")) for part in run.relative_to(path).parts):
                continue  # LTH rounds and archived results belong to another run
            runs.add(run)
    return sorted(runs)


def load_run(run: Path) -> dict:
    from omegaconf import OmegaConf

    summary = json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else None

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default) if cfg is not None else default

    return {
        "run_dir": str(run), "model": get("model.name", summary.get("model")),
        "dataset": get("dataset.name", summary.get("dataset")), "method": get("sparsity.name"),
        "ratio": 0.0 if get("sparsity.name") == "dense" else get("sparsity.ratio"),  # dense ignores the ratio
        "freeze": get("freeze", 0.0), "freeze_scheme": get("freeze_scheme.name"),
        "sieve": get("sieve", 0.0), "sieve_method": get("sieve_method"), "epochs": get("epochs"),
        "seed": get("seed", summary.get("seed")),
        "final_acc": summary["final_acc"], "best_acc": summary.get("best_acc"),
        "final_acc5": summary.get("final_acc5"), "final_sparsity": summary.get("final_sparsity"),
        "train_flops": summary.get("train_flops"), "dense_train_flops": summary.get("dense_train_flops"),
        "memory_min_bytes": summary.get("memory_min_bytes"), "memory_avg_bytes": summary.get("memory_avg_bytes"),
        "memory_dst_min_bytes": summary.get("memory_dst_min_bytes"), "train_time_s": summary.get("train_time_s"),
        "sieve_seen_fraction": summary.get("sieve_seen_fraction"),
    }


NAMES = {"mest": "MEST (EM&S)", "itop": "RigL-ITOP", "lth": "LTH", "snip": "SNIP", "grasp": "GraSP", "deepr": "DeepR",
         "set": "SET", "dsr": "DSR", "snfs": "SNFS", "rigl": "RigL", "dense": "Dense", "static": "Static"}
MEST_ONESHOT = 0.24  # the paper's MEST row: MEST's one-shot removal of 12,000 of 50,000 samples (sweeps/row/mest.yaml)


def label(row: dict) -> str:
    """How the paper names a configuration: "MEST" for MEST with its one-shot data removal, "MEST (EM&S)"
    without it, "SpFDE x%+y%" for MEST with freezing/sieving, "<method> + SpFDE x%+y%" on another method."""
    name = NAMES.get(row["method"], str(row["method"]))
    if not (row["freeze"] or row["sieve"]):
        return name
    if row["method"] == "mest" and not row["freeze"] and row["sieve_method"] == "oneshot":
        return "MEST" if row["sieve"] == MEST_ONESHOT else f"MEST one-shot {100 * row['sieve']:g}%"
    spfde = f"SpFDE {100 * row['freeze']:g}%+{100 * row['sieve']:g}%"
    if row["sieve"] and row["sieve_method"] != "circular":
        spfde += f" ({row['sieve_method']} sieve)"
    return spfde if row["method"] == "mest" else f"{name} + {spfde}"


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def std(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in KEYS), []).append(row)
    out = []
    for key, members in groups.items():
        g = dict(zip(KEYS, key))
        accs = [m["final_acc"] for m in members]
        g.update({"label": label(g), "seeds": len(members), "acc_mean": mean(accs), "acc_std": std(accs),
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
    return f"{100 * g['acc_mean']:.2f} ± {100 * g['acc_std']:.2f}" if g["seeds"] > 1 else f"{100 * g['acc_mean']:.2f}"


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
    if not any(key[3] != "mest" for key, _, _ in pairs):
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


def plot_acc_vs_flops(groups: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in _by(groups, ("label",)).items():
        rows = sorted(rows, key=lambda g: g["train_flops"] or 0)
        ax.errorbar([g["train_flops"] for g in rows], [100 * g["acc_mean"] for g in rows],
                    yerr=[100 * g["acc_std"] for g in rows], marker="o", capsize=3, label=name[0])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs training cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmaps(groups: list[dict], out: Path) -> list[Path]:
    """x (freeze) by y (sieve) grids of accuracy and FLOPs saving, for the first set of runs that has one."""
    import matplotlib.pyplot as plt

    written = []
    for _key, members in _by(groups, ("model", "dataset", "method", "ratio")).items():
        xs = sorted({g["freeze"] for g in members})
        ys = sorted({g["sieve"] for g in members})
        if len(xs) < 2 or len(ys) < 2:
            continue
        base = [g for g in members if g["freeze"] == 0 and g["sieve"] == 0]
        base_flops = base[0]["train_flops"] if base else max(g["train_flops"] for g in members)
        for name, value, fmt in (("acc", lambda g: 100 * g["acc_mean"], "{:.2f}"),
                                 ("saving", lambda g, b=base_flops: 100 * (1 - g["train_flops"] / b), "{:.1f}")):
            grid = [[math.nan] * len(xs) for _ in ys]
            for g in members:
                grid[ys.index(g["sieve"])][xs.index(g["freeze"])] = value(g)
            fig, ax = plt.subplots(figsize=(5, 4))
            im = ax.imshow(grid, origin="lower", cmap="viridis")
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
            ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
            ax.set_xlabel("freeze x")
            ax.set_ylabel("sieve y")
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if not math.isnan(grid[i][j]):
                        ax.text(j, i, fmt.format(grid[i][j]), ha="center", va="center", color="w", fontsize=8)
            ax.set_title("test accuracy (%)" if name == "acc" else "training FLOPs saved (%)")
            fig.colorbar(im, ax=ax)
            fig.tight_layout()
            path = out / f"heatmap_{name}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        break
    return written


def plot_timeline(run: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step(epochs, [r.get("freeze/frozen_blocks", 0) for r in records], where="post", label="frozen blocks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("frozen blocks")
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


def log_to_wandb(groups: list[dict], images: list[Path], name: str) -> str:
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project="spfde", job_type="report", name=f"report-{name}", group=name)
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
    runs = find_runs(args.paths)
    if not runs:
        print(f"spfde: error: no finished runs (summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        sys.exit(2)
    out = args.out or args.paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [load_run(r) for r in runs]
    groups = group(rows)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "summary.csv", groups)
    (out / "table.md").write_text(markdown(groups))
    images = [out / "acc_vs_flops.png"]
    plot_acc_vs_flops(groups, images[0])
    images += plot_heatmaps(groups, out)
    if not args.no_timelines:
        (out / "timelines").mkdir(exist_ok=True)
        for run in runs:
            plot_timeline(run, out / "timelines" / f"{run.name[:100]}.png")
    print(markdown(groups))
    print(f"{len(runs)} runs in {len(groups)} groups -> {out}")
    if args.wandb:
        print(f"wandb (offline unless WANDB_MODE=online): {log_to_wandb(groups, images, args.paths[0].name)}")


if __name__ == "__main__":
    main()
