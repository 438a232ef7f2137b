"""GraSP — Wang et al., "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.

At initialisation, score each weight by S = -w ⊙ Hg (H the Hessian, g the gradient of the loss with
temperature-scaled logits) and remove the weights with the highest scores, i.e. keep the lowest ones —
globally as in the paper, or per layer. The mask then stays fixed. As in GraSP's code (pruner/GraSP.py):
each of `iterations` fetches takes exactly `samples_per_class` samples of every class (GraSP_fetch_data),
ordered by class and scored in two halves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spfde.sparse.base import require
from spfde.sparse.snip import SaliencyAtInit


def fetch_per_class(batches, num_classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly `per_class` training samples of every class (fewer where the data runs out), drawn from the
    loader's batches in order and returned class by class, as GraSP's code fetches them (GraSP_fetch_data)."""
    xs: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    full = 0
    for x, y, _idx in batches:
        for xi, yi in zip(x, y.tolist()):
            if len(xs[yi]) < per_class:
                xs[yi].append(xi)
                full += len(xs[yi]) == per_class
        if full == num_classes:
            break
    x = torch.stack([xi for group in xs for xi in group])
    y = torch.tensor([c for c, group in enumerate(xs) for _ in group], device=x.device)
    return x, y


class GraSP(SaliencyAtInit):
    name = "grasp"
    label = "GraSP"
    init_passes = 3.0  # gradient pass + Hessian-gradient pass (about two more): our estimate
    count_key = "samples_per_class"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        iterations = cfg.sparsity.grasp.iterations
        require(iterations >= 1, f"sparsity.grasp.iterations must be >= 1, got {iterations}")

    def planned_init_samples(self, batch_size: int, num_classes: int) -> int:
        return self.cfg.grasp.samples_per_class * num_classes * self.cfg.grasp.iterations

    def initialize(self, batches) -> None:
        opts = self.cfg.grasp
        weights = {n: m.weight for n, m in self.masks.layers.items()}
        params = list(weights.values())
        num_classes = self.model.blocks[-1].fc.out_features
        data = []  # GraSP's code: each fetch, in class order, is scored in two halves
        for _ in range(opts.iterations):
            x, y = fetch_per_class(batches, num_classes, opts.samples_per_class)
            half = len(y) // 2
            data += [(x[:half], y[:half]), (x[half:], y[half:])]
        data = [(x, y) for x, y in data if len(y)]
        self.init_samples = sum(len(y) for _x, y in data)
        self.model.train()

        def loss_of(x, y):
            return F.cross_entropy(self.model(x) / opts.temperature, y)

        g = [torch.zeros_like(p) for p in params]
        for x, y in data:  # the gradient g, without a graph
            for acc, gi in zip(g, torch.autograd.grad(loss_of(x, y), params)):
                acc += gi
        hg = [torch.zeros_like(p) for p in params]
        for x, y in data:  # Hessian-gradient product: d/dw (grad(loss) · g)
            grads = torch.autograd.grad(loss_of(x, y), params, create_graph=True)
            z = sum((gi * gd).sum() for gi, gd in zip(grads, g))
            for acc, h in zip(hg, torch.autograd.grad(z, params)):
                acc += h
        # keep the lowest -w⊙Hg, i.e. the highest w⊙Hg
        self.keep_highest({n: (w.detach() * h) for (n, w), h in zip(weights.items(), hg)}, opts.scope)
