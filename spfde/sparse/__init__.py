"""Sparse training methods by name; each one owns a `Masks` object and is called by the loop."""

from __future__ import annotations

import torch

from spfde.sparse.base import Schedule, SparseMethod
from spfde.sparse.deepr import DeepR
from spfde.sparse.dense import Dense
from spfde.sparse.dsr import DSR
from spfde.sparse.grasp import GraSP
from spfde.sparse.itop import ITOP
from spfde.sparse.lth import LTH
from spfde.sparse.masks import Masks, SparsityError
from spfde.sparse.mest import MEST
from spfde.sparse.rigl import RigL
from spfde.sparse.set import SET
from spfde.sparse.snfs import SNFS
from spfde.sparse.snip import SNIP
from spfde.sparse.static import Static

METHODS: dict[str, type[SparseMethod]] = {
    m.name: m for m in (Dense, Static, LTH, SNIP, GraSP, DeepR, SET, DSR, SNFS, RigL, ITOP, MEST)
}

__all__ = ["METHODS", "Masks", "Schedule", "SparseMethod", "SparsityError", "build_method", "target_sparsity"]


def target_sparsity(sparsity_cfg) -> float:
    """The run's target sparsity: sparsity.ratio, or 0 for a method that ignores it (dense)."""
    return sparsity_cfg.ratio if METHODS[sparsity_cfg.name].uses_ratio else 0.0


def build_method(cfg, model, optimizer, epoch_steps: list[int]) -> SparseMethod:
    """The configured method on `model`, for a run whose epochs take `epoch_steps` optimizer steps; raises
    SparsityError if its target cannot be realised."""
    schedule = Schedule(epochs=cfg.epochs, epoch_steps=list(epoch_steps), interval=cfg.interval)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: masks do not shift data order
    return METHODS[cfg.sparsity.name](cfg.sparsity, model, optimizer, schedule, generator)
