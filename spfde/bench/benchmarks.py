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
plan: `spfde.planning.plan plan.calibrate=true`'s wall-clock estimate against the real run, on the CPU, for three configs
(quickstart; quickstart with freeze=0.2 sieve=0.2; ResNet-32 width 1 on FakeData for 3 epochs): each is planned
with calibration (its own calibration file, measured afresh), then trained; prints estimated and measured
wall-clock of the run (spfde.training.loop.train, start-up included, Python's imports not) and their ratio. Extra
overrides apply to all three (e.g. model.depth=8 epochs=6 to shorten it on a busy machine).
gpu: in one process, on the configured model (default ResNet-32 2x, CIFAR-100-shaped FakeData): the bare
model's training step (eager and CUDA-graphed) as the anchor, then the harness's own epoch loop for dense,
MEST, MEST with all candidate blocks frozen and MEST with a sieved loader, as img/s and ratios to the
anchor; measured training memory next to the plan's; evaluation time against a training epoch; and a short
MEST vs SpFDE 0.2+0.2 run: wall-clock saving against FLOPs saving (after the first batch size, before the
others). Made for a GPU; runs (slowly, without graphs) on the CPU with small sizes, e.g. `gpu --batch-sizes
16 --train-size 64 device=cpu model.width=1 model.depth=8 dataset.test_size=64 --run-size 256 --run-epochs 4`.
data: the input pipeline of image folders. Writes an ImageNet-like JPEG folder (N train + N/10 val images of
~400x350 px in 10 classes, cached in outputs/bench-data/) unless dataset.root is given, then in one process:
the bare model's img/s on a random device batch, the harness's training img/s with each folder loader this
device has (pil; gpu and dali on CUDA) as ratios to it, and the epoch time with 0 and all candidate blocks
frozen for the fastest loader. Default ResNet-50 at 224, batch 256; CPU rehearsal: `data --generate 64
--batch-size 16 --steps 3 model=resnet32 model.width=1 model.depth=8 dataset.image_size=32 dataset.workers=2
device=cpu`.
gpu and data: `--json PATH` also writes the values and ratios, rewritten after each measurement (the GPU
session's summary reads them); a measurement that fails is reported as not measured, the others still run,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from omegaconf import open_dict

from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.rundir.checkpoint import METRICS

# Step-based methods default to their papers' intervals (RigL 100, DSR 100, ITOP 4000 steps), longer
# than a whole digits run (23 steps per epoch): the benchmark scales them down so their structure moves.
DIGITS_INTERVALS = {m: [f"sparsity.{m}.delta_t=20"] for m in ("rigl", "itop", "dsr")}


def run_once(overrides: list[str], run_dir: Path) -> tuple[dict, list[dict]]:
    """Train one run; its per-epoch records (for LTH: those of every round, in order)."""
    import json

    from spfde.training.loop import train

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


def freeze_step(steps: int, extra: list[str]) -> str:
    """Time training steps with a growing frozen prefix on the configured model and batch."""
    import time

    import torch
    import torch.nn.functional as F

    from spfde.models import build_model
    from spfde.training.build import build_optimizer, resolve_device
    from spfde.training.freeze import candidate_blocks, frozen_prefix_forward

    cfg = compose_config(["experiment=quickstart", "logger=none", *extra])
    device = resolve_device(cfg.device)
    d = cfg.dataset
    model = build_model(cfg.model, d.num_classes, d.channels).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    x = torch.randn(cfg.batch_size, d.channels, d.image_size, d.image_size, device=device)
    y = torch.randint(0, d.num_classes, (cfg.batch_size,), device=device)
    candidates = candidate_blocks(model, cfg.freeze_fraction)

    def timed(k: int) -> float:
        for i, block in enumerate(model.blocks):
            block.requires_grad_(i >= k)
        for n in range(steps + 3):
            if n == 3:  # warm-up steps are not timed
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(frozen_prefix_forward(model, x, k), y).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    rows = [(k, timed(k)) for k in (0, candidates // 2, candidates)]
    base = rows[0][1]
    lines = [f"| frozen blocks (of {len(model.blocks)}) | ms/step | vs unfrozen |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * t:.2f} | {t / base:.2f}× ({base / t:.2f}× faster) |" for k, t in rows]
    return (f"# training step, {cfg.model.name} (depth {cfg.model.depth}, width {cfg.model.width}), batch "
            f"{cfg.batch_size} at {d.channels}x{d.image_size}x{d.image_size}, device {device}\n" + "\n".join(lines))


def fig4_memory() -> str:
    """Both memory conventions; the paper's (cost.memory=paper) is the one Fig. 4 is checked against."""
    plans = fig4_plans()
    out = []
    for convention, what in (("paper", "the paper's convention, cost.memory=paper (default)"),
                             ("autograd", "what autograd keeps for backward, cost.memory=autograd")):
        lines = ["| sparsity | plain-DST min (MiB) | SpFDE avg (MiB) | SpFDE min (MiB) | avg reduction | "
                 "min reduction |", "|---|---|---|---|---|---|"]
        for ratio, plan in plans.items():
            reduction = fig4_reductions(plan, convention)
            m = plan["memory_conventions"][convention]
            lines.append(f"| {ratio} | {m['dst_min_bytes'] / 2**20:.1f} | {m['avg_bytes'] / 2**20:.1f} | "
                         f"{m['min_bytes'] / 2**20:.1f} | {reduction['avg']:.1f}% | {reduction['min']:.1f}% |")
        lines.append("| paper (Fig. 4) | | | | 20–25.3% | 42.2–43.9% |")
        out.append(f"## {what}\n" + "\n".join(lines))
    return ("# Fig. 4: ResNet-32 (2x) on CIFAR-100, batch 64, fp32, MEST + freeze x = 0.2 (planned)\n"
            + "\n\n".join(out))


def fig4_plans() -> dict:
    """The plans of Fig. 4's setting at 90/95/98% sparsity."""
    from spfde.planning.plan import build_plan

    plans = {}
    for ratio in (0.9, 0.95, 0.98):
        cfg = compose_config(["experiment=cifar100_resnet32", f"sparsity.ratio={ratio}", "freeze=0.2"])
        validate(cfg)
        plans[ratio] = build_plan(cfg)
    return plans


def fig4_reductions(plan: dict, convention: str) -> dict:
    """SpFDE's average and minimum training memory below the plain-DST minimum, in percent."""
    m = plan["memory_conventions"][convention]
    return {"avg": 100 * (1 - m["avg_bytes"] / m["dst_min_bytes"]),
            "min": 100 * (1 - m["min_bytes"] / m["dst_min_bytes"])}


# The paper's training FLOPs: Table 2 (x e15) at 90/95/98% sparsity (LTH is N/A there) and Table 3 (x e18) at 80%
# (DeepR and SNFS are n/a there); None: the row is not in the paper (plain EM&S)
PAPER_TABLE2 = {"snip": (1.32, 0.66, 0.26), "grasp": (1.32, 0.66, 0.26), "deepr": (1.32, 0.66, 0.26),
                "set": (1.32, 0.66, 0.26), "dsr": (1.32, 0.66, 0.26), "mest": (1.54, 0.96, 0.38), "mest_ems": None,
                "spfde_15_15": (1.26, 0.66, 0.30), "spfde_20_20": (1.12, 0.58, 0.26),
                "spfde_25_25": (0.96, 0.52, 0.24)}
PAPER_TABLE3 = {"dense_102ep": (3.2,), "snip_102ep": (0.74,), "grasp_102ep": (0.74,), "dsr_102ep": (1.28,),
                "set_102ep": (0.74,), "rigl_102ep": (0.74,), "itop": (1.34,), "mest": (1.17,), "mest_ems": None,
                "spfde_10_10": (0.95,), "spfde_15_15": (0.84,), "spfde_20_20": (0.74,)}
MEST_ROWS = {"mest", "mest_ems", "spfde_10_10", "spfde_15_15", "spfde_20_20", "spfde_25_25"}
# MEST's EM&S soft bounds (grow-to offsets per phase): its README's (our default) and its EM&S script's
MEST_BOUNDS = {"README": "[-0.02,-0.01,0]", "script": "[-0.05,-0.025,0]"}
# how the MEST-based rows are masked: as they run (MEST's code), and as the paper's Sec. 5 says (first conv dense)
MEST_MASKING = {"MEST's code (default)": [], "the paper's Sec. 5 (sparsity.masked=all_but_first)":
                ["sparsity.masked=all_but_first"]}


def table_flops(sweep: str, paper: dict, ratios: tuple, unit: float, masking: list[str]) -> str:
    """Planned training FLOPs of a table's rows (sweeps/row/*) at its sparsities, next to the paper's, under
    both MEST bounds; `masking`: overrides of the MEST-based rows."""
    from spfde.planning.plan import build_plan

    head = "| row | " + " | ".join(f"{100 * r:g}%: paper | README bounds | script bounds" for r in ratios) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(ratios)]
    for row, numbers in paper.items():
        cells = []
        for i, ratio in enumerate(ratios):
            planned = {}
            for name, bounds in MEST_BOUNDS.items():
                if planned and row not in MEST_ROWS:
                    planned[name] = planned["README"]  # the bounds only change MEST-based rows
                    continue
                extra = masking if row in MEST_ROWS else []
                cfg = compose_config([f"+sweep={sweep}", f"+sweep/row={row}", f"sparsity.ratio={ratio}",
                                      f"sparsity.mest.ems.grow_to={bounds}", *extra])
                validate(cfg)
                planned[name] = build_plan(cfg)["train_flops"] / unit
            cells += [f"{numbers[i]:.2f}" if numbers else "—", f"{planned['README']:.3f}", f"{planned['script']:.3f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_flops(table: int) -> str:
    """Table 2 (ResNet-32 2x, CIFAR-100, 160 epochs) or Table 3 (ResNet-50, ImageNet, 80%): every row planned,
    its MEST-based rows masked as MEST's code does (the default) and as the paper's Sec. 5 says."""
    sweep, paper, ratios, unit, what = (
        ("table2", PAPER_TABLE2, (0.9, 0.95, 0.98), 1e15, "Table 2 training FLOPs (x e15), planned: ResNet-32 (2x) "
         "on CIFAR-100, 160 epochs; LTH is N/A (its rounds retrain)") if table == 2 else
        ("table3", PAPER_TABLE3, (0.8,), 1e18, "Table 3 training FLOPs (x e18), planned: ResNet-50 on ImageNet; the "
         "baselines at the 102 epochs of RigL's budget, RigL-ITOP as ITOP ran it, MEST and SpFDE 150 epochs"))
    parts = [f"## MEST-based rows masked as {name}\n" + table_flops(sweep, paper, ratios, unit, overrides)
             for name, overrides in MEST_MASKING.items()]
    return f"# {what}\n" + "\n\n".join(parts)


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
    from spfde.training.freeze import FreezeError

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
    from spfde.training.freeze import FreezeError

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


class NoBar:
    def update(self, n: int = 1) -> None:
        pass


class Report:
    """What one benchmark measured: lines printed as they come and named values, rewritten to a JSON file
    (`--json`) after each one so that a run cut off by a timeout still leaves what it had measured. A
    measurement that raises is reported as not measured and the others go on: a short GPU window must
    not be lost to its first error."""

    def __init__(self, json_path: str | None = None):
        self.lines: list[str] = []
        self.values: dict = {}
        self.failures = 0
        self.json_path = Path(json_path) if json_path else None

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def record(self, **values) -> None:
        from spfde.rundir.checkpoint import write_json

        self.values.update(values)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.json_path, self.values)

    def attempt(self, what: str, fn, *args):
        """fn(*args), or None (with the traceback on stderr and one line in the report) if it raises."""
        import traceback

        try:
            return fn(*args)
        except Exception as e:
            traceback.print_exc()
            self.failures += 1
            reason = (str(e).splitlines() or [""])[0][:200]
            self.emit(f"| {what} | not measured: {type(e).__name__}: {reason} |")
            return None

    def text(self) -> str:
        return "\n".join(self.lines)


def times(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def bare_model_img_s(cfg, batch_size: int, steps: int, graphed: bool) -> float:
    """The anchor: the project's model trained by a minimal loop on one random batch already on the device
    (fused SGD, bf16 autocast and channels_last on CUDA), eager or as one captured CUDA graph."""
    import time

    import torch
    import torch.nn.functional as F

    from spfde.models import build_model
    from spfde.training.build import Runtime, build_optimizer, resolve_device

    device = resolve_device(cfg.device)
    d = cfg.dataset
    rt = Runtime(device, cfg.precision, channels_last=cfg.channels_last and device.type == "cuda")
    model = build_model(cfg.model, d.num_classes, d.channels).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    x, y = rt.batch(torch.randn(batch_size, d.channels, d.image_size, d.image_size),
                    torch.randint(0, d.num_classes, (batch_size,)))

    def step():
        with rt.autocast(cache=not graphed):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    run = step
    if graphed:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    for _ in range(3):
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def harness_epochs(overrides: list[str], frozen: str | int = 0, timed_eval: bool = False) -> dict:
    """The harness's own loop (spfde.training.loop.train_one_epoch with spfde.training.step.TrainStep) for two epochs at a
    fixed frozen prefix (0, "half" or "all" of the candidate blocks); the second epoch is timed. Measures
    training memory against the plan's and, with timed_eval, times an evaluation of the test set."""
    import time

    import torch

    from spfde.training.build import build_run
    from spfde.training.cost import MemoryModel
    from spfde.training.freeze import candidate_blocks
    from spfde.training.loop import evaluate, train_one_epoch
    from spfde.training.step import EvalBatches, TrainStep, use_cuda_graphs

    cfg = compose_config(["logger=none", "progress=false", *overrides])
    with open_dict(cfg):
        cfg.run_dir = tempfile.mkdtemp(prefix="spfde-bench-")
    validate(cfg)
    run = build_run(cfg, Path(cfg.run_dir))
    device, model, optimizer = run.device, run.model, run.optimizer
    run.method.initialize(iter(run.data.train))
    candidates = candidate_blocks(model, cfg.freeze_fraction)
    k = {"half": candidates // 2, "all": candidates}.get(frozen, frozen)
    if k:
        run.freezer.set_frozen(range(k), True, optimizer)
        run.freezer.frozen = k
    run.meter.begin_epoch(0, k)
    graphs = use_cuda_graphs(cfg.cuda_graphs, device)
    step = TrainStep(model, optimizer, run.method, run.freezer, run.sieve, run.analysis, run.meter, run.rt,
                     cfg.optim.label_smoothing, cfg.batch_size, graphs)
    train_one_epoch(step, run.data.train, run.freezer, 0, run.rt, NoBar())  # warm-up and capture
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    stats = train_one_epoch(step, run.data.train, run.freezer, 1, run.rt, NoBar())
    sync(device)
    train_s = time.perf_counter() - start
    peak = step.peak_memory()
    eval_s, capture_s = None, step.capture_s
    if timed_eval:
        top5 = run.data.num_classes > 5
        eval_batches = EvalBatches(model, run.rt, cfg.eval_batch_size, top5, graphs)
        evaluate(model, run.data.test, run.rt, top5, eval_batches)  # warm-up and capture
        sync(device)
        start = time.perf_counter()
        evaluate(model, run.data.test, run.rt, top5, eval_batches)
        sync(device)
        eval_s = time.perf_counter() - start
        capture_s += eval_batches.capture_s
    input_shape = (run.data.channels, run.data.image_size, run.data.image_size)
    plan = MemoryModel(model, input_shape, cfg.batch_size,
                       torch.bfloat16 if run.rt.bf16 else torch.float32).breakdown(run.method.masks.densities(), k)
    return {"img_s": stats["samples"] / train_s, "samples": stats["samples"], "train_s": train_s, "eval_s": eval_s,
            "test_size": run.data.test.num_samples, "frozen": k, "candidates": candidates,
            "measured_above_baseline": None if peak is None else peak - baseline, "measured_peak": peak,
            "plan_total": plan["total"], "plan_non_weights": plan["total"] - plan["weights"],
            "capture_s": capture_s, "graphs": graphs}


PLAN_CONFIGS = {  # the three configs of `bench plan`
    "quickstart": ["experiment=quickstart"],
    "quickstart freeze=0.2 sieve=0.2": ["experiment=quickstart", "freeze=0.2", "sieve=0.2"],
    "resnet32-w1 fake, 3 epochs": ["experiment=quickstart", "dataset=fake", "epochs=3"],
}


def plan_estimates(extra: list[str]) -> str:
    """Estimated (spfde.planning.plan, calibrated) vs measured (spfde.training.loop) wall-clock of the PLAN_CONFIGS on the CPU."""
    import time

    from spfde.planning.plan import add_estimate, build_plan

    lines = ["| config | estimated | measured | estimated / measured | training steps: estimated / measured | "
             "estimate's parts: start-up, training, evaluation, other per-epoch work |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(PLAN_CONFIGS.items()):
            overrides = [*overrides, "device=cpu", *extra, f"plan.calibration_file={tmp}/calibration-{i}.json"]
            cfg = compose_config(["logger=none", "progress=false", *overrides])
            with open_dict(cfg):
                cfg.run_dir = str(Path(tmp) / f"run-{i}")
            validate(cfg)
            plan = add_estimate(cfg, build_plan(cfg))
            est = plan["estimated_s"]
            print(f"  {name}: estimated {est['total']:.1f} s; training it ...", flush=True)
            start = time.perf_counter()
            _, records = run_once(overrides, Path(tmp) / f"run-{i}")
            measured = time.perf_counter() - start
            trained = sum(r["time/train_s"] for r in records)  # the epochs' training loops, as the run times them
            parts = ", ".join(f"{est[k]:.1f}" for k in ("startup", "train", "eval", "epoch_work"))
            lines.append(f"| {name} | {est['total']:.1f} s | {measured:.1f} s | {est['total'] / measured:.2f} | "
                         f"{est['train']:.1f} / {trained:.1f} s | {parts} s |")
            print(lines[-1], flush=True)
    return (f"# spfde.planning.plan plan.calibrate=true vs the real run, {plan['estimate']['device']}, overrides {extra}\n"
            + "\n".join(lines))


def gpu(batch_sizes: list[int], train_size: int, steps: int, run_size: int, run_epochs: int,
        extra: list[str], json_path: str | None = None) -> Report:
    """See the module doc; prints each table as soon as it is measured. Most important first: the paper's
    batch (the first size), then the MEST vs SpFDE runs, then the other batch sizes."""
    import torch

    from spfde.training.build import resolve_device

    base = ["experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=100", "dataset.test_size=10000",
            f"dataset.train_size={train_size}"]
    report = Report(json_path)
    cfg = compose_config(["logger=none", *base, *extra])
    device = resolve_device(cfg.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.emit(f"# spfde.bench.benchmarks gpu on {card}, torch {torch.__version__}: {cfg.model.name} (depth {cfg.model.depth}, "
                f"width {cfg.model.width}), FakeData {cfg.dataset.channels}x{cfg.dataset.image_size}x"
                f"{cfg.dataset.image_size} with {cfg.dataset.num_classes} classes, precision {cfg.precision}, "
                f"overrides {extra}")
    report.record(device=card, torch=torch.__version__, batch_sizes=batch_sizes)
    first, *others = batch_sizes
    gpu_batch(report, cfg, [*base, *extra], first, steps)
    report.attempt("MEST vs SpFDE runs", spfde_wall_clock, report, [*base, *extra], first, run_size, run_epochs)
    for bs in others:
        gpu_batch(report, cfg, [*base, *extra], bs, steps)
    return report


def gpu_batch(report: Report, cfg, overrides: list[str], bs: int, steps: int) -> None:
    """One batch size: the bare model (eager, and CUDA-graphed on CUDA) against the harness's epoch loop."""
    from spfde.training.build import resolve_device

    with open_dict(cfg):
        cfg.batch_size = bs
    report.emit(f"\n## batch {bs}\n| what | img/s | vs bare graphed | vs bare eager |\n|---|---|---|---|")
    eager = report.attempt("bare model, eager", bare_model_img_s, cfg, bs, steps, False)
    anchor = None
    if resolve_device(cfg.device).type == "cuda":
        anchor = report.attempt("bare model, CUDA graph", bare_model_img_s, cfg, bs, steps, True)
    ref = anchor or eager  # the ratios' anchor: the graphed bare model where there is one
    key = f"bs{bs}"
    report.record(**{f"{key}_bare_eager_img_s": eager, f"{key}_bare_graphed_img_s": anchor,
                     f"{key}_bare_graphed_vs_eager": ratio(anchor, eager),
                     f"{key}_bare_anchor": "CUDA graph" if anchor else "eager"})
    if eager:
        report.emit(f"| bare model, eager | {eager:,.0f} | {times(eager, ref)} | 1.00x |")
    if anchor:
        report.emit(f"| bare model, CUDA graph | {anchor:,.0f} | 1.00x | {times(anchor, eager)} |")
    full = "harness MEST, all candidates frozen"
    cases = [("dense", "harness dense", ["sparsity=dense"], 0), ("mest", "harness MEST", [], 0),
             ("mest_frozen", full, [], "all"), ("mest_sieve", "harness MEST, sieve=0.2 loader", ["sieve=0.2"], 0)]
    runs = {}
    for name, label, more, frozen in cases:
        r = report.attempt(label, harness_epochs, [*overrides, f"batch_size={bs}", *more], frozen, name == "mest")
        if r is None:
            continue
        runs[name] = r
        note = f" ({r['frozen']} of {r['candidates']} blocks)" if frozen else ""
        report.emit(f"| {label}{note} | {r['img_s']:,.0f} | {times(r['img_s'], ref)} | {times(r['img_s'], eager)} |")
        report.record(**{f"{key}_{name}_img_s": r["img_s"], f"{key}_{name}_vs_bare": ratio(r["img_s"], ref)})
    unfrozen, all_frozen = runs.get("mest"), runs.get("mest_frozen")
    if unfrozen and all_frozen:
        speedup = all_frozen["img_s"] / unfrozen["img_s"]
        report.emit(f"\nall candidates frozen vs unfrozen: {speedup:.2f}x faster per image")
        report.record(**{f"{key}_frozen_speedup": speedup})
    if unfrozen:
        r = unfrozen
        per_epoch_50k = r["train_s"] * 50000 / r["samples"]
        share = r["eval_s"] / per_epoch_50k
        report.emit(f"evaluation of {r['test_size']} images: {r['eval_s']:.3f} s = {100 * share:.1f}% of a "
                    f"50k-image training epoch at this speed ({per_epoch_50k:.2f} s)")
        report.emit(f"capture time (MEST, one depth + evaluation): {r['capture_s']:.2f} s")
        report.record(**{f"{key}_eval_share": share, f"{key}_capture_s": r["capture_s"]})
    report.emit("\n| training memory (MiB) | measured peak | measured above the resting state | plan (total) | "
                "plan without weights |\n|---|---|---|---|---|")
    for r in (unfrozen, all_frozen):
        if r is None:
            continue
        measured = "n/a" if r["measured_peak"] is None else f"{r['measured_peak'] / 2**20:.1f}"
        above = "n/a" if r["measured_above_baseline"] is None else f"{r['measured_above_baseline'] / 2**20:.1f}"
        report.emit(f"| {r['frozen']} frozen | {measured} | {above} | {r['plan_total'] / 2**20:.1f} | "
                    f"{r['plan_non_weights'] / 2**20:.1f} |")
    if unfrozen and all_frozen and unfrozen["measured_above_baseline"]:
        got = 1 - all_frozen["measured_above_baseline"] / unfrozen["measured_above_baseline"]
        want = 1 - all_frozen["plan_non_weights"] / unfrozen["plan_non_weights"]
        report.emit(f"reduction 0 -> all frozen: measured {100 * got:.1f}% (above the resting state: weights, "
                    f"momentum, data), plan {100 * want:.1f}% (without weights): {100 * abs(got - want):.1f} points "
                    "apart")
        report.record(**{f"{key}_memory_reduction_measured": got, f"{key}_memory_reduction_planned": want})


def spfde_wall_clock(report: Report, overrides: list[str], bs: int, run_size: int, run_epochs: int) -> None:
    """Whole runs of MEST and SpFDE (sieve=0.2 freeze=0.2): wall-clock saving against FLOPs saving. A small
    test set, so that evaluation, which neither dimension shortens, does not dilute the saving."""
    report.emit(f"\n## MEST vs SpFDE (sieve=0.2 freeze=0.2): {run_epochs} epochs on {run_size} FakeData images, "
                "interval 1")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, more in (("MEST", []), ("SpFDE 0.2+0.2", ["sieve=0.2", "freeze=0.2"])):
            summary, _ = run_once([f"dataset.test_size={min(run_size, 1000)}", *overrides,
                                   f"dataset.train_size={run_size}", f"epochs={run_epochs}", "interval=1",
                                   f"batch_size={bs}", *more], Path(tmp) / label.split()[0])
            runs[label] = summary
    report.emit("| run | wall-clock s | of which capture s | training FLOPs | test acc |\n|---|---|---|---|---|")
    for label, s in runs.items():
        report.emit(f"| {label} | {s['train_time_s']:.1f} | {s.get('cuda_graphs_capture_s', 0.0):.1f} | "
                    f"{s['train_flops']:.4g} | {s['final_acc']:.4f} |")
    mest, spfde = runs["MEST"], runs["SpFDE 0.2+0.2"]
    flops_saving = 1 - spfde["train_flops"] / mest["train_flops"]

    def wall(s):
        return s["train_time_s"] - s.get("cuda_graphs_capture_s", 0.0)

    wall_saving = 1 - wall(spfde) / wall(mest)
    report.emit(f"FLOPs saving {100 * flops_saving:.1f}%, wall-clock saving (capture excluded) "
                f"{100 * wall_saving:.1f}% = {wall_saving / flops_saving:.2f}x of the FLOPs saving; with capture "
                f"{100 * (1 - spfde['train_time_s'] / mest['train_time_s']):.1f}%")
    report.record(spfde_flops_saving=flops_saving, spfde_wall_saving=wall_saving,
                  spfde_wall_vs_flops=wall_saving / flops_saving,
                  spfde_capture_s=spfde.get("cuda_graphs_capture_s"), mest_capture_s=mest.get("cuda_graphs_capture_s"),
                  spfde_cuda_graphs=spfde.get("cuda_graphs"))


def write_image(job: tuple[Path, int, int]) -> None:
    """One ~400x350 JPEG of smooth random content (upsampled noise plus fine noise, so files have realistic
    sizes), from its own seed: the folder is the same whatever the number of processes writing it."""
    import numpy as np
    from PIL import Image

    path, seed, index = job
    rng = np.random.default_rng([seed, index])
    h, w = 350 + int(rng.integers(-30, 31)), 400 + int(rng.integers(-40, 41))
    coarse = Image.fromarray((rng.random((12, 14, 3)) * 255).astype(np.uint8))
    image = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
    image = np.clip(image + rng.standard_normal((h, w, 3), dtype=np.float32) * 12, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)


def generate_folder(root: Path, n: int, seed: int = 0) -> Path:
    """An ImageNet-like JPEG folder: n train and n // 10 val images (at least one per class) in 10 class
    folders, written by one process per CPU core (JPEG encoding is the slow part; forked, so the workers
    import nothing: they use only numpy and PIL). Reused when complete."""
    import multiprocessing
    import os

    if (root / ".complete").exists():
        return root
    jobs = []
    for split, count in (("train", n), ("val", max(10, n // 10))):
        for i in range(count):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:06d}.jpg", seed, len(jobs)))
    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(write_image, jobs, chunksize=16)
    (root / ".complete").touch()
    return root


def data_bench(generate: int, batch_size: int, steps: int, extra: list[str], json_path: str | None = None) -> Report:
    """See the module doc; prints each line as soon as it is measured."""
    import time

    import torch

    from spfde.data.folders import dali_installed, planned_image_size
    from spfde.training.build import resolve_device

    given = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in extra if "=" in o}
    if given.get("dataset.root"):
        root = Path(given["dataset.root"])
    else:
        start = time.perf_counter()
        root = generate_folder(Path("outputs/bench-data") / f"jpeg-{generate}", generate)
        print(f"(folder {root}: ready in {time.perf_counter() - start:.1f} s)", flush=True)
    base = ["model=resnet50", "dataset=imagefolder", f"dataset.root={root.absolute()}", "epochs=2",
            f"batch_size={batch_size}", "dataset.in_memory=false",
            f"dataset.num_classes={len([p for p in (root / 'train').iterdir() if p.is_dir()])}"]
    base = [o for o in base if o.split("=", 1)[0] not in given] + extra
    cfg = compose_config(["logger=none", *base])
    with open_dict(cfg):
        cfg.dataset.image_size = planned_image_size(cfg.dataset)
    base.append(f"dataset.image_size={cfg.dataset.image_size}")
    validate(cfg)
    device = resolve_device(cfg.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = Report(json_path)
    report.emit(f"# spfde.bench.benchmarks data on {card}, torch {torch.__version__}: {cfg.model.name}, batch {batch_size}, "
                f"{cfg.dataset.image_size}px, {cfg.dataset.workers} workers, folder {root}, overrides {extra}")
    report.record(device=card, torch=torch.__version__, model=cfg.model.name, batch_size=batch_size,
                  workers=cfg.dataset.workers)
    report.emit("| what | img/s | vs bare model |\n|---|---|---|")
    bare = report.attempt("bare model, random batch on the device", bare_model_img_s, cfg, batch_size, steps, False)
    if bare:
        report.emit(f"| bare model, random batch on the device | {bare:,.0f} | 1.00x |")
        report.record(bare_img_s=bare)
    loaders = ["pil"] + (["gpu"] + (["dali"] if dali_installed() else []) if device.type == "cuda" else [])
    runs = {}
    for loader in loaders:
        r = report.attempt(f"harness, dataset.loader={loader}", harness_epochs, [*base, f"dataset.loader={loader}"])
        if r is None:
            continue
        runs[loader] = r
        report.emit(f"| harness, dataset.loader={loader} ({r['samples']} images, epoch 2) | {r['img_s']:,.0f} | "
                    f"{times(r['img_s'], bare)} |")
        report.record(**{f"loader_{loader}_img_s": r["img_s"], f"loader_{loader}_vs_bare": ratio(r["img_s"], bare)})
    if not runs:
        return report
    best = max(runs, key=lambda k: runs[k]["img_s"])
    frozen = report.attempt(f"dataset.loader={best} with all candidate blocks frozen", harness_epochs,
                            [*base, f"dataset.loader={best}"], "all")
    if frozen:
        unfrozen_s, frozen_s = runs[best]["train_s"], frozen["train_s"]
        speedup = unfrozen_s / frozen_s
        report.emit(f"\nfastest loader: {best}; epoch time with 0 frozen blocks {unfrozen_s:.2f} s, with all "
                    f"{frozen['candidates']} candidate blocks frozen {frozen_s:.2f} s (speed-up {speedup:.2f}x)")
        report.record(fastest_loader=best, frozen_epoch_speedup=speedup)
    return report


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
    p = sub.add_parser("plan", help="spfde.planning.plan's calibrated wall-clock estimate vs real CPU runs, as ratios")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for all three, e.g. model.depth=8")
    p = sub.add_parser("gpu", help="harness vs bare model img/s, freezing speed-up and memory, SpFDE wall-clock")
    # defaults sized for a short GPU window (tests/gpu/session.sh: ~2.5 min on an H200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    p.add_argument("--train-size", type=int, default=12800, help="FakeData images per timed epoch")
    p.add_argument("--steps", type=int, default=100, help="timed steps of the bare model")
    p.add_argument("--run-size", type=int, default=2560, help="FakeData images of the MEST vs SpFDE runs")
    p.add_argument("--run-epochs", type=int, default=12, help="12: the fewest at which freeze=0.2 is reachable")
    p.add_argument("--json", help="also write the measured values and ratios to this JSON file, as they come")
    p.add_argument("overrides", nargs="*", help="e.g. model.width=2 precision=bf16 cuda_graphs=off")
    p = sub.add_parser("data", help="folder input pipeline: bare model vs harness img/s per loader, and freezing")
    # 3840 = 15 batches of 256: one batch for each of 15 workers per epoch (~1 min on an H200)
    p.add_argument("--generate", type=int, default=3840, help="train images of the generated JPEG folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps of the bare model")
    p.add_argument("--json", help="also write the measured values and ratios to this JSON file, as they come")
    p.add_argument("overrides", nargs="*", help="e.g. dataset.root=/path dataset.workers=15 precision=bf16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.bench == "methods":
        print(f"# sparse methods on digits (quickstart model), sparsity {args.ratio}, {args.epochs} epochs")
        print(compare_methods(args.methods, args.epochs, args.seeds, args.ratio, args.overrides))
    elif args.bench == "freeze-step":
        print(freeze_step(args.steps, args.overrides))
    elif args.bench == "memory":
        print(fig4_memory())
    elif args.bench in ("table2-flops", "table3-flops"):
        print(paper_flops(int(args.bench[5])))
    elif args.bench == "ablation-freeze":
        print(ablation_freeze(args.seeds, args.epochs, args.overrides))
    elif args.bench == "ablation-sieve":
        print(ablation_sieve(args.seeds, args.epochs, args.overrides))
    elif args.bench == "plan":
        print(plan_estimates(args.overrides))
    elif args.bench in ("gpu", "data"):
        if args.bench == "gpu":
            report = gpu(args.batch_sizes, args.train_size, args.steps, args.run_size, args.run_epochs,
                         args.overrides, args.json)
        else:
            report = data_bench(args.generate, args.batch_size, args.steps, args.overrides, args.json)
        if report.failures:  # the others were measured; the exit status still says that something failed
            sys.exit(1)


if __name__ == "__main__":
    main()
