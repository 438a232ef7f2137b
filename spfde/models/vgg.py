"""CIFAR VGG with batch norm (as used by SNIP/GraSP on CIFAR): the conv stack of VGG-11/13/16/19 and
a single linear classifier after global pooling. Each conv (with its BN, ReLU and any following
max-pool) is one block."""

from __future__ import annotations

from torch import nn

from spfde.models.base import BlockNet, Head, Stem

LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg(depth: int, width: int, num_classes: int, channels: int) -> BlockNet:
    blocks: list[Stem] = []
    cin = channels
    for item in LAYOUTS[depth]:
        if item == "M":
            # ceil_mode keeps a 1x1 map at 1x1, so small inputs (digits at 16x16) still work
            blocks[-1].pool = nn.MaxPool2d(2, ceil_mode=True)
            continue
        cout = item * width
        blocks.append(Stem(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)))
        cin = cout
    names = ["stem"] + [f"conv{i}" for i in range(1, len(blocks))] + ["head"]
    model = BlockNet([*blocks, Head(cin, num_classes)], names)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
