"""Circular data sieving (paper Sec. 4.3) and MEST's one-shot removal as a baseline.

A fraction y (`sieve`) of the training set is kept out at any time. Start: a random y of the set
forms the *removed queue*, the rest the *partial set* — the only samples the loader draws. Every Δτ
epochs the easiest `sieve_update` (p) of the partial set — fewest forgetting events in the window
that just ended, ties broken at random — goes to the queue's tail and as many samples come back from
its head; once every initially removed sample has been back, the queue is shuffled after each update.
The partial set never changes size, and every sample is used within the first cycle.

Forgetting events (Toneva et al., ICLR 2019) are counted from the predictions the training step
already makes: a sample that was classified correctly at its previous presentation in the window and
is wrong now was forgotten once. Counts restart every window, so samples that just came back are
judged like the others; a sample never classified correctly in the window has not been learned and
ranks as the hardest.

  circular  the paper's method (above)
  oneshot   MEST: train on the full set and count until `sieve_oneshot_at` of training, then drop the
            easiest y for good
  random    a control: the same y and the same number swapped every Δτ, chosen at random
"""

from __future__ import annotations

import torch

from spfde.errors import SpfdeError


class SieveError(SpfdeError, ValueError):
    """A sieving setting that cannot work on this dataset (one line, for the user)."""


def removed_count(dataset_size: int, fraction: float) -> int:
    return int(round(fraction * dataset_size))


def partial_size(cfg, dataset_size: int) -> int:
    """Samples per epoch once sieving is on (the whole set when it is off)."""
    return dataset_size - removed_count(dataset_size, cfg.sieve)


def sieve_epochs(cfg, dataset_size: int) -> list[int]:
    """Samples drawn in each epoch, known before the run."""
    partial = partial_size(cfg, dataset_size)
    if cfg.sieve <= 0:
        return [dataset_size] * cfg.epochs
    if cfg.sieve_method == "oneshot":
        at = oneshot_epoch(cfg)
        return [dataset_size if e < at else partial for e in range(cfg.epochs)]
    return [partial] * cfg.epochs


def oneshot_epoch(cfg) -> int:
    return max(1, int(cfg.sieve_oneshot_at * cfg.epochs))


def check_sieve(cfg, dataset_size: int) -> None:
    if cfg.sieve > 0 and partial_size(cfg, dataset_size) < cfg.batch_size:
        raise SieveError(f"sieve={cfg.sieve:g} leaves {partial_size(cfg, dataset_size)} of {dataset_size} training "
                         f"samples, fewer than one batch ({cfg.batch_size}); lower sieve or batch_size")


class Sieve:
    def __init__(self, cfg, dataset_size: int, device: torch.device, generator: torch.Generator):
        self.enabled = cfg.sieve > 0
        self.method, self.fraction, self.update_fraction = cfg.sieve_method, cfg.sieve, cfg.sieve_update
        self.interval, self.epochs = cfg.interval, cfg.epochs
        self.oneshot_at = oneshot_epoch(cfg)
        self.size, self.device, self.generator = dataset_size, device, generator
        # per-sample forgetting statistics of the current window (on the training device)
        self.forgets = torch.zeros(dataset_size, dtype=torch.int32, device=device)
        self.last_correct = torch.zeros(dataset_size, dtype=torch.bool, device=device)
        self.presented = torch.zeros(dataset_size, dtype=torch.bool, device=device)
        self.learned = torch.zeros(dataset_size, dtype=torch.bool, device=device)
        self.used = torch.zeros(dataset_size, dtype=torch.bool)  # ever in the partial set
        # this epoch's observations (each sample is presented at most once an epoch), folded into the
        # window's statistics by end_epoch(); with several ranks each holds the ones of its shard
        self.seen_now = torch.zeros(dataset_size, dtype=torch.bool, device=device)
        self.correct_now = torch.zeros(dataset_size, dtype=torch.bool, device=device)
        order = torch.randperm(dataset_size, generator=generator)
        removed = removed_count(dataset_size, cfg.sieve) if self.enabled and self.method != "oneshot" else 0
        self.queue = order[:removed].clone()  # removed queue: head first
        self.partial = order[removed:].sort().values
        self.initial = set(self.queue.tolist())  # initially removed samples not yet back
        self.used[self.partial] = True
        self._log: dict = {}

    # ----------------------------------------------------------------- per step (on device, no syncs)
    def observe(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """Record the step's predictions: correct[i] for sample indices[i] (on the sieve's device already).
        In-place index ops with no Python value turned into a tensor: on a GPU, `flags[indices] = True` would
        copy a host tensor (a sync per step, and an error inside a CUDA-graph capture)."""
        if not self.enabled:
            return
        if indices.device != self.seen_now.device:
            raise ValueError(f"sieve.observe: indices on {indices.device}, the sieve on {self.seen_now.device} "
                             "(move them with the batch, outside the step)")
        self.seen_now.index_fill_(0, indices, True)
        self.correct_now.index_copy_(0, indices, correct)

    def step_tensors(self) -> list[torch.Tensor]:
        """The tensors `observe` writes (a failed CUDA-graph capture restores them)."""
        return [self.seen_now, self.correct_now]

    def end_epoch(self, world=None) -> None:
        """Fold the epoch's observations into the window's forgetting statistics: a sample correct at its
        previous presentation and wrong now was forgotten once. With several ranks, their observations
        are combined first, so every rank holds the same statistics."""
        if not self.enabled:
            return
        if world is not None and world.enabled:
            for flags in (self.seen_now, self.correct_now):
                flags.copy_(world.all_reduce_(flags.to(world.device, torch.uint8)).bool())
        seen, correct = self.seen_now, self.correct_now
        self.forgets += (seen & self.presented & self.last_correct & ~correct).int()
        self.last_correct.copy_(torch.where(seen, correct, self.last_correct))
        self.presented |= seen
        self.learned |= seen & correct
        self.seen_now.zero_()
        self.correct_now.zero_()

    # ----------------------------------------------------------------- per epoch
    def start_epoch(self, epoch: int, loader) -> None:
        """Update the partial set when it is due, and point the loader at it."""
        if self.enabled and epoch > 0:
            if self.method == "oneshot" and epoch == self.oneshot_at:
                self.remove_for_good()
            elif self.method != "oneshot" and epoch % self.interval == 0:
                self.swap()
            if self.method != "oneshot" and epoch % self.interval == 0:
                self.new_window()  # one-shot counts over its whole counting period instead
        loader.set_indices(self.partial)

    def new_window(self) -> None:
        self.forgets.zero_()
        self.presented.zero_()
        self.last_correct.zero_()
        self.learned.zero_()

    def hardness(self, indices: torch.Tensor) -> torch.Tensor:
        """Forgetting counts of the window; samples never learned in it count as hardest."""
        forgets = self.forgets.cpu()[indices].double()
        return torch.where(self.learned.cpu()[indices], forgets, torch.inf)

    def easiest(self, indices: torch.Tensor, count: int) -> torch.Tensor:
        """Positions (into `indices`) of the `count` easiest samples; ties broken at random."""
        shuffle = torch.randperm(len(indices), generator=self.generator)
        order = torch.sort(self.hardness(indices)[shuffle], stable=True).indices
        return shuffle[order[:count]]

    def swap(self) -> None:
        count = min(len(self.queue), int(round(self.update_fraction * len(self.partial))))
        if count == 0:
            return
        if self.method == "random":
            out_pos = torch.randperm(len(self.partial), generator=self.generator)[:count]
        else:
            out_pos = self.easiest(self.partial, count)
        keep = torch.ones(len(self.partial), dtype=torch.bool)
        keep[out_pos] = False
        leaving, staying = self.partial[out_pos], self.partial[keep]
        coming = self.queue[:count]
        self.queue = torch.cat([self.queue[count:], leaving])  # removed samples join at the tail
        self.partial = torch.cat([staying, coming]).sort().values
        self.used[coming] = True
        self.initial -= set(coming.tolist())
        if not self.initial:  # every initially removed sample has been back: shuffle from now on
            self.queue = self.queue[torch.randperm(len(self.queue), generator=self.generator)]
        hard_out, hard_in = self.hardness(leaving), self.hardness(staying)
        self._log = {"sieve/swapped": count, "sieve/forgets_removed": finite_mean(hard_out),
                     "sieve/forgets_kept": finite_mean(hard_in), "sieve/updates": 1}

    def remove_for_good(self) -> None:
        count = removed_count(self.size, self.fraction)
        out_pos = self.easiest(self.partial, count)
        keep = torch.ones(len(self.partial), dtype=torch.bool)
        keep[out_pos] = False
        leaving = self.partial[out_pos]
        self.partial = self.partial[keep]
        self.queue = leaving
        self._log = {"sieve/swapped": count, "sieve/forgets_removed": finite_mean(self.hardness(leaving)),
                     "sieve/forgets_kept": finite_mean(self.hardness(self.partial)), "sieve/updates": 1}

    def epoch_stats(self) -> dict:
        if not self.enabled:
            return {}
        stats = {"sieve/partial_size": len(self.partial), "sieve/seen_fraction": self.seen_fraction(), **self._log}
        self._log = {}
        return stats

    def seen_fraction(self) -> float:
        return float(self.used.float().mean())

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"forgets": self.forgets.cpu().clone(), "last_correct": self.last_correct.cpu().clone(),
                "presented": self.presented.cpu().clone(), "learned": self.learned.cpu().clone(),
                "used": self.used.clone(),
                "queue": self.queue.clone(), "partial": self.partial.clone(), "initial": sorted(self.initial),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("forgets", "last_correct", "presented", "learned"):
            setattr(self, name, state[name].to(self.device).clone())
        self.used, self.queue, self.partial = state["used"].clone(), state["queue"].clone(), state["partial"].clone()
        self.initial = set(state["initial"])
        self.generator.set_state(state["generator"])


def finite_mean(values: torch.Tensor) -> float | None:
    """Mean forgetting count of the learned samples (None if none was learned)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else None
