"""SNFS (sparse momentum) — Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training
without Losing Performance", 2019.

An exponentially smoothed *dense* gradient (momentum, β = the optimizer's momentum) is kept for every
weight of the masked layers. At the end of every epoch, as sparse_learning's code does (sparselearning/
core.py: adjust_prune_rate, truncate_weights, calc_growth_redistribution): each layer drops the
fraction p of its active weights with the smallest magnitude (p decays with a cosine to 0 over training;
a nearly dense layer — under 20% zeros — whose momentum share is above an equal share drops at most its
own sparsity); the dropped total is redistributed across layers in proportion to each layer's mean
momentum magnitude over its active weights, each layer taking at most 0.99 of its free positions, what a
full layer cannot take spread equally over all layers; each layer regrows its share at the inactive
positions with the largest momentum magnitude (zero-initialised). The total number of weights stays
exact (sparse_learning floors the shares and evens the total out over later updates).
"""

from __future__ import annotations

import math

import torch

from spfde.sparse.base import SparseMethod, require

GROWTH_CAP = 0.99  # sparse_learning: a layer regrows at most 99% of its free positions
NEARLY_DENSE = 0.2  # sparse_learning: below this sparsity a layer's prune rate may be lowered


def capped_growth(total: int, shares: list[float], free: list[int]) -> list[int]:
    """sparse_learning's growth redistribution: layer i wants shares[i] (summing to 1) of `total`, at most
    GROWTH_CAP of its `free` positions; what capped layers cannot take is spread equally over all layers (the
    capped ones capped again), until nothing is left. Then whole numbers summing to `total` (at most
    sum(free)): the largest remainders first, and only if the caps cannot hold it all, past them."""
    caps = [math.floor(GROWTH_CAP * f) for f in free]
    want = [s * total for s in shares]
    for _ in range(1000):  # sparse_learning's limit
        residual = sum(max(w - c, 0.0) for w, c in zip(want, caps))
        want = [min(w, c) for w, c in zip(want, caps)]
        if residual <= 1e-9 or all(w >= c for w, c in zip(want, caps)):
            break
        want = [w + residual / len(want) for w in want]
    counts = [min(math.floor(w), c) for w, c in zip(want, caps)]
    by_remainder = sorted(range(len(want)), key=lambda i: want[i] - math.floor(want[i]), reverse=True)
    left = min(total, sum(free)) - sum(counts)
    for limit in (caps, free):
        while left > 0 and any(counts[i] < limit[i] for i in by_remainder):
            for i in by_remainder:
                if left > 0 and counts[i] < limit[i]:
                    counts[i] += 1
                    left -= 1
    return counts


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
        active = {n: self.masks.active(n) for n in names}
        contribution = [float(self.momentum[n][self.masks.masks[n]].abs().mean()) if active[n] else 0.0
                        for n in names]
        total = sum(contribution)
        shares = [c / total for c in contribution] if total > 0 else [1 / len(names)] * len(names)
        kept, drops = {}, []
        for n, share in zip(names, shares):
            numel = self.masks.masks[n].numel()
            sparsity = 1 - active[n] / numel
            rate = p
            if sparsity < NEARLY_DENSE and share > 1 / len(names):  # nearly dense and still growing
                rate = min(sparsity, p)
            drops.append(math.ceil(rate * active[n]))  # sparse_learning rounds the removal up
            kept[n] = active[n] - drops[-1]
        free = [self.masks.masks[n].numel() - kept[n] for n in names]
        grow = capped_growth(sum(drops), shares, free)
        for n, g in zip(names, grow):
            weight = self.masks.layers[n].weight.detach()
            self.prune_and_grow(n, keep=kept[n], final=kept[n] + g, prune_score=weight.abs(),
                                grow_score=self.momentum[n].abs())
        self.end_update()

    def extra_state(self) -> dict:
        return {"momentum": {n: m.cpu() for n, m in self.momentum.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.momentum = {n: m.to(self.momentum[n].device) for n, m in state["momentum"].items()}
