"""Benchmarks that print numbers and ratios measured in one run on one machine (`make bench`).

    python -m spfde.bench methods [--epochs 10] [--seeds 0] [--methods dense mest ...] [overrides ...]

`methods` trains every sparse-training method on the quickstart setup (ResNet-32, digits) at the same
sparsity and prints test accuracy and training time per epoch relative to dense training.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from omegaconf import open_dict

from spfde.checkpoint import METRICS
from spfde.config import compose_config, validate

# Step-based methods default to their papers' intervals (RigL 100, DSR 100, ITOP 4000 steps), longer
# than a whole digits run (23 steps per epoch): the benchmark scales them down so their structure moves.
DIGITS_INTERVALS = {m: [f"sparsity.{m}.delta_t=20"] for m in ("rigl", "itop", "dsr")}


def run_once(overrides: list[str], run_dir: Path) -> tuple[dict, list[dict]]:
    """Train one run; its per-epoch records (for LTH: those of every round, in order)."""
    import json

    from spfde.train import train

    cfg = compose_config(["logger=none", "progress=false", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    validate(cfg)
    summary = train(cfg)
    records = [json.loads(line) for path in sorted(run_dir.rglob(METRICS)) for line in path.read_text().splitlines()]
    return summary, records


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def compare_methods(methods: list[str], epochs: int, seeds: list[int], ratio: float, extra: list[str]) -> str:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            accs, epoch_times, totals = [], [], []
            for seed in seeds:
                r = 0.0 if method == "dense" else ratio
                overrides = ["experiment=quickstart", f"sparsity={method}", f"sparsity.ratio={r}", f"epochs={epochs}",
                             f"seed={seed}", *DIGITS_INTERVALS.get(method, []), *extra]
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


def main(argv: list[str] | None = None) -> None:
    from spfde.sparse import METHODS

    parser = argparse.ArgumentParser(prog="python -m spfde.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("methods", help="every sparse method vs dense: accuracy and time per epoch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--methods", nargs="+", default=["dense", *sorted(m for m in METHODS if m != "dense")])
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.width=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.bench == "methods":
        print(f"# sparse methods on digits (quickstart model), sparsity {args.ratio}, {args.epochs} epochs")
        print(compare_methods(args.methods, args.epochs, args.seeds, args.ratio, args.overrides))


if __name__ == "__main__":
    main()
