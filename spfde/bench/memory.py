"""`python -m spfde.bench memory`: the paper's Fig. 4 check, planned (no data, no training): ResNet-32 (2x) on
CIFAR-100, batch 64, fp32, MEST with freeze x = 0.2 at 90/95/98% sparsity. Prints one table per memory convention
(the paper's, cost.memory=paper, the one Fig. 4 is checked against; and what autograd keeps for backward,
cost.memory=autograd): per sparsity the plain-DST minimum, SpFDE's average and minimum training memory in MiB and
their reductions below that minimum, with the paper's reductions as the last row."""

from __future__ import annotations

from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.planning.plan import build_plan


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
