"""`python -m spfde.analyze <run_dir> [more run dirs] [--out DIR] [--block N] [--debiased]`: the paper's
Sec. 3 figures from runs trained with `analysis.every=N`.

Writes into --out (default: <first run>/analysis/figures), each figure as PNG and PDF:
  fig1a_structural_similarity.png  share of each layer's top-50% non-zero positions still present in
                                   the final model, per epoch (first run)
  fig1b_cka.png                    linear CKA of one block's representation with the final model's, per
                                   epoch, one line per run (e.g. dense and several sparsity ratios)
  fig3b_grad_norm.png              each layer's gradient norm per epoch and its change between epochs
  analysis.csv                     every number behind the figures
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from spfde.analysis import series


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

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from spfde.report import save_figure

    missing = [run for run in args.runs if not run.is_dir()]
    if missing:
        print(f"spfde: error: no such run directory: {missing[0]}", file=sys.stderr)
        sys.exit(2)
    try:
        data = {run: series(run, args.debiased) for run in args.runs}
    except FileNotFoundError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    for run, d in data.items():
        if not 0 <= args.block < len(d["cka"]):
            print(f"spfde: error: --block {args.block} is not a block of {run} (it has blocks 0..{len(d['cka']) - 1})",
                  file=sys.stderr)
            sys.exit(2)
    out = args.out or args.runs[0] / "analysis" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    first = args.runs[0]

    # Fig. 1a: structural similarity of every layer of the first run
    d = data[first]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    layers = list(d["structural_similarity"])
    for i, (name, values) in enumerate(d["structural_similarity"].items()):
        ax.plot(d["epochs"], values, color=cmap(i / max(1, len(layers) - 1)), label=name if i % 4 == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("structural similarity with the final model")
    ax.set_title(f"Fig. 1a — top-50% non-zero positions kept ({run_label(first)})")
    ax.legend(fontsize=6, title="layer (early → late)", title_fontsize=7)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, out / "fig1a_structural_similarity.png", dpi=120)
    plt.close(fig)

    # Fig. 1b: CKA of one block across runs
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, d in data.items():
        block = list(d["cka"])[args.block]
        ax.plot(d["epochs"], d["cka"][block], marker=".", label=f"{run_label(run)} ({block})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("linear CKA with the final model")
    ax.set_title("Fig. 1b — representation similarity of one block")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, out / "fig1b_cka.png", dpi=120)
    plt.close(fig)

    # Fig. 3b: gradient norms and their change (first run)
    epochs, norms = grad_norms(first)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, values) in enumerate(norms.items()):
        color = cmap(i / max(1, len(norms) - 1))
        a1.plot(epochs, values, color=color, label=name if i % 4 == 0 else None)
        a2.plot(epochs[1:], [abs(b - a) for a, b in zip(values, values[1:])], color=color)
    a1.set_title(f"Fig. 3b — gradient norm per layer ({run_label(first)})")
    a1.set_ylabel("mean gradient norm over the epoch's steps")
    a2.set_title("change of the gradient norm between epochs")
    a2.set_ylabel("|norm(epoch) − norm(epoch − 1)|")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    a2.legend(*a1.get_legend_handles_labels(), fontsize=6, title="layer (early → late)", title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    save_figure(fig, out / "fig3b_grad_norm.png", dpi=120)
    plt.close(fig)

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


if __name__ == "__main__":
    main()
