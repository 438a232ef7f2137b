"""`python -m spfde.plan [same overrides as spfde.run]`: what a run will cost, without training it.

Prints the model's per-block FLOPs, the planned schedules, the expected training FLOPs (total, against
dense training and against the same run without freezing and sieving), inference FLOPs and training
memory (minimum and average over the run, and the plain-DST minimum). `plan.format=json` prints one
JSON object instead. Needs no data: sizes come from the dataset config; the model lives on the meta
device, so even ResNet-50 plans in seconds.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from spfde.config import ConfigError, compose_config, validate
from spfde.cost import CostModel, MemoryModel
from spfde.models import build_model
from spfde.sparse import SparsityError, build_sparsity


def epoch_batches(train_size: int, batch_size: int) -> list[int]:
    steps = math.ceil(train_size / batch_size)
    return [batch_size] * (steps - 1) + [train_size - batch_size * (steps - 1)]


def build_plan(cfg) -> dict:
    d = cfg.dataset
    input_shape = (d.channels, d.image_size, d.image_size)
    with torch.device("meta"):
        model = build_model(cfg.model, d.num_classes, d.channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    batches = epoch_batches(d.train_size, cfg.batch_size)
    method = build_sparsity(cfg, model, optimizer, steps_per_epoch=len(batches))
    cost = CostModel(model, input_shape)
    memory = MemoryModel(model, input_shape, cfg.cost.memory_batch)

    rounds = [None]
    notes = []
    if cfg.sparsity.name == "lth":
        from spfde.sparse.lth import round_sparsities

        rounds = round_sparsities(cfg.sparsity.ratio, cfg.sparsity.lth.prune_rate)
        notes.append(f"LTH: {len(rounds)} rounds of {cfg.epochs} epochs; per-layer densities of global pruning "
                     f"are estimated with the '{cfg.sparsity.distribution}' distribution")
    if cfg.sparsity.name in ("snip", "grasp") and cfg.sparsity[cfg.sparsity.name].scope == "global":
        notes.append(f"{cfg.sparsity.name} (global scope) picks per-layer densities at run time; estimated here "
                     f"with the '{cfg.sparsity.distribution}' distribution")
    if cfg.sparsity.name in ("dsr", "snfs"):
        notes.append(f"{cfg.sparsity.name} moves weights between layers at run time; estimated here with the "
                     f"initial '{cfg.sparsity.distribution}' distribution")

    dense_step = cost.step({}, 0, False)
    totals = {"train": 0.0, "no_freeze_sieve": 0.0, "dense": 0.0}
    memories, epochs_table = [], []
    dense_grad_possible = cfg.sparsity.name in ("rigl", "itop", "snfs")
    for round_sparsity in rounds:
        for epoch in range(cfg.epochs):
            if round_sparsity is None:
                densities = method.planned_densities(epoch)
            else:
                counts = method.masks.target_counts(round_sparsity)
                densities = {n: c / method.masks.masks[n].numel() for n, c in counts.items()}
            frozen = 0
            per_sample = cost.step(densities, frozen, False)
            flops = d.train_size * per_sample
            if dense_grad_possible:
                extra = cost.step(densities, frozen, True) - per_sample
                for i, n in enumerate(batches):
                    if method.dense_grad_step(epoch * len(batches) + i):
                        flops += n * extra
            totals["train"] += flops
            totals["no_freeze_sieve"] += flops
            totals["dense"] += d.train_size * dense_step
            mem = memory.breakdown(densities, frozen)
            memories.append(mem["total"])
            epochs_table.append({"epoch": epoch, "flops": flops, "frozen_blocks": frozen,
                                 "sparsity": 1 - sum(densities[n] * method.masks.masks[n].numel() for n in densities)
                                 / max(1, sum(method.masks.masks[n].numel() for n in densities)),
                                 "memory": mem["total"]})
    init = method.init_passes * method.planned_init_samples(cfg.batch_size, d.num_classes) * dense_step
    totals["train"] += init
    totals["no_freeze_sieve"] += init
    final = densities
    targets = {n: c / method.masks.masks[n].numel() for n, c in method.targets.items()}
    blocks = cost.block_forward()
    return {
        "model": cfg.model.name, "dataset": d.name, "sparsity": cfg.sparsity.name, "ratio": cfg.sparsity.ratio,
        "epochs": cfg.epochs * len(rounds), "steps_per_epoch": len(batches), "batch_size": cfg.batch_size,
        "train_size": d.train_size,
        "train_flops": totals["train"], "train_flops_no_freeze_sieve": totals["no_freeze_sieve"],
        "dense_train_flops": totals["dense"], "init_flops": init,
        "inference_flops": cost.inference(final), "dense_inference_flops": cost.dense_forward,
        "memory_batch": cfg.cost.memory_batch,
        "memory_min_bytes": min(memories), "memory_avg_bytes": sum(memories) / len(memories),
        "memory_dst_min_bytes": memory.breakdown(targets, 0)["total"],
        "memory_breakdown_min": memory.breakdown(final, 0),
        "blocks": [{"block": name, "forward_flops": f, "share": f / cost.dense_forward}
                   for name, f in zip(cost.block_names, blocks)],
        "schedule": epochs_table, "notes": notes,
    }


def fmt_flops(x: float) -> str:
    return f"{x:.4g}"


def fmt_bytes(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def render(plan: dict) -> str:
    lines = [f"SpFDE plan: {plan['model']} on {plan['dataset']} ({plan['train_size']} training images) — "
             f"{plan['sparsity']} at sparsity {plan['ratio']:g}, {plan['epochs']} epochs x {plan['steps_per_epoch']} "
             f"steps of {plan['batch_size']}", "", "Per-block forward FLOPs (dense, per sample):",
             f"  {'block':<22}{'MFLOPs':>10}{'share':>9}"]
    for b in plan["blocks"]:
        lines.append(f"  {b['block']:<22}{b['forward_flops'] / 1e6:>10.2f}{100 * b['share']:>8.1f}%")
    lines += ["", "Training FLOPs:",
              f"  planned                         {fmt_flops(plan['train_flops'])}",
              f"  dense training                  {fmt_flops(plan['dense_train_flops'])}"
              f"   (planned = {100 * plan['train_flops'] / plan['dense_train_flops']:.1f}% of dense)",
              f"  without freezing and sieving    {fmt_flops(plan['train_flops_no_freeze_sieve'])}"]
    if plan["init_flops"]:
        lines.append(f"  of which mask selection at init {fmt_flops(plan['init_flops'])}")
    lines += [f"Inference FLOPs per sample:       {fmt_flops(plan['inference_flops'])} "
              f"(dense {fmt_flops(plan['dense_inference_flops'])})", "",
              f"Training memory (batch {plan['memory_batch']}, fp32):",
              f"  minimum {fmt_bytes(plan['memory_min_bytes'])}, average {fmt_bytes(plan['memory_avg_bytes'])}; "
              f"plain DST minimum {fmt_bytes(plan['memory_dst_min_bytes'])}",
              "  at the minimum: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in plan["memory_breakdown_min"].items()
                                                if k != "total")]
    changes = []
    previous = None
    for e in plan["schedule"]:
        key = (round(e["sparsity"], 4), e["frozen_blocks"])
        if key != previous:
            changes.append(f"  from epoch {e['epoch']:>4}: sparsity {e['sparsity']:.4f}, "
                           f"frozen blocks {e['frozen_blocks']}")
            previous = key
    lines += ["", "Schedule (changes only):", *changes]
    lines += [f"Note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = compose_config(args)
        validate(cfg)
        plan = build_plan(cfg)
    except (ConfigError, SparsityError) as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.plan.format == "json":
        print(json.dumps({k: v for k, v in plan.items() if k != "schedule"} | {"schedule": plan["schedule"]}))
    else:
        print(render(plan))


if __name__ == "__main__":
    main()
