"""The state of a run: every part that checkpoints itself, held by one object, and the summary of a finished run.

`RunState.state_dict()` is the checkpoint (`last.pt`), `load_state_dict()` restores a run from it. Its keys are
the same since the first release, so a checkpoint of an older run resumes; one that lacks a part is refused with
one line (RunDirError) before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spfde.rundir.checkpoint import RunDirError, rng_state, set_rng_state
from spfde.sparse import target_sparsity
from spfde.training.build import Run
from spfde.training.distributed import World
from spfde.training.log import new_run_id

# what a checkpoint must hold to resume from (the optimizer step count and the records are optional: a checkpoint
# without them resumes with the steps its epochs were planned to take, and the lines of metrics.jsonl)
PARTS = ("model", "optimizer", "sparsity", "cost", "freezer", "sieve", "rng")
PROGRESS = ("epoch", "best_acc", "elapsed_s", "run_id")


@dataclass
class RunState:
    """A run's parts (model, optimizer, sparse method, cost meter, freezer, sieve, random generators) and its
    progress (epochs done, best accuracy, training time, optimizer steps, the records of its epochs)."""

    run: Run
    fingerprint: dict  # the result-changing settings: a checkpoint made with others is refused
    world_size: int = 1
    epoch: int = 0  # epochs completed
    best_acc: float = 0.0
    elapsed: float = 0.0  # seconds of training and evaluation, over every launch of the run
    steps: int = 0  # optimizer steps taken (the step clock of the sparse method's schedule)
    run_id: str = field(default_factory=new_run_id)
    records: list = field(default_factory=list)  # one dict per completed epoch (metrics.jsonl)
    cuda_graphs: str = "off"  # "off", "on" or "fallback: <why>" (a fallback stays for the rest of the run)

    def state_dict(self) -> dict:
        r = self.run
        return {"epoch": self.epoch, "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
                "sparsity": r.method.state_dict(), "cost": r.meter.state_dict(), "freezer": r.freezer.state_dict(),
                "sieve": r.sieve.state_dict(), "rng": rng_state(r.generator), "steps": self.steps,
                "best_acc": self.best_acc, "elapsed_s": self.elapsed, "run_id": self.run_id,
                "fingerprint": self.fingerprint, "records": self.records, "world_size": self.world_size,
                "cuda_graphs": self.cuda_graphs}

    def load_state_dict(self, ckpt: dict, path: Path | str = "the checkpoint") -> None:
        missing = [k for k in (*PARTS, *PROGRESS) if k not in ckpt]
        if missing:
            raise RunDirError(f"{path} cannot resume this run: it holds no {', '.join(missing)} (not a checkpoint "
                              "this harness wrote); move it away, or add fresh=true to start the run again")
        r = self.run
        r.model.load_state_dict(ckpt["model"])
        r.optimizer.load_state_dict(ckpt["optimizer"])
        r.method.load_state_dict(ckpt["sparsity"])  # masks bit-exact, never re-randomised
        r.meter.load_state_dict(ckpt["cost"])
        r.freezer.load_state_dict(ckpt["freezer"], r.optimizer)
        r.sieve.load_state_dict(ckpt["sieve"])
        set_rng_state(ckpt["rng"], r.generator)
        self.epoch, self.best_acc, self.elapsed, self.run_id = (ckpt["epoch"], ckpt["best_acc"], ckpt["elapsed_s"],
                                                                ckpt["run_id"])
        self.steps = ckpt.get("steps", sum(r.method.schedule.epoch_steps[:self.epoch]))
        self.records = list(ckpt.get("records") or [])[:self.epoch]
        if str(ckpt.get("cuda_graphs", "")).startswith("fallback"):
            self.cuda_graphs = ckpt["cuda_graphs"]

    def note_graphs(self, status: str) -> None:
        """How the steps ran this epoch; a fallback from an earlier launch stays in the record."""
        if not self.cuda_graphs.startswith("fallback"):
            self.cuda_graphs = status


def summary(cfg, state: RunState, run_dir: Path, world: World, capture_s: float) -> dict:
    """summary.json of a finished run: its results, its cost (the meter's), its settings and how it ran."""
    run, last = state.run, state.records[-1]
    out = {"final_acc": last["test/acc"], "best_acc": state.best_acc, "epochs": cfg.epochs,
           "final_loss": last["test/loss"], "train_time_s": state.elapsed, "run_id": state.run_id,
           "run_dir": str(run_dir), "model": cfg.model.name, "dataset": cfg.dataset.name,
           "params": sum(p.numel() for p in run.model.parameters()), "seed": cfg.seed,
           "sparsity_method": cfg.sparsity.name, "sparsity_ratio": target_sparsity(cfg.sparsity),
           "final_sparsity": last["sparsity/overall"], **run.meter.summary(), "freeze": cfg.freeze,
           "freeze_scheme": cfg.freeze_scheme.name,
           "freeze_planned_saving": run.freeze_plan.saving if run.freeze_plan else 0.0,
           "sieve": cfg.sieve, "sieve_method": cfg.sieve_method, "sieve_seen_fraction": run.sieve.seen_fraction()}
    if "test/acc5" in last:
        out["final_acc5"] = last["test/acc5"]
    if world.enabled:
        out["world_size"] = world.size
    out["cuda_graphs"] = state.cuda_graphs
    if run.device.type == "cuda":  # measured GPU memory (of rank 0), the largest epoch of the run
        out["memory_train_peak_bytes"] = max(r.get("memory/train_peak", 0) for r in state.records)
        out["memory_eval_peak_bytes"] = max(r.get("memory/eval_peak", 0) for r in state.records)
        out["cuda_graphs_capture_s"] = capture_s
    return out
