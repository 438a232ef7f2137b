"""Datasets by name. In-memory sets (cifar10/100, digits, fake) become uint8 tensors on the training
device; folder sets (imagenet, imagefolder) stream through a loader with workers, or, when their images
are small, are decoded once into memory too (see `spfde.data.folders`)."""

from __future__ import annotations

import torch

from spfde.data.folders import FOLDERS, build_folder_data, check_image_folder
from spfde.data.loaders import Data, in_memory_data
from spfde.data.sources import IN_MEMORY, Arrays, DataError

__all__ = ["DATASETS", "FOLDERS", "IN_MEMORY", "Arrays", "Data", "DataError", "build_data", "check_image_folder",
           "in_memory_data"]


DATASETS = sorted(set(IN_MEMORY) | FOLDERS)


def build_data(cfg, device: torch.device, generator: torch.Generator, world=None) -> Data:
    """Train and test loaders for cfg.dataset; raises DataError (one line) when data is missing. With
    several ranks (`world`), each loader yields this rank's part of every global batch."""
    d = cfg.dataset
    if d.name in FOLDERS:
        return build_folder_data(cfg, cfg.batch_size, cfg.eval_batch_size, generator, device, world)
    arrays = IN_MEMORY[d.name](d)
    return in_memory_data(arrays, cfg, device, generator, world, num_classes=d.num_classes,
                          crop_padding=d.crop_padding, hflip=d.hflip)
