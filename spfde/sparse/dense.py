"""Dense training: no masks at all (the reference every saving is measured against)."""

from __future__ import annotations

import torch

from spfde.sparse.base import SparseMethod
from spfde.sparse.masks import Masks


class Dense(SparseMethod):
    name = "dense"
    label = "Dense"
    uses_ratio = False

    def __init__(self, cfg, model, optimizer, schedule, generator: torch.Generator):
        super().__init__(cfg, model, optimizer, schedule, generator)
        self.masks = Masks(model, ["*"], "uniform")  # every layer matches "*": nothing is masked
        self.targets = {}

    def initialize(self, batches) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_optimizer_step(self, step: int) -> None:
        pass
