"""Two loaders with one interface: iterate (images, labels, sample indices) over an index array.

`InMemoryLoader` keeps the whole set as one uint8 tensor on the training device and augments in
batch there (airbench-style: no workers on the hot path). `FolderLoader` wraps a DataLoader with
workers for ImageFolder data. Data sieving later only changes `indices`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

log = logging.getLogger("spfde")


class BadImageError(RuntimeError):
    """An image file that does not decode (dataset.on_bad_file=error)."""


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding`, take a random crop of the original size, and flip half the batch
    horizontally. Works on a uint8 batch [B, C, H, W] on any device; randomness from `generator`
    (CPU), so results do not depend on the device."""
    b, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class InMemoryLoader:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator,
                 crop_padding: int = 0, hflip: bool = False):
        self.images, self.labels = images, labels  # uint8 [N, C, H, W] and int64 [N], on the device
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.hflip = crop_padding, hflip
        self.mean = mean.to(images.device).view(1, -1, 1, 1)
        self.std = std.to(images.device).view(1, -1, 1, 1)
        self.generator = generator
        self.indices = torch.arange(len(labels))

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_indices(self, indices: torch.Tensor) -> None:
        self.indices = indices.detach().cpu().long()

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.train:
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = order.to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.train:
                x = random_crop_flip(x, self.crop_padding, self.hflip, self.generator)
            x = (x.float().div_(255) - self.mean) / self.std
            yield x, self.labels[idx], idx


class IndexedDataset(Dataset):
    """Returns (image, label, index) so the training step knows which samples it saw. A file that
    does not decode stops the run naming it (on_bad_file=error) or is skipped, logged with its path
    and counted in `skipped` (shared with the loader's worker processes)."""

    def __init__(self, dataset: Dataset, on_bad_file: str = "error"):
        self.dataset, self.on_bad_file = dataset, on_bad_file
        self.skipped = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            image, label = self.dataset[i]
        except Exception as e:  # noqa: BLE001 - PIL raises several types for damaged files
            path = self.dataset.samples[i][0] if hasattr(self.dataset, "samples") else f"sample {i}"
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.on_bad_file == "error":
                raise BadImageError(f"{path} does not decode ({reason}): remove or replace it, or set "
                                    "dataset.on_bad_file=skip") from None
            self.skipped += 1
            log.warning(f"skipped unreadable image {path} ({reason})")
            return None
        return image, label, i


def collate_present(batch):
    """Batches without the samples that were skipped."""
    return default_collate([b for b in batch if b is not None])


class IndexSampler(Sampler):
    """Iterates over an index array, shuffled each epoch with the run's generator when training."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator, shuffle: bool):
        self.indices, self.generator, self.shuffle = indices, generator, shuffle

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        return iter(order.tolist())


class FolderLoader:
    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, generator: torch.Generator,
                 workers: int, pin_memory: bool, on_bad_file: str = "error"):
        self.dataset = IndexedDataset(dataset, on_bad_file)
        self.batch_size, self.train, self.generator = batch_size, train, generator
        self.workers, self.pin_memory = workers, pin_memory
        self.indices = torch.arange(len(dataset))

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_indices(self, indices: torch.Tensor) -> None:
        self.indices = indices.detach().cpu().long()

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        sampler = IndexSampler(self.indices, self.generator, shuffle=self.train)
        # the DataLoader draws its workers' base seed from the same generator: augmentation is
        # reproducible and resumes exactly with the generator's saved state
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                            num_workers=self.workers, pin_memory=self.pin_memory,
                            generator=self.generator, persistent_workers=False, collate_fn=collate_present)
        before = int(self.dataset.skipped)
        try:
            yield from loader
        except BadImageError as e:  # from a worker: the message carries its traceback, keep our line
            lines = [line for line in str(e).splitlines() if line.startswith("spfde.data.loaders.BadImageError")]
            raise BadImageError(lines[-1].split(": ", 1)[1] if lines else str(e)) from None
        if int(self.dataset.skipped) > before:
            log.warning(f"{int(self.dataset.skipped) - before} unreadable images skipped in this pass "
                        f"({int(self.dataset.skipped)} in all; their paths are logged above)")
