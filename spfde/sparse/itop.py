"""ITOP — Liu et al., "Do We Actually Need Dense Over-Parameterization? In-Time Over-Parameterization
in Sparse Training", ICML 2021.

RigL (`itop.base: rigl`) or SET (`itop.base: set`) run with ITOP's exploration setting — a longer
update interval and a smaller batch, so that each explored weight gets reliably trained — while the
ITOP rate is tracked: the fraction of all weights of the masked layers that have been active at
some point of training (the union of every mask seen). It is logged every epoch.
"""

from __future__ import annotations

from spfde.sparse.base import require
from spfde.sparse.rigl import RigL
from spfde.sparse.set import SET

BASES = {"rigl": RigL, "set": SET}


class ITOP(RigL):
    name = "itop"
    label = "RigL-ITOP"

    @classmethod
    def check(cls, cfg) -> None:
        base = cfg.sparsity.itop.base
        require(base in BASES, f"sparsity.itop.base must be {' or '.join(BASES)}, got {base!r}")
        super().check(cfg)

    @classmethod
    def grow_rule(cls, cfg) -> str:
        return BASES[cfg.itop.base].grow  # the base method's grow rule, with ITOP's own options

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        self.ever_active = {n: m.clone() for n, m in self.masks.masks.items()}

    def track(self) -> None:
        for n, mask in self.masks.masks.items():
            self.ever_active[n] |= mask

    def initialize(self, batches) -> None:
        super().initialize(batches)
        self.ever_active = {n: m.clone() for n, m in self.masks.masks.items()}

    def end_update(self) -> None:
        super().end_update()
        self.track()

    def itop_rate(self) -> float:
        total = sum(m.numel() for m in self.ever_active.values())
        return sum(int(m.sum()) for m in self.ever_active.values()) / total if total else 0.0

    def epoch_stats(self) -> dict:
        return {**super().epoch_stats(), "sparsity/itop_rate": self.itop_rate()}

    def extra_state(self) -> dict:
        return {"ever_active": {n: m.cpu() for n, m in self.ever_active.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.ever_active = {n: m.to(self.masks.masks[n].device) for n, m in state["ever_active"].items()}
