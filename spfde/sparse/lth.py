"""LTH — Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, with rewinding to an early
epoch (Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020).

Iterative magnitude pruning: round 0 trains the dense network (saving its weights after
`rewind_epoch` epochs); every following round removes `prune_rate` of the remaining weights by
magnitude of the previous round's final weights (globally or per layer), rewinds the survivors to the
saved weights and trains again, until the target ratio (the last round prunes exactly to it). Each
round is a normal harness run, driven by `spfde.training.rounds` (which knows where rounds keep their files and
hands this method the previous round's result and the rewind point through `self.rounds`).
"""

from __future__ import annotations

import copy
import math

from spfde.sparse.base import SparseMethod, require


def round_sparsities(ratio: float, prune_rate: float) -> list[float]:
    """Sparsity of each round: 0, then 1-(1-p)^r, the last one exactly `ratio`."""
    if ratio <= 0:
        return [0.0]
    rounds = math.ceil(math.log(1 - ratio) / math.log(1 - prune_rate) - 1e-9)
    return [0.0] + [1 - (1 - prune_rate) ** r for r in range(1, rounds)] + [ratio]


class LTH(SparseMethod):
    """One round of LTH. Round 0 is dense; round r > 0 prunes round r-1's final weights. `rounds` (set by
    the run layer) gives `previous()` -> (masks, final weights) of round r-1, `rewind()` -> the saved
    weights, and `save_rewind(state)`."""

    name = "lth"
    label = "LTH"
    runs_in_rounds = True
    no_freezing = "each LTH round retrains from a rewind point, freezing is not defined for it"

    @classmethod
    def check(cls, cfg) -> None:
        o = cfg.sparsity.lth
        require(0 < o.prune_rate < 1, f"sparsity.lth.prune_rate must be in (0, 1), got {o.prune_rate}")
        require(0 <= o.rewind_epoch < cfg.epochs,
                f"sparsity.lth.rewind_epoch must be in [0, epochs={cfg.epochs}), got {o.rewind_epoch}")
        require(o.scope in ("global", "layer"), f"sparsity.lth.scope must be global or layer, got {o.scope!r}")
        require(o.round == -1 and not o.workdir, "sparsity.lth.round and sparsity.lth.workdir are set by the LTH "
                "driver for each of its rounds (<run dir>/round-NN/): leave them out, an LTH run trains every round")

    @classmethod
    def round_ratios(cls, sparsity_cfg) -> list[float]:
        return round_sparsities(sparsity_cfg.ratio, sparsity_cfg.lth.prune_rate)

    @classmethod
    def planning_note(cls, cfg) -> str:
        return (f"LTH: {len(cls.round_ratios(cfg.sparsity))} rounds of {cfg.epochs} epochs; per-layer densities of "
                f"global pruning are estimated with the '{cfg.sparsity.distribution}' distribution")

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        opts = cfg.lth
        self.round, self.rewind_epoch, self.scope = opts.round, opts.rewind_epoch, opts.scope
        self.rounds = None  # the round files, attached by spfde.training.rounds

    def initialize(self, batches) -> None:
        if self.round == 0:
            return  # dense: every mask stays all-ones
        old_masks, final = self.rounds.previous()
        scores = {}
        for n, layer in self.masks.layers.items():
            weight = final[f"{n}.weight"].to(layer.weight.device).abs()
            scores[n] = weight.masked_fill(~old_masks[n].to(weight.device), float("-inf"))
        self.keep_highest(scores, self.scope)
        self.model.load_state_dict(self.rounds.rewind())
        self.masks.apply()

    def start_epoch(self, epoch: int) -> None:
        if self.round == 0 and epoch == self.rewind_epoch:
            self.rounds.save_rewind(copy.deepcopy(self.model.state_dict()))
