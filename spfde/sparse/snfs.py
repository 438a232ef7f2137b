"""SNFS (sparse momentum) — Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training
without Losing Performance", 2019.

An exponentially smoothed *dense* gradient (momentum, β = the optimizer's momentum) is kept for every
weight of the masked layers. At the end of every epoch: each layer drops the fraction p of its active
weights with the smallest magnitude (p decays with a cosine to 0 over training); the dropped total is
redistributed across layers in proportion to each layer's mean momentum magnitude over its active
weights; each layer regrows its share at the inactive positions with the largest momentum magnitude
(zero-initialised). The total number of weights stays exact.
"""

from __future__ import annotations

import math

import torch

from spfde.sparse.base import SparseMethod, proportional_split, require


class SNFS(SparseMethod):
    name = "snfs"
    label = "SNFS"
    uses_gradients = True

    @classmethod
    def check(cls, cfg) -> None:
        rate = cfg.sparsity.snfs.prune_rate
        require(0 < rate < 1, f"sparsity.snfs.prune_rate must be in (0, 1), got {rate}")

    @classmethod
    def planning_note(cls, cfg) -> str:
        return (f"{cls.name} moves weights between layers at run time; estimated here with the initial "
                f"'{cfg.sparsity.distribution}' distribution")

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        self.prune_rate = cfg.snfs.prune_rate
        self.beta = optimizer.param_groups[0].get("momentum", 0.9) or 0.9
        self.momentum = {n: torch.zeros_like(m.weight) for n, m in self.masks.layers.items()}

    def plain_step(self, step: int) -> bool:
        return False  # every step reads the dense gradient

    def dense_grad_step(self, step: int) -> bool:
        return True  # the momentum of every weight needs the dense gradient at every step

    def after_backward(self, step: int) -> None:
        with torch.no_grad():  # momentum of the dense gradient, before the gradient is masked
            for n in self.updatable():
                grad = self.masks.layers[n].weight.grad
                if grad is not None:
                    self.momentum[n].mul_(self.beta).add_(grad)
        self.masks.mask_grads()

    def rate(self, epoch: int) -> float:
        return self.prune_rate / 2 * (1 + math.cos(math.pi * epoch / self.schedule.epochs))

    def start_epoch(self, epoch: int) -> None:
        if epoch == 0:  # updates happen at the end of each epoch, i.e. before the next one
            return
        names = self.updatable()
        p = self.rate(epoch)
        kept, drops, contribution = {}, [], []
        for n in names:
            mask, weight = self.masks.masks[n], self.masks.layers[n].weight.detach()
            active = int(mask.sum())
            contribution.append(float(self.momentum[n][mask].abs().mean()) if active else 0.0)
            drops.append(int(round(p * active)))
            kept[n] = active - drops[-1]
        capacity = [self.masks.masks[n].numel() - kept[n] for n in names]
        grow = proportional_split(sum(drops), contribution, capacity)
        for n, g in zip(names, grow):
            weight = self.masks.layers[n].weight.detach()
            self.prune_and_grow(n, keep=kept[n], final=kept[n] + g, prune_score=weight.abs(),
                                grow_score=self.momentum[n].abs())
        self.end_update()

    def extra_state(self) -> dict:
        return {"momentum": {n: m.cpu() for n, m in self.momentum.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.momentum = {n: m.to(self.momentum[n].device) for n, m in state["momentum"].items()}
