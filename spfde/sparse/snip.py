"""SNIP — Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.

At initialisation, the connection sensitivity |g ⊙ w| is computed from mini-batches of training data
with the dense network, and the connections with the highest sensitivity are kept — globally across
layers as in the paper (`scope: global`), or per layer at the distribution's densities
(`scope: layer`). The mask then stays fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spfde.sparse.base import SparseMethod, require


def next_batches(batches, count: int) -> list:
    out = []
    for _ in range(count):
        x, y, _idx = next(batches)
        out.append((x, y))
    return out


class SaliencyAtInit(SparseMethod):
    """A mask chosen once at initialisation from saliency scores of `count_key` batches/samples, kept
    per layer or globally (`scope`); shared by SNIP and GraSP."""

    uses_gradients = True
    count_key = "batches"

    @classmethod
    def check(cls, cfg) -> None:
        o = cls.options_of(cfg.sparsity)
        require(o.scope in ("global", "layer"), f"sparsity.{cls.name}.scope must be global or layer, got {o.scope!r}")
        count = o[cls.count_key]
        require(count >= 1, f"sparsity.{cls.name}.{cls.count_key} must be >= 1, got {count}")

    @classmethod
    def planning_note(cls, cfg) -> str:
        if cls.options_of(cfg.sparsity).scope != "global":
            return ""
        return (f"{cls.name} (global scope) picks per-layer densities at run time; estimated here with the "
                f"'{cfg.sparsity.distribution}' distribution")


class SNIP(SaliencyAtInit):
    name = "snip"
    label = "SNIP"
    init_passes = 1.0  # one dense forward + backward per sample

    def planned_init_samples(self, batch_size: int, num_classes: int) -> int:
        return self.cfg.snip.batches * batch_size

    def initialize(self, batches) -> None:
        opts = self.cfg.snip
        weights = {n: m.weight for n, m in self.masks.layers.items()}
        grads = {n: torch.zeros_like(w) for n, w in weights.items()}
        self.model.train()
        for x, y in next_batches(batches, opts.batches):
            self.init_samples += len(y)
            loss = F.cross_entropy(self.model(x), y)
            for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
                grads[n] += g
        self.keep_highest({n: (grads[n] * w.detach()).abs() for n, w in weights.items()}, opts.scope)
