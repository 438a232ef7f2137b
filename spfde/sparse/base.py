"""The interface every sparse-training method implements, and the prune-and-grow step they share.

The training loop calls, by name:
  initialize(batches)             once, on a fresh run (not on resume): the initial masks
  start_epoch(epoch)              epoch-based structure updates (MEST)
  after_backward(step)            read what a method needs from the dense gradient, then mask it
  after_optimizer_step(step)      re-zero masked weights; step-based updates (RigL, SET)
  plain_step(step)                True when this step's two hooks only mask gradients and weights:
                                  such steps may be replayed from a CUDA graph (spfde.training.step)
  epoch_stats()                   realised sparsity + this epoch's prune/grow counts, for the logs

What the rest of the harness needs to know about a method lives on its class: `check(cfg)` validates
its options (before any work), and a few class attributes say how the run treats it (see SparseMethod).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from spfde.sparse.masks import Masks, SparsityError, top_k_mask


def require(ok: bool, message: str) -> None:
    """For `check(cfg)`: a bad option value, as one line (the config layer shows it as a ConfigError)."""
    if not ok:
        raise SparsityError(message)


def proportional_split(total: int, shares: list[float], capacity: list[int]) -> list[int]:
    """Split `total` integer items in proportion to `shares`, never giving a slot more than its
    `capacity`; what a full slot cannot take goes to the others (largest remainders first).
    Returns counts summing to min(total, sum(capacity))."""
    counts = [0] * len(shares)
    left = min(total, sum(capacity))
    open_slots = [i for i in range(len(shares)) if capacity[i] > 0]
    while left > 0 and open_slots:
        weight = sum(max(shares[i], 0.0) for i in open_slots)
        if weight <= 0:
            ideal = {i: left / len(open_slots) for i in open_slots}
        else:
            ideal = {i: left * max(shares[i], 0.0) / weight for i in open_slots}
        give = {i: min(math.floor(ideal[i]), capacity[i] - counts[i]) for i in open_slots}
        remainder = left - sum(give.values())
        for i in sorted(open_slots, key=lambda i: ideal[i] - math.floor(ideal[i]), reverse=True):
            if remainder <= 0:
                break
            if counts[i] + give[i] < capacity[i]:
                give[i] += 1
                remainder -= 1
        for i in open_slots:
            counts[i] += give[i]
        left = min(total, sum(capacity)) - sum(counts)
        open_slots = [i for i in open_slots if counts[i] < capacity[i]]
    return counts


@dataclass
class Schedule:
    """What a method needs to know about the run's length. Steps are optimizer steps counted from the run's
    first (`TrainStep.steps`, checkpointed): an epoch's count falls when a sieve shrinks the training set."""

    epochs: int
    epoch_steps: list[int]  # optimizer steps of each epoch, known before the run
    interval: int  # Δτ in epochs

    @property
    def total_steps(self) -> int:
        return sum(self.epoch_steps)

    @property
    def epoch_ends(self) -> set[int]:
        """Step counts at which an epoch is complete (the run's step `s` completes `s + 1`)."""
        return set(itertools.accumulate(self.epoch_steps))


class SparseMethod:
    name = "base"
    label = "base"  # how reports and the paper's tables name it
    uses_gradients = False  # needs gradients beyond the normal training step (saliency, dense grads)
    init_passes = 0.0  # dense training-step equivalents per sample spent choosing the initial mask
    uses_ratio = True  # trains to sparsity.ratio (dense ignores it, so a sweep over methods can include it)
    runs_in_rounds = False  # one run per round, driven by spfde.training.rounds (LTH)
    spfde_base = False  # SpFDE's own sparse method: with freezing/sieving the paper calls its rows "SpFDE x%+y%"
    no_freezing = ""  # why layer freezing is not defined for it ("" = it is)
    # what a structure update does to the positions it touches, as the method's reference code does:
    reinit_when_same = False  # a weight dropped and grown back in one update restarts at zero (else keeps its value)
    reset_momentum = True  # changed positions get zero momentum (else their optimizer buffers are left to decay)

    @classmethod
    def check(cls, cfg) -> None:
        """Raise SparsityError (one line) if the method's options in the full run config `cfg` are bad."""

    @classmethod
    def planning_note(cls, cfg) -> str:
        """Where `spfde.planning.plan` can only estimate this method's cost, a line saying why ("" otherwise)."""
        return ""

    @classmethod
    def round_ratios(cls, sparsity_cfg) -> list[float]:
        """Target sparsity of each round, for a method that `runs_in_rounds`."""
        return [sparsity_cfg.ratio if cls.uses_ratio else 0.0]

    @classmethod
    def options_of(cls, cfg):
        """This method's own options (`sparsity.<name>`) in the sparsity config."""
        return cfg[cls.name]

    def __init__(self, cfg, model: torch.nn.Module, optimizer, schedule: Schedule, generator: torch.Generator):
        self.cfg, self.model, self.optimizer, self.schedule = cfg, model, optimizer, schedule
        self.generator = generator
        self.masks = Masks(model, cfg.dense_layers, cfg.distribution, cfg.masked, self.reset_momentum)
        self.targets = self.masks.target_counts(cfg.ratio)
        self.init_samples = 0  # samples used by initialize() (SNIP, GraSP)
        self._pruned: dict[str, int] = {}
        self._grown: dict[str, int] = {}
        self._updates = 0

    # ----------------------------------------------------------------- hooks
    def initialize(self, batches) -> None:
        """Random masks at the target densities (most DST methods start this way)."""
        self.masks.random_init(self.targets, self.generator, self.optimizer)

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        self.masks.mask_grads()

    def after_optimizer_step(self, step: int) -> None:
        self.masks.apply()

    def plain_step(self, step: int) -> bool:
        """Do after_backward(step) and after_optimizer_step(step) only mask gradients and weights (no
        structure update, no dense gradient, no host-side state)? Asked before the step; no side effects."""
        return True

    # ----------------------------------------------------------------- cost (planned and counted)
    def dense_grad_step(self, step: int) -> bool:
        """Does this step compute the dense weight gradient (RigL updates, SNFS)?"""
        return False

    def planned_densities(self, epoch: int, frozen: frozenset[str] = frozenset()) -> dict[str, float]:
        """Layer densities this method trains at during `epoch` (given the frozen layers), known
        before the run."""
        return {n: c / self.masks.masks[n].numel() for n, c in self.targets.items()}

    def densities_without_freezing(self, densities: dict[str, float], epoch: int) -> dict[str, float]:
        """The densities these layers would have had this epoch if nothing were frozen (for the cost
        meter's counterfactual: what freezing saved)."""
        return densities

    def on_freeze(self, layers: list[str], epoch: int) -> None:
        """Layers about to be frozen (their masks stay fixed from now on)."""

    def on_release(self, layers: list[str], epoch: int) -> None:
        """Frozen layers that train again."""

    def planned_init_samples(self, batch_size: int, num_classes: int) -> int:
        return 0

    # ----------------------------------------------------------------- shared mechanics
    def updatable(self) -> list[str]:
        """Layers whose structure may change (frozen blocks keep theirs)."""
        return [n for n in self.masks.layers if n not in self.masks.frozen]

    @torch.no_grad()
    def prune_and_grow(self, name: str, keep: int, final: int, prune_score: torch.Tensor,
                       grow_score: torch.Tensor) -> None:
        """Keep the `keep` active weights with the highest prune_score, then activate the
        `final - keep` inactive positions (just-pruned ones included) with the highest grow_score.
        Exactly `final` weights are active afterwards. A just-pruned position grown back keeps its value, or
        restarts at zero with `reinit_when_same`."""
        mask = self.masks.masks[name]
        active = int(mask.sum())
        if not 0 <= keep <= active or final < keep or final > mask.numel():
            raise SparsityError(f"{self.name}: cannot keep {keep} of {active} and end with {final} in {name}")
        kept = top_k_mask(prune_score.masked_fill(~mask, float("-inf")), keep)
        grown = top_k_mask(grow_score.masked_fill(kept, float("-inf")), final - keep)
        restart = grown & mask if self.reinit_when_same else None  # dropped and picked again
        self.record(name, *self.masks.set_mask(name, kept | grown, self.optimizer, restart))

    @torch.no_grad()
    def keep_highest(self, scores: dict[str, torch.Tensor], scope: str) -> None:
        """One-shot masks from saliency scores: the highest scores per layer (`layer`: each layer at its
        target count) or across all masked layers (`global`: the same total, as SNIP and GraSP do)."""
        if scope == "layer":
            for name, score in scores.items():
                self.masks.set_mask(name, top_k_mask(score, self.targets[name]), self.optimizer)
            return
        flat = torch.cat([scores[n].flatten().float() for n in scores])
        keep = top_k_mask(flat, sum(self.targets.values()))
        start = 0
        for name, score in scores.items():
            self.masks.set_mask(name, keep[start:start + score.numel()].view_as(score), self.optimizer)
            start += score.numel()

    def random_scores(self, name: str) -> torch.Tensor:
        weight = self.masks.layers[name].weight
        return torch.rand(weight.shape, generator=self.generator).to(weight.device)

    def record(self, name: str, pruned: int, grown: int) -> None:
        self._pruned[name] = self._pruned.get(name, 0) + pruned
        self._grown[name] = self._grown.get(name, 0) + grown

    def end_update(self) -> None:
        self._updates += 1

    # ----------------------------------------------------------------- reporting
    def epoch_stats(self) -> dict:
        """Realised sparsity (overall, per layer) and the prune/grow counts since the last call."""
        stats = {"sparsity/overall": self.masks.overall_sparsity()}
        stats.update({f"sparsity/layer/{n}": s for n, s in self.masks.layer_sparsity().items()})
        if self._updates:
            stats["sparsity/updates"] = self._updates
            stats["sparsity/pruned"] = sum(self._pruned.values())
            stats["sparsity/grown"] = sum(self._grown.values())
            stats.update({f"sparsity/pruned/{n}": v for n, v in self._pruned.items()})
            stats.update({f"sparsity/grown/{n}": v for n, v in self._grown.items()})
        self._pruned, self._grown, self._updates = {}, {}, 0
        return stats

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict(), "generator": self.generator.get_state(), "method": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state["masks"])
        self.generator.set_state(state["generator"])
        self.load_extra_state(state["method"])

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
