"""MEST — Yuan et al., "MEST: Accurate and Fast Memory-Economic Sparse Training Framework on the
Edge", NeurIPS 2021: Elastic Mutation (EM) and EM with a Soft memory bound (EM&S).

Every Δτ epochs (`interval`, epoch 0 included), each layer is pruned by the score |w| + λ|g| down to
the *prune-to* sparsity and then grown uniformly at random (new weights zero, their momentum zero)
up to the *grow-to* sparsity. Both bounds are given as offsets from the target `ratio` per phase;
phases change at fixed fractions of training (MEST's code: epochs 90 and 120 of 160). The last phase
has both offsets 0, so the run ends exactly at the target and stops growing.

  EM   (bounds from MEST's EM script at 90%):  prune to ratio+0.02/+0.01/0, grow back to ratio —
       a swap of 20% then 10% of the active weights, then none.
  EM&S (default bounds from MEST's README at 90%): prune to ratio, grow to ratio-0.02/-0.01/0 — training
       runs at the higher (soft-bound) density between updates: 0.12 then 0.11, then the target 0.1.
       (MEST's EM&S script uses -0.05/-0.025/0.)
"""

from __future__ import annotations

from spfde.sparse.base import SparseMethod, require
from spfde.sparse.masks import SparsityError


class MEST(SparseMethod):
    name = "mest"
    label = "MEST (EM&S)"
    spfde_base = True  # the paper's SpFDE is MEST+EM&S with layer freezing and data sieving
    # MEST's code (prune_utils/retrain.py update_mask) zeroes pruned weights, then grows at random among the zero
    # positions: a just-pruned weight picked again restarts at zero. It never touches SGD's momentum buffers.
    reinit_when_same = True
    reset_momentum = False

    @classmethod
    def check(cls, cfg) -> None:
        sp = cfg.sparsity
        o = sp.mest
        require(o.mode in ("em", "ems"), f"sparsity.mest.mode must be em or ems, got {o.mode!r}")
        require(o.lambda_grad >= 0, f"sparsity.mest.lambda_grad must be >= 0, got {o.lambda_grad}")
        bounds = o[o.mode]
        check_bounds(sp.ratio, list(o.decay_at), [sp.ratio + x for x in bounds.prune_to],
                     [sp.ratio + x for x in bounds.grow_to], o.mode)

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        opts = cfg.mest  # checked by MEST.check before the run
        bounds = opts[opts.mode]
        self.lambda_grad = opts.lambda_grad
        self.phase_starts = [int(f * schedule.epochs) for f in opts.decay_at]
        self.prune_to = [cfg.ratio + o for o in bounds.prune_to]
        self.grow_to = [cfg.ratio + o for o in bounds.grow_to]
        self.keep_counts = [self.masks.target_counts(s) for s in self.prune_to]
        self.final_counts = [self.masks.target_counts(s) for s in self.grow_to]
        self.uses_gradients = self.lambda_grad > 0

    def phase(self, epoch: int) -> int:
        return sum(epoch >= start for start in self.phase_starts)

    def is_update(self, epoch: int) -> bool:
        # every Δτ epochs, and at each phase start so that the last phase is always reached
        return epoch % self.schedule.interval == 0 or epoch in self.phase_starts

    def plain_step(self, step: int) -> bool:
        return self.lambda_grad == 0  # with λ > 0 the update reads the last step's gradient

    def start_epoch(self, epoch: int) -> None:
        if not self.is_update(epoch):
            return
        phase = self.phase(epoch)
        for name in self.updatable():
            weight = self.masks.layers[name].weight.detach()
            score = weight.abs()
            if self.lambda_grad > 0 and weight.grad is not None:
                score = score + self.lambda_grad * weight.grad.detach().abs()
            keep = min(self.keep_counts[phase][name], self.masks.active(name))
            self.prune_and_grow(name, keep=keep, final=self.final_counts[phase][name], prune_score=score,
                                grow_score=self.random_scores(name))
        self.end_update()

    def planned_densities(self, epoch: int, frozen: frozenset[str] = frozenset()) -> dict[str, float]:
        counts = self.final_counts[self.phase(epoch)]
        return {n: (self.targets[n] if n in frozen else c) / self.masks.masks[n].numel() for n, c in counts.items()}

    def densities_without_freezing(self, densities: dict[str, float], epoch: int) -> dict[str, float]:
        counts = self.final_counts[self.phase(epoch)]  # frozen layers would train at the phase's bound
        return {n: counts[n] / self.masks.masks[n].numel() if n in self.masks.frozen else d
                for n, d in densities.items()}

    def on_freeze(self, layers: list[str], epoch: int) -> None:
        """A block frozen while it holds soft-bound weights is first pruned to its target, so the final
        model meets the sparsity target."""
        for name in layers:
            if self.masks.active(name) > self.targets[name]:
                weight = self.masks.layers[name].weight.detach()
                self.prune_and_grow(name, keep=self.targets[name], final=self.targets[name],
                                    prune_score=weight.abs(), grow_score=weight.abs())

    def on_release(self, layers: list[str], epoch: int) -> None:
        """A released block rejoins at the current phase's density (random growth, zero init)."""
        counts = self.final_counts[self.phase(epoch)]
        for name in layers:
            active = self.masks.active(name)
            if counts[name] > active:
                self.prune_and_grow(name, keep=active, final=counts[name],
                                    prune_score=self.masks.layers[name].weight.detach().abs(),
                                    grow_score=self.random_scores(name))

    def planned_sparsity(self, epoch: int) -> float:
        """Overall sparsity the masked layers train at during `epoch` (the soft bound for EM&S)."""
        return self.grow_to[self.phase(epoch)]


def check_bounds(ratio: float, decay_at: list, prune_to: list, grow_to: list, mode: str) -> None:
    where = f"sparsity.mest.{mode}"
    if len(prune_to) != len(decay_at) + 1 or len(grow_to) != len(decay_at) + 1:
        raise SparsityError(f"{where}: prune_to and grow_to need one entry per phase ({len(decay_at) + 1}, "
                            f"from sparsity.mest.decay_at with {len(decay_at)} entries)")
    if any(not 0 < f < 1 for f in decay_at) or sorted(decay_at) != decay_at:
        raise SparsityError(f"sparsity.mest.decay_at must be increasing fractions of training in (0, 1), "
                            f"got {decay_at}")
    for i, (p, g) in enumerate(zip(prune_to, grow_to)):
        if not 0 <= g <= p < 1:
            raise SparsityError(f"{where}: phase {i} needs 0 <= grow-to sparsity ({g:g}) <= prune-to sparsity ({p:g}) "
                                f"< 1 at ratio {ratio:g}")
    if abs(prune_to[-1] - ratio) > 1e-12 or abs(grow_to[-1] - ratio) > 1e-12:
        raise SparsityError(f"{where}: the last phase must prune and grow to the target ratio (offsets 0)")
