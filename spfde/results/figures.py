"""The report's figures: accuracy against training FLOPs, x-by-y heatmaps, per-run timelines."""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

from spfde.results.runs import by_keys, flops_scale, method_name, natural_key, printable, read_metrics

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
    if len(by_keys(groups, ("model", "dataset", "method", "ratio", "epochs"))) != 1:
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
        for i, (x, rows) in enumerate(sorted(by_keys(grid, ("freeze",)).items())):
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
        series = sorted(by_keys(groups, ("label", "model", "dataset")).values(),
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
    for _key, members in by_keys(groups, ("model", "dataset", "method", "ratio")).items():
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

    for depth in range(1, max((len(r.parts) for r in runs), default=1) + 1):
        names = {r: re.sub(r"[^\w.,=+-]", "_", "__".join(r.parts[-depth:]), flags=re.ASCII) for r in runs}
        if len(set(names.values())) == len(runs):
            break
    taken = list(names.values())
    return {run: name if len(name) <= 100 and taken.count(name) == 1 else
            f"{name[:90]}-{hashlib.sha1(os.fsencode(str(run))).hexdigest()[:8]}" for run, name in names.items()}


