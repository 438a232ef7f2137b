"""DeepR — Bellec et al., "Deep Rewiring: Training very sparse deep networks", ICLR 2018.

Every connection has a fixed random sign s; an active connection's weight is w = s·θ with θ > 0.
Each step the active θ follow the gradient plus an L1 pull towards zero and Gaussian noise (added to
the gradient here, so they pass through our optimizer); a connection whose weight crosses zero (its
sign no longer matches s) is removed, and as many dormant connections of the same layer are
activated at random with θ = ε (DeepR's code: 1e-12), so each layer keeps its number of connections.
"""

from __future__ import annotations

import torch

from spfde.sparse.base import SparseMethod, require
from spfde.sparse.masks import top_k_mask

EPSILON = 1e-12  # DeepR's reconnection value of θ


class DeepR(SparseMethod):
    name = "deepr"
    label = "DeepR"

    @classmethod
    def check(cls, cfg) -> None:
        o = cfg.sparsity.deepr
        require(o.l1 >= 0 and o.noise >= 0, "sparsity.deepr.l1 and sparsity.deepr.noise must be >= 0")

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        self.l1, self.noise = cfg.deepr.l1, cfg.deepr.noise
        self.signs = {n: torch.where(torch.rand(m.weight.shape, generator=generator) < 0.5, -1.0, 1.0)
                      .to(m.weight.device) for n, m in self.masks.layers.items()}

    def initialize(self, batches) -> None:
        super().initialize(batches)
        with torch.no_grad():  # active weights take their connection's sign: w = s·|w|
            for n, m in self.masks.layers.items():
                m.weight.copy_(self.signs[n] * m.weight.abs() * self.masks.masks[n])

    def plain_step(self, step: int) -> bool:
        return False  # every step adds noise and may rewire

    def after_backward(self, step: int) -> None:
        with torch.no_grad():
            for n in self.updatable():
                grad = self.masks.layers[n].weight.grad
                if grad is None:
                    continue
                grad.add_(self.l1 * self.signs[n])  # d(l1·θ)/dw = l1·s
                if self.noise > 0:
                    grad.add_(torch.randn(grad.shape, generator=self.generator).to(grad.device), alpha=self.noise)
        self.masks.mask_grads()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        changed = False
        for n in self.updatable():
            weight, mask = self.masks.layers[n].weight, self.masks.masks[n]
            flipped = mask & (weight * self.signs[n] <= 0)  # θ <= 0: the connection is gone
            k = int(flipped.sum())
            if k == 0:
                continue
            dormant = ~mask
            scores = self.random_scores(n).masked_fill(~dormant, float("-inf"))
            new = (mask & ~flipped) | top_k_mask(scores, k)
            grown = new & ~mask  # before set_mask, which updates `mask` in place
            self.record(n, *self.masks.set_mask(n, new, self.optimizer))
            weight[grown] = EPSILON * self.signs[n][grown]
            changed = True
        self.masks.apply()
        if changed:
            self.end_update()

    def extra_state(self) -> dict:
        return {"signs": {n: s.cpu() for n, s in self.signs.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.signs = {n: s.to(self.signs[n].device) for n, s in state["signs"].items()}
