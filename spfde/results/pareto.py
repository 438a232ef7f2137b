"""The Pareto front of a report's configurations: accuracy (higher is better) against training FLOPs (lower is
better). `pareto_front` is what the report (`pareto.csv`, `pareto.png/.pdf`) and `spfde.planning.plan plan.results=...`
use, so both name the same configurations.

A configuration is on the front when no other configuration is at least as accurate with at most as many
training FLOPs and strictly better in one of the two. Means over seeds decide; the spread does not (a dominated
configuration with a smaller std stays dominated: the figure shows the error bars so that a reader can judge
whether the difference holds). Identical points (same mean accuracy and FLOPs) do not dominate each other: both
stay on the front. Groups without a mean accuracy or FLOPs (a run that wrote none) are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from spfde.results.figures import flops_axis, save_figure
from spfde.results.runs import write_csv

ACC, FLOPS, N = "acc_mean", "train_flops", "seeds"  # the keys of spfde.results.report.group()'s groups


def dominates(a: dict, b: dict, acc: str = ACC, flops: str = FLOPS) -> bool:
    """a is at least as good as b in both objectives and strictly better in one."""
    return (a[acc] >= b[acc] and a[flops] <= b[flops]) and (a[acc] > b[acc] or a[flops] < b[flops])


def pareto_front(groups: list[dict], acc: str = ACC, flops: str = FLOPS) -> list[dict]:
    """The groups not dominated in (mean accuracy: max, mean training FLOPs: min), cheapest first (ties: the more
    accurate first). `groups` are dicts with at least `acc` and `flops` (spfde.results.report.group()'s groups:
    acc_mean, train_flops, seeds = n); the same dict objects come back, unchanged."""
    points = [g for g in groups if _number(g.get(acc)) and _number(g.get(flops))]
    front = [g for g in points if not any(dominates(o, g, acc, flops) for o in points if o is not g)]
    return sorted(front, key=lambda g: (g[flops], -g[acc]))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def point_label(g: dict, varying: list[str]) -> str:
    """'x%+y%' (freeze + sieve), with the method and/or sparsity ratio when those vary between configurations."""
    text = f"{100 * (g.get('freeze') or 0):g}%+{100 * (g.get('sieve') or 0):g}%"
    extra = []
    if "method" in varying:
        extra.append(str(g.get("method")))
    if "ratio" in varying and g.get("ratio") is not None:
        extra.append(f"{100 * g['ratio']:g}% sparse")
    return text + (f" ({', '.join(extra)})" if extra else "")


def varying(groups: list[dict], keys=("method", "ratio")) -> list[str]:
    return [k for k in keys if len({repr(g.get(k)) for g in groups}) > 1]


def front_rows(groups: list[dict]) -> list[dict]:
    """pareto.csv's rows: the front, cheapest first."""
    shown = varying(groups)
    return [{"point": point_label(g, shown), "label": g.get("label"), "method": g.get("method"),
             "ratio": g.get("ratio"), "freeze": g.get("freeze"), "sieve": g.get("sieve"),
             "sieve_method": g.get("sieve_method"), "n": g.get(N), "acc_mean": g[ACC], "acc_std": g.get("acc_std"),
             "flops_mean": g[FLOPS]} for g in pareto_front(groups)]


def plot_front(groups: list[dict], path: Path, title: str = "") -> None:
    """Accuracy against absolute training FLOPs: every configuration (± std where n > 1), the front as a step
    line (the best accuracy reached with at most that many FLOPs), its points labelled x%+y% (labels lifted clear of
    each other); the FLOPs axis as in the other figures of the report. PNG and PDF."""
    import matplotlib.pyplot as plt

    points = [g for g in groups if _number(g.get(ACC)) and _number(g.get(FLOPS))]
    front = pareto_front(points)
    shown = varying(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    several = [g for g in points if (g.get(N) or 1) > 1]
    single = [g for g in points if (g.get(N) or 1) <= 1]
    if several:
        ax.errorbar([g[FLOPS] for g in several], [100 * g[ACC] for g in several],
                    yerr=[100 * (g.get("acc_std") or 0) for g in several], fmt="o", color="tab:gray", capsize=3,
                    alpha=0.7, label="configuration (mean ± std over seeds)")
    if single:
        ax.plot([g[FLOPS] for g in single], [100 * g[ACC] for g in single], "o", color="tab:gray", alpha=0.7,
                mfc="none", label="configuration (one run)")
    if front:
        ax.step([g[FLOPS] for g in front], [100 * g[ACC] for g in front], where="post", color="tab:red",
                label="Pareto front")
        ax.plot([g[FLOPS] for g in front], [100 * g[ACC] for g in front], "o", color="tab:red")
        labels: dict[tuple, list[str]] = {}  # identical points share one label ("a / b")
        for g in front:
            labels.setdefault((g[FLOPS], g[ACC]), []).append(point_label(g, shown))
        texts = [ax.annotate(" / ".join(names), (f, 100 * a), textcoords="offset points", xytext=(4, 4), fontsize=7)
                 for (f, a), names in labels.items()]
    # the report's FLOPs axis (a log axis, or "training FLOPs (×eN)"): no offset text in the corner
    flops_axis(ax, [g[FLOPS] for g in points])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs training FLOPs, Pareto front{' — ' + title if title else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if front:
        separate(texts, fig)  # last: the axes' limits and scale are final
    save_figure(fig, path)
    plt.close(fig)


def separate(texts: list, fig, pad: float = 2.0) -> None:
    """Lift each point label (an annotation placed in offset points) just above the labels placed before it that
    its box overlaps: front points close in FLOPs and accuracy would otherwise print over each other. Boxes come
    from the figure's renderer, each with a margin of `pad` points."""
    fig.canvas.draw()  # before a draw an annotation has no position yet (its extent is a unit box)
    renderer = fig.canvas.get_renderer()
    points = fig.dpi / 72  # pixels per point at the renderer's dpi
    placed = []
    for text in texts:
        for _ in placed:  # each lift clears every box it hit and never comes down: len(placed) lifts at most
            box = text.get_window_extent(renderer).padded(pad * points)
            hit = [other for other in placed if box.overlaps(other)]
            if not hit:
                break
            dx, dy = text.xyann
            text.xyann = (dx, dy + (max(other.y1 for other in hit) - box.y0) / points)
        placed.append(text.get_window_extent(renderer).padded(pad * points))


def write_pareto(groups: list[dict], out: Path, title: str = "") -> list[Path]:
    """The report's front: `pareto.csv` and `pareto.png`/`.pdf` in `out` (`title`: what the runs are); returns
    the PNG (for --wandb)."""
    write_csv(out / "pareto.csv", front_rows(groups))
    plot_front(groups, out / "pareto.png", title)
    return [out / "pareto.png"]
