"""Learning-rate schedules as plain functions of (fractional) epoch: nothing to checkpoint."""

from __future__ import annotations

import math


def cosine(t: float, start: float, end: float, base_lr: float, min_lr: float) -> float:
    """Cosine from base_lr at epoch `start` down to min_lr at epoch `end` (flat outside)."""
    if end <= start:
        return min_lr
    progress = min(max((t - start) / (end - start), 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(t: float, optim, total_epochs: int) -> float:
    """Global schedule: linear warmup over optim.warmup_epochs, then cosine, constant, or steps (x step_gamma
    at each fraction step_at of the `total_epochs`) to the end."""
    if t < optim.warmup_epochs:
        return optim.lr * (t + 1e-8) / optim.warmup_epochs
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "step":
        return optim.lr * optim.step_gamma ** sum(t >= f * total_epochs for f in optim.step_at)
    return cosine(t, optim.warmup_epochs, total_epochs, optim.lr, optim.min_lr)
