"""DSR — Mostafa & Wang, "Parameter Efficient Training of Deep Convolutional Neural Networks by
Dynamic Sparse Reparameterization", ICML 2019.

Every reallocation period: prune every active weight whose magnitude is below one global threshold H,
then adapt H so the pruned count tracks its target (double H if fewer than (1-δ)·N_p were pruned,
halve it if more than (1+δ)·N_p), then regrow as many weights as were pruned, shared across layers
in proportion to each layer's surviving weights, at random zero positions (zero-initialised). The
total number of weights stays exact; the per-layer split moves towards where weights survive.
"""

from __future__ import annotations

from spfde.sparse.base import SparseMethod, proportional_split, require


class DSR(SparseMethod):
    name = "dsr"
    label = "DSR"

    @classmethod
    def check(cls, cfg) -> None:
        o = cfg.sparsity.dsr
        require(o.delta_t >= 1, f"sparsity.dsr.delta_t must be >= 1 step, got {o.delta_t}")
        require(0 < o.prune_fraction < 1, f"sparsity.dsr.prune_fraction must be in (0, 1), got {o.prune_fraction}")
        require(o.threshold > 0 and 0 <= o.tolerance < 1,
                "sparsity.dsr.threshold must be > 0 and sparsity.dsr.tolerance in [0, 1)")
        require(all(0 < f < 1 for f in o.double_period_at),
                "sparsity.dsr.double_period_at must hold fractions of training in (0, 1), "
                f"got {list(o.double_period_at)}")

    @classmethod
    def planning_note(cls, cfg) -> str:
        return (f"{cls.name} moves weights between layers at run time; estimated here with the initial "
                f"'{cfg.sparsity.distribution}' distribution")

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        opts = cfg.dsr
        self.threshold = opts.threshold
        self.tolerance = opts.tolerance
        masked = sum(m.weight.numel() for m in self.masks.layers.values())
        self.target_pruned = max(1, int(round(opts.prune_fraction * masked)))
        self.period_starts = [int(f * schedule.total_steps) for f in opts.double_period_at]
        self.base_period = opts.delta_t
        self.last_update = -1  # step of the last reallocation (counted from the step number, so that
        # steps replayed from a CUDA graph, which skip this method's hooks, still count)

    def period(self, step: int) -> int:
        return self.base_period * 2 ** sum(step >= s for s in self.period_starts)

    def is_update(self, step: int) -> bool:
        return step - self.last_update >= self.period(step)

    def plain_step(self, step: int) -> bool:
        return not self.is_update(step)

    def after_optimizer_step(self, step: int) -> None:
        self.masks.apply()
        if self.is_update(step):
            self.last_update = step
            self.reallocate()

    def reallocate(self) -> None:
        names = self.updatable()
        before = {n: self.masks.active(n) for n in names}
        survivors = {n: self.masks.masks[n] & (self.masks.layers[n].weight.detach().abs() >= self.threshold)
                     for n in names}
        surviving = [int(survivors[n].sum()) for n in names]
        pruned = sum(before[n] for n in names) - sum(surviving)
        # adapt the global threshold towards the target number of pruned weights
        if pruned < (1 - self.tolerance) * self.target_pruned:
            self.threshold *= 2
        elif pruned > (1 + self.tolerance) * self.target_pruned:
            self.threshold /= 2
        capacity = [self.masks.masks[n].numel() - r for n, r in zip(names, surviving)]
        grow = proportional_split(pruned, [float(r) for r in surviving], capacity)
        for n, g in zip(names, grow):
            scores = self.random_scores(n).masked_fill(survivors[n], float("-inf"))
            self.prune_and_grow(n, keep=int(survivors[n].sum()), final=int(survivors[n].sum()) + g,
                                prune_score=survivors[n].float(), grow_score=scores)
        self.end_update()

    def epoch_stats(self) -> dict:
        return {**super().epoch_stats(), "sparsity/dsr_threshold": self.threshold}

    def extra_state(self) -> dict:
        return {"threshold": self.threshold, "last_update": self.last_update}

    def load_extra_state(self, state: dict) -> None:
        self.threshold, self.last_update = state["threshold"], state["last_update"]
