"""Benchmarks and paper checks that print numbers and ratios measured in one run on one machine.

    python -m spfde.bench methods [--epochs 10] [--seeds 0] [--methods dense mest ...] [overrides ...]
    python -m spfde.bench freeze-step [--steps 20] [overrides ...]
    python -m spfde.bench memory
    python -m spfde.bench table2-flops
    python -m spfde.bench table3-flops
    python -m spfde.bench ablation-freeze [--seeds 0 1 2] [--epochs 30]
    python -m spfde.bench ablation-sieve [--seeds 0 1 2] [--epochs 20] [interval=2]
    python -m spfde.bench plan [overrides ...]
    python -m spfde.bench gpu [--batch-sizes 64 512] [--train-size 12800] [--json PATH] [overrides ...]
    python -m spfde.bench data [--generate 3840] [--batch-size 256] [--steps 30] [--json PATH] [overrides ...]
    python -m spfde.bench startup [--runs 75] [--repeats 5]

methods: every sparse-training method on the quickstart setup (ResNet-32, digits) at one sparsity —
test accuracy and training time per epoch relative to dense training.
freeze-step: wall-clock of a training step with 0, half and all candidate blocks frozen (the frozen
prefix runs under no_grad), as ratios to the unfrozen step.
memory: the paper's Fig. 4 check — ResNet-32/CIFAR-100, batch 64, x = 0.2: SpFDE average and minimum
training memory against the plain-DST minimum at 90/95/98% sparsity (planned, no data needed).
table2-flops, table3-flops: planned training FLOPs of every row of the paper's Table 2 (at 90/95/98%) or Table 3
(sweeps/row), next to the paper's, under MEST's README soft bounds (our default) and its EM&S script's bounds, with
the MEST-based rows masked as MEST's code does (the default) and as the paper's Sec. 5 says (planned, no data).
ablation-freeze: digits, ResNet-32 at 90% with MEST: freeze = 0, 0.1, 0.2, 0.3 x the four schemes x
seeds — accuracy, training FLOPs and wall-clock.
ablation-sieve: the same for sieve = 0, 0.1, 0.2, 0.3 x circular/oneshot/random, plus SpFDE 0.2+0.2.
plan: `spfde.plan plan.calibrate=true`'s wall-clock estimate against the real run, on the CPU, for three configs
(quickstart; quickstart with freeze=0.2 sieve=0.2; ResNet-32 width 1 on FakeData for 3 epochs): each is planned
with calibration (its own calibration file, measured afresh), then trained; prints estimated and measured
wall-clock of the run (spfde.training.loop.train, start-up included, Python's imports not) and their ratio. Extra
overrides apply to all three (e.g. model.depth=8 epochs=6 to shorten it on a busy machine).
gpu: in one process, on the configured model (default ResNet-32 2x, CIFAR-100-shaped FakeData): the bare
model's training step (eager and CUDA-graphed) as the anchor, then the harness's own epoch loop for dense,
MEST, MEST with all candidate blocks frozen and MEST with a sieved loader, as img/s and ratios to the
anchor with what each ran (graphed, eager or fallback) and the backend settings all ran with; measured
training memory next to the plan's; evaluation time against a training epoch; and short MEST vs SpFDE 0.2+0.2
runs: wall-clock saving against FLOPs saving, steady epoch time per frozen depth and one-off time per depth,
and the paper's 160 epochs projected from them (after the first batch size, before the others). Made for a
GPU; runs (slowly, without graphs) on the CPU with small sizes, e.g. `gpu --batch-sizes 16 --train-size 64
device=cpu model.width=1 model.depth=8 dataset.test_size=64 --run-size 256 --run-epochs 4`.
data: the input pipeline of image folders. Writes an ImageNet-like JPEG folder (N train + N/10 val images of
~400x350 px in 10 classes, cached in outputs/bench-data/) unless dataset.root is given, then in one process:
the bare model's img/s on a random device batch, the harness's training img/s with each folder loader this
device has (pil; gpu and dali on CUDA) as ratios to it, and the epoch time with 0 and all candidate blocks
frozen for the fastest loader; for each, the loader alone and the step alone (img/s): data- or compute-bound.
Default ResNet-50 at 224, batch 256; CPU rehearsal: `data --generate 64
--batch-size 16 --steps 3 model=resnet32 model.width=1 model.depth=8 dataset.image_size=32 dataset.workers=2
device=cpu`.
startup: how fast the commands that do not train (status on a sweep of --runs runs, report, dashboard, every
--help) answer, each in a fresh process, with `python -X importtime`'s biggest packages and whether torch was
loaded (one tiny run is trained, ~20 s, and copied into the sweep).
gpu and data: `--json PATH` also writes the values and ratios, rewritten after each measurement (the GPU
session's summary reads them); a measurement that fails is reported as not measured, the others still run,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from spfde.bench.startup import startup
from spfde.config import CONF_DIR


def method_names() -> list[str]:
    """The sparse-training methods, "dense" first, from the file names in conf/sparsity/ (one config per method,
    named as in spfde.sparse.METHODS, which would import torch)."""
    names = sorted(path.stem for path in (CONF_DIR / "sparsity").glob("*.yaml"))
    return ["dense", *(name for name in names if name != "dense")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spfde.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("methods", help="every sparse method vs dense: accuracy and time per epoch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--methods", nargs="+", default=method_names())
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.width=2")
    p = sub.add_parser("freeze-step", help="step time with a frozen prefix, as ratios")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("overrides", nargs="*", help="e.g. model.width=2 dataset=fake batch_size=64 device=cuda")
    sub.add_parser("memory", help="the paper's Fig. 4 memory check (planned)")
    sub.add_parser("table2-flops", help="planned training FLOPs of the Table 2 rows under both MEST bounds")
    sub.add_parser("table3-flops", help="planned training FLOPs of the Table 3 rows under both MEST bounds")
    p = sub.add_parser("ablation-freeze", help="freeze x scheme x seeds on digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)  # x = 0.3 needs more than the quickstart's 15 epochs
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("ablation-sieve", help="sieve y x method x seeds on digits, and SpFDE 0.2+0.2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("plan", help="spfde.plan's calibrated wall-clock estimate vs real CPU runs, as ratios")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for all three, e.g. model.depth=8")
    p = sub.add_parser("gpu", help="harness vs bare model img/s, freezing speed-up and memory, SpFDE wall-clock")
    # defaults sized for a short GPU window (tests/gpu/session.sh: ~2.5 min on an H200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    p.add_argument("--train-size", type=int, default=12800, help="FakeData images per timed epoch")
    p.add_argument("--steps", type=int, default=100, help="timed steps of the bare model")
    p.add_argument("--run-size", type=int, default=2560, help="FakeData images of the MEST vs SpFDE runs")
    p.add_argument("--run-epochs", type=int, default=24,
                   help="24: the 12 freeze steps that reach freeze=0.2 on ResNet-32, 2 epochs each")
    p.add_argument("--run-interval", type=int, help="Δτ of the MEST and SpFDE runs (default: run epochs // 12, >= 1)")
    p.add_argument("--json", help="also write the measured values and ratios to this JSON file, as they come")
    p.add_argument("overrides", nargs="*", help="e.g. model.width=2 precision=bf16 cuda_graphs=off")
    p = sub.add_parser("data", help="folder input pipeline: bare model vs harness img/s per loader, and freezing")
    # 3840 = 15 batches of 256: one batch for each of 15 workers per epoch (~1 min on an H200)
    p.add_argument("--generate", type=int, default=3840, help="train images of the generated JPEG folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps of the bare model")
    p.add_argument("--json", help="also write the measured values and ratios to this JSON file, as they come")
    p.add_argument("overrides", nargs="*", help="e.g. dataset.root=/path dataset.workers=15 precision=bf16")
    p = sub.add_parser("startup", help="start-up time and imports of the commands that do not train")
    p.add_argument("--runs", type=int, default=75, help="run directories of the sweep spfde.status reads")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per command (the median is shown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # imported after parsing: --help needs no torch
    if args.bench == "methods":
        from spfde.bench.methods import compare_methods

        print(f"# sparse methods on digits (quickstart model), sparsity {args.ratio}, {args.epochs} epochs")
        print(compare_methods(args.methods, args.epochs, args.seeds, args.ratio, args.overrides))
    elif args.bench == "freeze-step":
        from spfde.bench.freeze_step import freeze_step

        print(freeze_step(args.steps, args.overrides))
    elif args.bench == "memory":
        from spfde.bench.memory import fig4_memory

        print(fig4_memory())
    elif args.bench in ("table2-flops", "table3-flops"):
        from spfde.bench.paper_flops import paper_flops

        print(paper_flops(int(args.bench[5])))
    elif args.bench == "ablation-freeze":
        from spfde.bench.ablations import ablation_freeze

        print(ablation_freeze(args.seeds, args.epochs, args.overrides))
    elif args.bench == "ablation-sieve":
        from spfde.bench.ablations import ablation_sieve

        print(ablation_sieve(args.seeds, args.epochs, args.overrides))
    elif args.bench == "plan":
        from spfde.bench.plan_estimates import plan_estimates

        print(plan_estimates(args.overrides))
    elif args.bench == "startup":
        print(startup(args.runs, args.repeats))
    elif args.bench in ("gpu", "data"):
        if args.bench == "gpu":
            from spfde.bench.gpu import gpu

            report = gpu(args.batch_sizes, args.train_size, args.steps, args.run_size, args.run_epochs,
                         args.overrides, args.json, args.run_interval)
        else:
            from spfde.bench.data_pipeline import data_bench

            report = data_bench(args.generate, args.batch_size, args.steps, args.overrides, args.json)
        if report.failures:  # the others were measured; the exit status still says that something failed
            sys.exit(1)


if __name__ == "__main__":
    main()
