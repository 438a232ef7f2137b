"""CIFAR ResNet (He et al. 2016, Sec. 4.2): 3 stages of n basic blocks, depth 6n+2. `width`
multiplies the 16/32/64 channels; the paper's 2x wide ResNet-32 has 32/64/128. Shortcuts that
change shape are 1x1-conv projections with BN."""

from __future__ import annotations

import torch
from torch import nn

from spfde.models.base import BlockNet, Head, Stem


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def cifar_resnet(depth: int, width: int, num_classes: int, channels: int) -> BlockNet:
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    blocks: list[nn.Module] = [Stem(conv3x3(channels, widths[0]), nn.BatchNorm2d(widths[0]))]
    names = ["stem"]
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for i in range(n):
            blocks.append(BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
            names.append(f"stage{stage + 1}.block{i}")
            cin = cout
    blocks.append(Head(cin, num_classes))
    names.append("head")
    model = BlockNet(blocks, names)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
