"""Model registry: `model.name` -> builder(model_cfg, num_classes, channels) -> BlockNet."""

from __future__ import annotations

from spfde.models.base import BlockNet
from spfde.models.cifar_resnet import cifar_resnet
from spfde.models.imagenet_resnet import resnet50
from spfde.models.vgg import vgg

MODELS = {
    "resnet32": lambda m, classes, channels: cifar_resnet(m.depth, m.width, classes, channels),
    "vgg19": lambda m, classes, channels: vgg(m.depth, m.width, classes, channels),
    "resnet50": lambda m, classes, channels: resnet50(classes, channels),
}


def build_model(model_cfg, num_classes: int, channels: int) -> BlockNet:
    return MODELS[model_cfg.name](model_cfg, num_classes, channels)
