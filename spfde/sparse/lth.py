"""LTH — Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, with rewinding to an early
epoch (Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020).

Iterative magnitude pruning: round 0 trains the dense network (saving its weights after
`rewind_epoch` epochs); every following round removes `prune_rate` of the remaining weights by
magnitude of the previous round's final weights (globally or per layer), rewinds the survivors to the
saved weights and trains again, until the target ratio (the last round prunes exactly to it). Each
round is a normal harness run in `<run_dir>/round-NN/` — with its own checkpoint, metrics and cost —
and the run's summary adds them up.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
from omegaconf import open_dict

from spfde.checkpoint import CHECKPOINT, atomic_write, finished_summary, load_checkpoint, write_json
from spfde.sparse.base import SparseMethod

log = logging.getLogger("spfde")
REWIND = "rewind.pt"


def round_sparsities(ratio: float, prune_rate: float) -> list[float]:
    """Sparsity of each round: 0, then 1-(1-p)^r, the last one exactly `ratio`."""
    if ratio <= 0:
        return [0.0]
    rounds = math.ceil(math.log(1 - ratio) / math.log(1 - prune_rate) - 1e-9)
    return [0.0] + [1 - (1 - prune_rate) ** r for r in range(1, rounds)] + [ratio]


def round_dir(workdir: Path, r: int) -> Path:
    return Path(workdir) / f"round-{r:02d}"


class LTH(SparseMethod):
    """One round of LTH. Round 0 is dense; round r > 0 prunes round r-1's final weights."""

    name = "lth"

    def __init__(self, cfg, model, optimizer, schedule, generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        opts = cfg.lth
        self.round, self.workdir = opts.round, Path(opts.workdir)
        self.rewind_epoch, self.scope = opts.rewind_epoch, opts.scope

    def initialize(self, batches) -> None:
        if self.round == 0:
            return  # dense: every mask stays all-ones
        previous = load_checkpoint(round_dir(self.workdir, self.round - 1) / CHECKPOINT)
        old_masks = previous["sparsity"]["masks"]["masks"]
        final = previous["model"]
        scores = {}
        for n, layer in self.masks.layers.items():
            weight = final[f"{n}.weight"].to(layer.weight.device).abs()
            scores[n] = weight.masked_fill(~old_masks[n].to(weight.device), float("-inf"))
        self.keep_highest(scores, self.scope)
        rewind = load_checkpoint(self.workdir / REWIND)
        self.model.load_state_dict(rewind)
        self.masks.apply()

    def start_epoch(self, epoch: int) -> None:
        if self.round == 0 and epoch == self.rewind_epoch:
            state = copy.deepcopy(self.model.state_dict())
            atomic_write(self.workdir / REWIND, lambda tmp: torch.save(state, tmp))


def run_rounds(cfg, train_round, write: bool = True) -> dict:
    """Train every round in its own directory (each resumes or skips on its own) and sum them up."""
    from spfde.rundir import start_fresh

    workdir = Path(cfg.run_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    fresh = start_fresh(cfg, workdir, extra=("round-*", REWIND))  # once per launch
    done = finished_summary(workdir)
    if done is not None and not fresh:
        log.info(f"This LTH run already finished ({done['rounds']} rounds): results in {workdir}/summary.json. "
                 "To train it again, add fresh=true.")
        return done
    sparsities = round_sparsities(cfg.sparsity.ratio, cfg.sparsity.lth.prune_rate)
    summaries = []
    for r, sparsity in enumerate(sparsities):
        round_cfg = copy.deepcopy(cfg)
        with open_dict(round_cfg):
            round_cfg.run_dir = str(round_dir(workdir, r))
            round_cfg.fresh = False
            round_cfg.sparsity.ratio = sparsity
            round_cfg.sparsity.lth.round = r
            round_cfg.sparsity.lth.workdir = str(workdir)
        log.info(f"LTH round {r}/{len(sparsities) - 1}: sparsity {sparsity:.4f}")
        summaries.append(train_round(round_cfg))
    last = summaries[-1]
    summed = {k: sum(s[k] for s in summaries) for k in ("train_time_s", "train_flops", "dense_train_flops",
                                                       "flops_saved_sparsity", "flops_saved_freezing",
                                                       "flops_saved_sieving")}
    summary = {**last, **summed, "run_dir": str(workdir), "rounds": len(summaries),
               "sparsity_ratio": cfg.sparsity.ratio, "epochs": cfg.epochs * len(summaries),
               "memory_min_bytes": min(s["memory_min_bytes"] for s in summaries),
               "memory_avg_bytes": sum(s["memory_avg_bytes"] for s in summaries) / len(summaries),
               "round_summaries": [{k: s[k] for k in ("final_acc", "final_sparsity", "train_time_s", "train_flops")}
                                   for s in summaries]}
    if write:  # (with several ranks, rank 0 writes)
        write_json(workdir / "summary.json", summary)
    log.info(f"LTH done: {len(summaries)} rounds, final sparsity {last['final_sparsity']:.4f}, "
             f"test acc {last['final_acc']:.4f}")
    return summary
