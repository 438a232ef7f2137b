"""RigL — Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020.

Every ΔT steps until `end_fraction` of the run's optimizer steps: in each layer drop the fraction f(t)
of active weights with the smallest magnitude and grow as many where the *dense* gradient is largest
(new weights start at zero; a dropped weight grown back keeps its value, RigL's reinit_when_same=False).
f(t) = f_end + (α - f_end)/2 · (1 + cos(π t / T_end)) (cosine decay; RigL: f_end = 0, ITOP: 0.005). The
dense gradient is read after backward and before gradients are masked, on update steps only. As in the
sparselearning code base, the update follows that step's optimizer step (RigL's paper skips the SGD
step there).
"""

from __future__ import annotations

import math

import torch

from spfde.sparse.base import SparseMethod, require


class RigL(SparseMethod):
    """Drop by magnitude, grow by a score: `grow = "gradient"` (RigL: the dense gradient's magnitude) or
    `"random"` (SET). Subclasses change the options they read and the grow rule, nothing else."""

    name = "rigl"
    label = "RigL"
    uses_gradients = True
    grow = "gradient"  # gradient | random

    @classmethod
    def check(cls, cfg) -> None:
        o, where = cls.options_of(cfg.sparsity), f"sparsity.{cls.name}"
        require(o.delta_t >= 0, f"{where}.delta_t must be >= 0 (0 = once per epoch), got {o.delta_t}")
        require(0 < o.drop_fraction < 1, f"{where}.drop_fraction must be in (0, 1), got {o.drop_fraction}")
        require(o.decay in ("cosine", "constant"), f"{where}.decay must be cosine or constant, got {o.decay!r}")
        require(0 <= o.final_drop_fraction <= o.drop_fraction,
                f"{where}.final_drop_fraction must be in [0, drop_fraction={o.drop_fraction}], "
                f"got {o.final_drop_fraction}")
        require(0 < o.end_fraction <= 1, f"{where}.end_fraction must be in (0, 1], got {o.end_fraction}")

    @classmethod
    def grow_rule(cls, cfg) -> str:
        return cls.grow

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        self.grow = self.grow_rule(cfg)
        self.uses_gradients = self.grow == "gradient"
        opts = self.options_of(cfg)
        self.delta_t = opts.delta_t  # 0 means once per epoch (at each epoch's last step)
        self.epoch_ends = schedule.epoch_ends
        self.drop_fraction, self.final_fraction, self.decay = opts.drop_fraction, opts.final_drop_fraction, opts.decay
        self.end_step = int(opts.end_fraction * schedule.total_steps)
        self.dense_grads: dict[str, torch.Tensor] = {}

    def is_update(self, step: int) -> bool:
        done = step + 1  # steps completed after this one
        due = done in self.epoch_ends if self.delta_t == 0 else done % self.delta_t == 0
        return due and done < self.end_step

    def plain_step(self, step: int) -> bool:
        return not self.is_update(step)

    def dense_grad_step(self, step: int) -> bool:
        return self.uses_gradients and self.is_update(step)

    def fraction(self, step: int) -> float:
        if self.decay == "constant":
            return self.drop_fraction
        span = self.drop_fraction - self.final_fraction
        return self.final_fraction + span / 2 * (1 + math.cos(math.pi * (step + 1) / self.end_step))

    def after_backward(self, step: int) -> None:
        if self.uses_gradients and self.is_update(step):
            self.dense_grads = {n: self.masks.layers[n].weight.grad.detach().abs().clone()
                                for n in self.updatable() if self.masks.layers[n].weight.grad is not None}
        self.masks.mask_grads()

    def grow_scores(self, name: str) -> torch.Tensor:
        return self.dense_grads[name] if self.grow == "gradient" else self.random_scores(name)

    def after_optimizer_step(self, step: int) -> None:
        self.masks.apply()
        if not self.is_update(step):
            return
        f = self.fraction(step)
        for name in self.updatable():
            if name not in self.dense_grads and self.uses_gradients:
                continue
            active = self.masks.active(name)
            drop = int(round(f * active))
            weight = self.masks.layers[name].weight.detach()
            self.prune_and_grow(name, keep=active - drop, final=active, prune_score=weight.abs(),
                                grow_score=self.grow_scores(name))
        self.dense_grads = {}
        self.end_update()
