"""`python -m spfde.bench ablation-freeze` and `ablation-sieve`: the paper's ablations, trained on digits (the
quickstart's ResNet-32, width 1, at 90% with MEST), each configuration over the given seeds. ablation-freeze:
freeze x = 0, 0.1, 0.2, 0.3 x the four freezing schemes (interval 1); ablation-sieve: sieve y = 0, 0.1, 0.2, 0.3 x
circular/oneshot/random, plus SpFDE 0.2+0.2 (sieving and freezing together). Each prints a line per run as it
finishes, then a table: test accuracy (mean ± std over the seeds), training FLOPs, the FLOPs saved against the first
row (x = 0, or MEST alone) and the wall-clock seconds; a configuration whose freezing cannot be reached is a row
saying so."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from spfde.bench.common import mean_std, run_once
from spfde.training.freeze import FreezeError


def run_seeds(overrides: list[str], seeds: list[int], tmp: str, tag: str) -> tuple[list, list, list]:
    """One configuration over seeds: final accuracies, training FLOPs and training times."""
    accs, flops, times = [], [], []
    for seed in seeds:
        summary, _ = run_once([*overrides, f"seed={seed}"], Path(tmp) / f"{tag}-{seed}")
        accs.append(summary["final_acc"])
        flops.append(summary["train_flops"])
        times.append(summary["train_time_s"])
        print(f"  {tag} seed {seed}: acc {summary['final_acc']:.4f}, FLOPs {summary['train_flops']:.4g}, "
              f"{summary['train_time_s']:.1f} s", flush=True)
    return accs, flops, times


def ablation_freeze(seeds: list[int], epochs: int, extra: list[str]) -> str:
    grid = [(0.0, "single_shot")] + [(x, s) for x in (0.1, 0.2, 0.3)
                                     for s in ("single_shot", "resume", "periodic", "delayed")]
    lines = ["| freeze x | scheme | test acc (mean ± std) | training FLOPs | saved vs x=0 | wall-clock s |",
             "|---|---|---|---|---|---|"]
    base_flops = None
    with tempfile.TemporaryDirectory() as tmp:
        for x, scheme in grid:
            try:
                overrides = ["experiment=quickstart", f"epochs={epochs}", f"freeze={x}", f"freeze_scheme={scheme}",
                             *extra]
                accs, flops, times = run_seeds(overrides, seeds, tmp, f"x={x} {scheme}")
            except FreezeError as e:
                lines.append(f"| {x} | {scheme} | unreachable: {e} | | | |")
                continue
            mean_flops = statistics.mean(flops)
            base_flops = base_flops or mean_flops
            label = "—" if x == 0 else scheme
            lines.append(f"| {x} | {label} | {mean_std(accs)} | {mean_flops:.4g} | "
                         f"{100 * (1 - mean_flops / base_flops):.1f}% | {statistics.mean(times):.1f} |")
    return (f"# freezing ablation: digits, ResNet-32 (width 1) at 90% (MEST), {epochs} epochs, interval 1, "
            f"{len(seeds)} seeds\n" + "\n".join(lines))


def ablation_sieve(seeds: list[int], epochs: int, extra: list[str]) -> str:
    grid = [(0.0, "circular", 0.0)] + [(y, m, 0.0) for y in (0.1, 0.2, 0.3) for m in ("circular", "oneshot", "random")]
    grid += [(0.2, "circular", 0.2)]  # SpFDE 0.2 + 0.2 (sieving and freezing together)
    lines = ["| sieve y | method | freeze x | test acc (mean ± std) | training FLOPs | saved vs MEST | wall-clock s |",
             "|---|---|---|---|---|---|---|"]
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for y, method, x in grid:
            # a 20-epoch run cannot freeze 11 blocks one per Δτ = 2 from an update epoch > 0: any T_frz
            sync = ["freeze_sync=false"] if x else []
            overrides = ["experiment=quickstart", f"epochs={epochs}", f"sieve={y}", f"sieve_method={method}",
                         f"freeze={x}", *sync, *extra]
            try:
                accs, flops, times = run_seeds(overrides, seeds, tmp, f"y={y} {method} x={x}")
            except FreezeError as e:
                lines.append(f"| {y} | {method} | {x} | unreachable: {e} | | | |")
                continue
            mean_flops = statistics.mean(flops)
            base = base or mean_flops
            lines.append(f"| {y} | {method if y else '— (MEST alone)'} | {x} | {mean_std(accs)} | {mean_flops:.4g} | "
                         f"{100 * (1 - mean_flops / base):.1f}% | {statistics.mean(times):.1f} |")
    return (f"# sieving ablation: digits, ResNet-32 (width 1) at 90% (MEST), {epochs} epochs, {len(seeds)} seeds, "
            f"overrides {extra}\n" + "\n".join(lines))
