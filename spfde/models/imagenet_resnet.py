"""torchvision's ResNet-50 (v1.5, stride in the 3x3 conv), rearranged into blocks: the stem, each
bottleneck of layer1..layer4, and the head. Weights and initialisation are torchvision's."""

from __future__ import annotations

from torch import nn

from spfde.models.base import BlockNet, Head, Stem


def resnet50(num_classes: int, channels: int) -> BlockNet:
    import torchvision  # here, not at import: it takes seconds to import, and CIFAR models never need it

    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    conv1 = net.conv1
    if channels != 3:
        conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    blocks: list[nn.Module] = [Stem(conv1, net.bn1, net.maxpool)]
    names = ["stem"]
    for li, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4], start=1):
        for bi, block in enumerate(layer):
            blocks.append(block)
            names.append(f"layer{li}.block{bi}")
    head = Head(net.fc.in_features, num_classes)
    head.fc = net.fc
    return BlockNet([*blocks, head], names + ["head"])
