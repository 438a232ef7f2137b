"""`python -m spfde.analyze <run_dir> [more run dirs] [--out DIR] [--block N] [--debiased]`: the paper's
Sec. 3 figures from runs trained with `analysis.every=N`.

Writes into --out (default: <first run>/analysis/figures), each figure as PNG and PDF:
  fig1a_structural_similarity.png  share of each layer's top-50% non-zero positions still present in
                                   the final model, per epoch (first run; up to 10 layers evenly spread
                                   from first to last, each named in the legend)
  fig1b_cka.png                    linear CKA of one block's representation with the final model's, per
                                   epoch, one line per run (e.g. dense and several sparsity ratios)
  fig3b_grad_norm.png              each layer's gradient norm per epoch and its change between epochs
                                   (the same layers; a panel without data says why)
  analysis.csv                     every number behind the figures
"""

from __future__ import annotations

# omegaconf, matplotlib and the snapshot reader (torch) load inside the functions that need them: keeps
# start-up fast for --help
import argparse
import csv
import json
from pathlib import Path

from spfde.errors import SpfdeError
from spfde.results.figures import PALETTE, epoch_axis, save_figure


class AnalysisError(SpfdeError, ValueError):
    pass


def run_label(run: Path) -> str:
    from omegaconf import OmegaConf

    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        return run.name
    cfg = OmegaConf.load(cfg_path)
    from spfde.sparse import target_sparsity

    if target_sparsity(cfg.sparsity) == 0:
        return "dense"
    return f"{cfg.sparsity.name} {100 * cfg.sparsity.ratio:g}%"


def grad_norms(run: Path) -> tuple[list[int], dict[str, list[float]]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    names = sorted({k[len("grad_norm/"):] for r in records for k in r if k.startswith("grad_norm/")},
                   key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")])
    return [r["epoch"] for r in records], {n: [r.get(f"grad_norm/{n}", float("nan")) for r in records] for n in names}


MAX_LAYERS = 10  # lines per layer figure: more are not told apart by colour or legend


def shown_layers(names: list[str]) -> list[str]:
    """At most MAX_LAYERS layers, evenly spread from the first to the last (all of them when few enough)."""
    if len(names) <= MAX_LAYERS:
        return list(names)
    picks = sorted({round(i * (len(names) - 1) / (MAX_LAYERS - 1)) for i in range(MAX_LAYERS)})
    return [names[i] for i in picks]


def layer_legend_title(shown: list[str], names: list[str]) -> str:
    spread = "all" if len(shown) == len(names) else f"{len(shown)} of {len(names)}, evenly spread"
    return f"layer ({spread}; early → late)"


def empty_panel(ax, why: str) -> None:
    """Say in the panel why it has nothing to draw, instead of axes around no data."""
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", wrap=True, fontsize=9, color="#444")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_structural_similarity(d: dict, label: str, path: Path):
    """Fig. 1a: structural similarity of each layer (all layers, or MAX_LAYERS evenly spread, each named in the
    legend) per epoch. Returns the figure's axes (closed)."""
    import matplotlib.pyplot as plt

    names = list(d["structural_similarity"])
    shown = shown_layers(names)
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(shown):
        ax.plot(d["epochs"], d["structural_similarity"][name], marker=".", color=cmap(0.9 * i / max(1, len(shown) - 1)),
                label=name)
    epoch_axis(ax, d["epochs"])
    ax.set_ylabel("structural similarity with the final model")
    ax.set_title(f"Fig. 1a — top-50% non-zero positions kept ({label})", fontsize=10)
    ax.legend(fontsize=7, title=layer_legend_title(shown, names), title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return ax


def plot_cka(data: list[tuple[str, dict]], block_index: int, path: Path):
    """Fig. 1b: CKA of one block with the final model per epoch, one line per run ((label, series) pairs)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, d) in enumerate(data):
        block = list(d["cka"])[block_index]
        ax.plot(d["epochs"], d["cka"][block], marker=".", color=PALETTE[i % len(PALETTE)], label=f"{label} ({block})")
    epoch_axis(ax, [e for _, d in data for e in d["epochs"]])
    ax.set_ylabel("linear CKA with the final model")
    ax.set_title("Fig. 1b — representation similarity of one block", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return ax


def plot_grad_norms(epochs: list[int], norms: dict[str, list[float]], label: str, path: Path):
    """Fig. 3b: each layer's gradient norm per epoch and its change between epochs (all layers, or MAX_LAYERS
    evenly spread); a panel with nothing to draw says why. Returns the two axes (closed)."""
    import matplotlib.pyplot as plt

    names = list(norms)
    shown = shown_layers(names)
    cmap = plt.get_cmap("viridis")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, name in enumerate(shown):
        color = cmap(0.9 * i / max(1, len(shown) - 1))
        values = norms[name]
        a1.plot(epochs, values, marker=".", color=color, label=name)
        a2.plot(epochs[1:], [abs(b - a) for a, b in zip(values, values[1:])], marker=".", color=color)
    a1.set_title(f"Fig. 3b — gradient norm per layer ({label})", fontsize=10)
    a1.set_ylabel("mean gradient norm over the epoch's steps")
    a2.set_title("change of the gradient norm between epochs", fontsize=10)
    a2.set_ylabel("|norm(epoch) − norm(epoch − 1)|")
    for ax in (a1, a2):
        epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
    if not names:
        for ax in (a1, a2):
            empty_panel(ax, "no gradient norms in metrics.jsonl:\ntrain with analysis.every=N to log them")
    elif len(epochs) < 2:
        empty_panel(a2, f"a change needs two epochs;\nthis run logged {len(epochs)}")
    if names:
        a2.legend(*a1.get_legend_handles_labels(), fontsize=7, title=layer_legend_title(shown, names),
                  title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return a1, a2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spfde.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--block", type=int, default=10,
                        help="block of the CKA figure (paper: the 10th layer); must be one of the model's blocks")
    parser.add_argument("--debiased", action="store_true", help="debiased HSIC estimator for CKA")
    args = parser.parse_args(argv)
    import matplotlib

    from spfde.analysis import series  # reads the snapshots (torch): after --help, which needs none of it

    matplotlib.use("Agg")
    missing = [run for run in args.runs if not run.is_dir()]
    if missing:
        raise AnalysisError(f"no such run directory: {missing[0]}")
    try:
        data = {run: series(run, args.debiased) for run in args.runs}
    except FileNotFoundError as e:  # a run trained without analysis=true: its snapshots are missing
        raise AnalysisError(str(e)) from e
    for run, d in data.items():
        if not 0 <= args.block < len(d["cka"]):
            raise AnalysisError(f"--block {args.block} is not a block of {run} (it has blocks 0..{len(d['cka']) - 1})")
    out = args.out or args.runs[0] / "analysis" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    first = args.runs[0]

    plot_structural_similarity(data[first], run_label(first), out / "fig1a_structural_similarity.png")
    plot_cka([(run_label(run), d) for run, d in data.items()], args.block, out / "fig1b_cka.png")
    plot_grad_norms(*grad_norms(first), run_label(first), out / "fig3b_grad_norm.png")

    for run, d in data.items():
        for kind in ("structural_similarity", "cka"):
            for name, values in d[kind].items():
                rows += [(str(run), e, kind, name, v) for e, v in zip(d["epochs"], values)]
        epochs, norms = grad_norms(run)
        for name, values in norms.items():
            rows += [(str(run), e, "grad_norm", name, v) for e, v in zip(epochs, values)]
            rows += [(str(run), e, "grad_norm_change", name, abs(b - a))
                     for e, a, b in zip(epochs[1:], values, values[1:])]
    with open(out / "analysis.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "epoch", "measure", "layer_or_block", "value"])
        writer.writerows(rows)
    print(f"wrote fig1a_structural_similarity, fig1b_cka, fig3b_grad_norm (.png and .pdf) and analysis.csv to {out}")

