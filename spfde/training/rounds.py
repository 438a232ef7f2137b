"""Methods that train in rounds (LTH): one normal harness run per round, each in `<run_dir>/round-NN/`
with its own checkpoint, metrics and cost, and a summary that adds them up. The round files live here,
in the run layer; the method sees them through `RoundFiles`."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from omegaconf import open_dict

from spfde.rundir.checkpoint import CHECKPOINT, finished_summary, load_checkpoint, save_checkpoint, write_json
from spfde.rundir.lifecycle import start_fresh
from spfde.sparse import METHODS

log = logging.getLogger("spfde")
REWIND = "rewind.pt"


def round_dir(workdir: Path, r: int) -> Path:
    return Path(workdir) / f"round-{r:02d}"


class RoundFiles:
    """What round `r` of a run in `workdir` reads and writes besides its own run directory."""

    def __init__(self, workdir: str | Path, r: int, write: bool = True):
        self.workdir, self.round, self.write = Path(workdir), r, write  # with several ranks, rank 0 writes

    def previous(self) -> tuple[dict, dict]:
        """Masks and final weights of the previous round."""
        state = load_checkpoint(round_dir(self.workdir, self.round - 1) / CHECKPOINT)
        return state["sparsity"]["masks"]["masks"], state["model"]

    def rewind(self) -> dict:
        return load_checkpoint(self.workdir / REWIND)

    def save_rewind(self, state: dict) -> None:
        if self.write:
            save_checkpoint(self.workdir / REWIND, state)


def drives_rounds(cfg) -> bool:
    """Is this the run of a round-based method as a whole (not one of its rounds)?"""
    return METHODS[cfg.sparsity.name].runs_in_rounds and cfg.sparsity.lth.round < 0


def attach_round_files(cfg, method, write: bool = True) -> None:
    """Give a round-based method its round files (the run layer's part of `build_run`)."""
    if method.runs_in_rounds:
        method.rounds = RoundFiles(cfg.sparsity.lth.workdir, cfg.sparsity.lth.round, write)


def run_rounds(cfg, train_round, write: bool = True) -> dict:
    """Train every round in its own directory (each resumes or skips on its own) and sum them up."""
    workdir = Path(cfg.run_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    fresh = start_fresh(cfg, workdir, extra=("round-*", REWIND))  # once per launch
    done = finished_summary(workdir)
    if done is not None and not fresh:
        log.info(f"This LTH run already finished ({done.get('rounds')} rounds): results in {workdir}/summary.json. "
                 "To train it again, add fresh=true.")
        return done
    sparsities = METHODS[cfg.sparsity.name].round_ratios(cfg.sparsity)
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
