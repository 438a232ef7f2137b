"""SET — Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science", Nature Communications 2018.

Like RigL's schedule, but new connections are chosen uniformly at random: drop the fraction ζ of
active weights with the smallest magnitude and grow as many at random positions (zero-initialised).
The paper updates after every epoch with ζ = 0.3 and no decay (the defaults in conf/sparsity/set.yaml).
"""

from __future__ import annotations

import torch

from spfde.sparse.rigl import RigL


class SET(RigL):
    name = "set"
    uses_gradients = False

    def options(self):
        return self.cfg.set

    def after_backward(self, step: int) -> None:
        self.masks.mask_grads()

    def grow_scores(self, name: str) -> torch.Tensor:
        return self.random_scores(name)
