"""`python -m spfde.bench methods`: every sparse-training method against dense training on the quickstart setup
(ResNet-32, digits) at one sparsity, over the given seeds. Prints a line per run as it finishes, then a table per
method: test accuracy (mean ± std over the seeds), epochs trained, training seconds per epoch (the first epoch, with
its one-off costs, left out), that time as a ratio to dense training's, and the total training seconds."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from spfde.bench.common import mean_std, run_once

# Step-based methods default to their papers' intervals (RigL 100, DSR 100, ITOP 4000 steps), longer
# than a whole digits run (23 steps per epoch): the benchmark scales them down so their structure moves.
DIGITS_INTERVALS = {m: [f"sparsity.{m}.delta_t=20"] for m in ("rigl", "itop", "dsr")}


def compare_methods(methods: list[str], epochs: int, seeds: list[int], ratio: float, extra: list[str]) -> str:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            accs, epoch_times, totals = [], [], []
            for seed in seeds:
                overrides = ["experiment=quickstart", f"sparsity={method}", f"sparsity.ratio={ratio}",
                             f"epochs={epochs}", f"seed={seed}", *DIGITS_INTERVALS.get(method, []), *extra]
                summary, records = run_once(overrides, Path(tmp) / f"{method}-{seed}")
                accs.append(summary["final_acc"])
                # the first epoch carries one-off costs (allocation, SNIP/GraSP saliency): leave it out
                times = [rec["time/train_s"] for rec in records[1:]] or [records[0]["time/train_s"]]
                epoch_times.append(statistics.mean(times))
                totals.append(sum(rec["time/train_s"] for rec in records))
                print(f"  {method:8s} seed {seed}: acc {summary['final_acc']:.4f}, {len(records)} epochs, "
                      f"{statistics.mean(times):.2f} s/epoch (train)", flush=True)
            rows[method] = (accs, statistics.mean(epoch_times), statistics.mean(totals), len(records))
    base = rows["dense"][1] if "dense" in rows else None
    lines = [f"| method | test acc ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}) | epochs trained | "
             "train s/epoch | vs dense | train s total |", "|---|---|---|---|---|---|"]
    for method, (accs, t, total, n_epochs) in rows.items():
        ratio_txt = f"{t / base:.2f}×" if base else "n/a"
        lines.append(f"| {method} | {mean_std(accs)} | {n_epochs} | {t:.2f} | {ratio_txt} | {total:.1f} |")
    return "\n".join(lines)
