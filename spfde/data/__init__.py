"""Datasets by name. In-memory sets (cifar10/100, digits, fake) become uint8 tensors on the training
device; folder sets (imagenet, imagefolder) stream through a loader with workers, or, when their images
are small, are decoded once into memory too (see `spfde.data.folders`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spfde.data.folders import FOLDERS, build_folder_data, check_image_folder
from spfde.data.loaders import FolderLoader, InMemoryLoader
from spfde.data.sources import IN_MEMORY, Arrays, DataError, train_stats

__all__ = ["DATASETS", "FOLDERS", "IN_MEMORY", "Arrays", "Data", "DataError", "build_data", "check_image_folder"]


@dataclass
class Data:
    train: InMemoryLoader | FolderLoader
    test: InMemoryLoader | FolderLoader
    num_classes: int
    channels: int
    image_size: int

    @property
    def train_size(self) -> int:
        return self.train.dataset_size


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


def in_memory_data(arrays: Arrays, cfg, device, generator, world, *, num_classes: int, crop_padding: int,
                   hflip: bool) -> Data:
    """GPU-resident loaders over uint8 arrays, normalised with the training images' statistics."""
    mean, std = train_stats(arrays.train_images)
    to_dev = {k: v.to(device) for k, v in vars(arrays).items()}
    common = dict(mean=mean, std=std, generator=generator, world=world)
    train = InMemoryLoader(to_dev["train_images"], to_dev["train_labels"], cfg.batch_size, train=True,
                           crop_padding=crop_padding, hflip=hflip, **common)
    test = InMemoryLoader(to_dev["test_images"], to_dev["test_labels"], cfg.eval_batch_size, train=False, **common)
    return Data(train, test, num_classes=num_classes, channels=arrays.train_images.shape[1],
                image_size=arrays.train_images.shape[-1])
