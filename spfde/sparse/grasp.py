"""GraSP — Wang et al., "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.

At initialisation, score each weight by S = -w ⊙ Hg (H the Hessian, g the gradient of the loss with
temperature-scaled logits, computed on `samples_per_class` × classes training samples) and remove the
weights with the highest scores, i.e. keep the lowest ones — globally as in the paper, or per layer.
The mask then stays fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spfde.sparse.snip import SaliencyAtInit, next_batches


class GraSP(SaliencyAtInit):
    name = "grasp"
    label = "GraSP"
    init_passes = 3.0  # gradient pass + Hessian-gradient pass (about two more): our estimate
    count_key = "samples_per_class"

    def planned_init_samples(self, batch_size: int, num_classes: int) -> int:
        return max(1, math.ceil(self.cfg.grasp.samples_per_class * num_classes / batch_size)) * batch_size

    def initialize(self, batches) -> None:
        opts = self.cfg.grasp
        weights = {n: m.weight for n, m in self.masks.layers.items()}
        params = list(weights.values())
        first = next(batches)
        num_classes = self.model.blocks[-1].fc.out_features
        count = max(1, math.ceil(opts.samples_per_class * num_classes / len(first[1])))
        data = [(first[0], first[1])] + next_batches(batches, count - 1)
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
