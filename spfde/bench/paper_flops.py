"""`python -m spfde.bench table2-flops` and `table3-flops`: the planned training FLOPs (no data, no training) of
every row of the paper's Table 2 (ResNet-32 2x on CIFAR-100, 160 epochs, at 90/95/98% sparsity) or Table 3
(ResNet-50 on ImageNet at 80%), each row from conf/sweep/row/. Prints two tables, one with the MEST-based rows masked
as MEST's code does (the default) and one as the paper's Sec. 5 says: per sparsity, the paper's number next to the
planned one under MEST's README soft bounds (our default) and under its EM&S script's bounds."""

from __future__ import annotations

from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.planning.plan import build_plan

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
    """Planned training FLOPs of a table's rows (conf/sweep/row/*) at its sparsities, next to the paper's, under
    both MEST bounds; `masking`: overrides of the MEST-based rows."""
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
