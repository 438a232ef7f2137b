"""Every model is a `BlockNet`: an ordered list of blocks (stem, body blocks, head) run in sequence.
Progressive freezing works on this list; sparse masks find conv/linear weights by module name."""

from __future__ import annotations

import torch
from torch import nn


def block_of(name: str) -> int:
    """Index of the block a module or parameter name belongs to: `blocks.3.conv1` -> 3."""
    return int(name.split(".")[1])


class Stem(nn.Module):
    """First conv + BN + ReLU (+ optional pooling). Its conv is `blocks.0.conv`: the layer the paper
    keeps dense."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: nn.Module | None = None):
        super().__init__()
        self.conv, self.bn, self.pool = conv, bn, pool or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class Head(nn.Module):
    """Global average pooling + the classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BlockNet(nn.Module):
    def __init__(self, blocks: list[nn.Module], names: list[str]):
        super().__init__()
        assert len(blocks) == len(names)
        self.blocks = nn.ModuleList(blocks)
        self.block_names = list(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
