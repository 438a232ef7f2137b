"""Two loaders with one interface: iterate (images, labels, sample indices) over an index array.

`InMemoryLoader` keeps the whole set as one uint8 tensor on the training device and augments in
batch there (airbench-style: no workers on the hot path). `FolderLoader` wraps a DataLoader with
workers for ImageFolder data. Data sieving later only changes `indices`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from spfde.data.sources import Arrays, DataError, train_stats
from spfde.errors import SpfdeError

log = logging.getLogger("spfde")


class BadImageError(SpfdeError, RuntimeError):
    """An image file that does not decode (dataset.on_bad_file=error)."""


class LoaderError(DataError):
    """A DataLoader worker that died or sent no batch within dataset.timeout_s (one line for the user)."""


def epoch_batches(samples: int, batch_size: int, ranks: int = 1) -> list[int]:
    """Global batch sizes of one training epoch over `samples`: the last batch may be partial, and is
    dropped when it holds fewer than 2 samples per rank (batch norm cannot train on one sample)."""
    steps = math.ceil(samples / batch_size)
    sizes = [batch_size] * (steps - 1) + [samples - batch_size * (steps - 1)]
    if len(sizes) > 1 and sizes[-1] < 2 * ranks:
        sizes.pop()
    return sizes


def global_batches(order: torch.Tensor, sizes: list[int]):
    """(start, stop) of each global batch over `order`."""
    start = 0
    for n in sizes:
        yield start, start + n
        start += n


def augmentation_draws(batches: list[int], padding: int, hflip: bool, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The random crop offsets (dy, dx) and flips of a whole epoch, drawn batch by batch from `generator`
    (CPU, so results do not depend on the device) and moved to the device in one copy: on a GPU a copy per
    batch would make the host wait for the GPU at every step."""
    dys, dxs, flips = [], [], []
    for b in batches:
        if padding > 0:
            dys.append(torch.randint(0, 2 * padding + 1, (b,), generator=generator))
            dxs.append(torch.randint(0, 2 * padding + 1, (b,), generator=generator))
        if hflip:
            flips.append(torch.rand(b, generator=generator) < 0.5)

    def joined(parts):
        return to_device(torch.cat(parts), device) if parts else None

    return joined(dys), joined(dxs), joined(flips)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to a GPU through pinned memory, so the host does not wait for the GPU."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def hand_over(tensors: tuple, stream: torch.cuda.Stream | None) -> tuple:
    """Tensors made on a side `stream` (None: made where they are used), for the consumer's current stream: it waits
    for the side stream's work so far, and their memory is not reused before its own work with them is done."""
    if stream is None:
        return tensors
    current = torch.cuda.current_stream(stream.device)
    current.wait_stream(stream)
    for t in tensors:
        if t.is_cuda:
            t.record_stream(current)
    return tensors


def pass_draws(generator: torch.Generator) -> torch.Generator:
    """The generator of one pass's crops and flips in the streaming GPU loaders, seeded by one draw from the run
    generator: the draw the PIL loader's DataLoader makes for its worker seed, so the folder loaders consume the
    run generator alike (same sample order, exact resume; the PIL loader with workers shuffles twice a pass, as
    PyTorch's worker DataLoader iterates its sampler twice)."""
    seed = torch.empty((), dtype=torch.int64).random_(generator=generator).item()
    return torch.Generator().manual_seed(seed)


def random_crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor | None, dx: torch.Tensor | None,
                     flip: torch.Tensor | None) -> torch.Tensor:
    """Zero-pad by `padding`, crop the original size at offsets (dy, dx), and flip where `flip` is set.
    Works on a uint8 batch [B, C, H, W] on any device (the draws come from `augmentation_draws`)."""
    b, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip is not None:
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class InMemoryLoader:
    """`batch_size` is the global batch; with several ranks (`world`) each yields its part of every global
    batch, so the ranks together see what one process would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator,
                 crop_padding: int = 0, hflip: bool = False, world=None):
        self.images, self.labels = images, labels  # uint8 [N, C, H, W] and int64 [N], on the device
        self.batch_size, self.train, self.world = batch_size, train, world
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

    def batch_sizes(self) -> list[int]:
        """Global batch sizes of one pass (training may drop a tiny last batch, see `epoch_batches`)."""
        return batch_sizes(self.num_samples, self.batch_size, self.train, self.world)

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def __iter__(self):
        order = self.indices
        if self.train:
            order = order[torch.randperm(len(order), generator=self.generator)]
        device = self.images.device
        sizes = self.batch_sizes()
        if self.train:  # drawn for the global batches: every rank draws the same numbers
            dy, dx, flip = augmentation_draws(sizes, self.crop_padding, self.hflip, self.generator, device)
        order = order.to(device)
        for start, stop in global_batches(order, sizes):
            if self.world is not None:  # this rank's part of the global batch
                lo, hi = self.world.bounds(stop - start)
                start, stop = start + lo, start + hi
            idx = order[start:stop]
            x = self.images[idx]
            if self.train:
                draws = (d[start:stop] if d is not None else None for d in (dy, dx, flip))
                x = random_crop_flip(x, self.crop_padding, *draws)
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
            bad_image(path, e, self.on_bad_file)
            self.skipped += 1
            return None
        return image, label, i


# the ways out of an unreadable image, valid for a run in progress too (dataset.on_bad_file changes no result:
# it only decides whether the run stops at a bad file, and a stop keeps nothing of that epoch)
BAD_FILE_WAYS_OUT = ("replace it, or add dataset.on_bad_file=skip to skip unreadable images (removing it changes "
                     "the data set: a run in progress then needs fresh=true)")


def bad_image(path, error: Exception, on_bad_file: str) -> None:
    """An image that does not decode: raise BadImageError naming it (on_bad_file=error), or log that it is
    skipped (the caller drops and counts it). Every folder loader reports bad files through this."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if on_bad_file == "error":
        raise BadImageError(f"{path} does not decode ({reason}): {BAD_FILE_WAYS_OUT}") from None
    log.warning(f"skipped unreadable image {path} ({reason})")


def worker_error(e: BadImageError) -> BadImageError:
    """A BadImageError raised in a DataLoader worker carries the worker's traceback: keep our one line."""
    lines = [line for line in str(e).splitlines() if line.startswith("spfde.data.loaders.BadImageError")]
    return BadImageError(lines[-1].split(": ", 1)[1] if lines else str(e))


def worker_batches(loader: DataLoader, what: str, workers: int, timeout_s: float):
    """The batches of `loader`. What its worker processes raise becomes one line naming the loader (`what`) and
    the way out: a bad image (BadImageError without the worker's traceback), a worker that died, or no batch
    within `timeout_s` (the DataLoader's `timeout`; without it a stuck worker would make the run wait forever)."""
    try:
        yield from loader
    except BadImageError as e:
        raise worker_error(e) from None
    except RuntimeError as e:  # the DataLoader's own messages: "DataLoader timed out ...", "DataLoader worker ..."
        first = str(e).splitlines()[0] if str(e) else ""
        if first.startswith("DataLoader timed out"):
            raise LoaderError(f"{what}: no batch from its {workers} worker process(es) in {timeout_s:g} s (a worker "
                              "is stuck, e.g. on a hung file system): set dataset.workers=0 to load in the main "
                              "process, or raise dataset.timeout_s for slow storage") from None
        if first.startswith("DataLoader worker"):  # its first sentence: "... (pid 12) is killed by signal: Killed"
            raise LoaderError(f"{what}: a worker process died ({first.split('. ')[0].rstrip('.')}; out of "
                              "memory?): set dataset.workers=0 to load in the main process") from None
        raise


def batch_sizes(samples: int, batch_size: int, train: bool, world) -> list[int]:
    if train:
        return epoch_batches(samples, batch_size, world.size if world is not None else 1)
    return [min(batch_size, samples - s) for s in range(0, samples, batch_size)]


def collate_present(batch):
    """Batches without the samples that were skipped."""
    return default_collate([b for b in batch if b is not None])


class IndexBatches(Sampler):
    """Batches of sample indices over an index array, shuffled each epoch with the run's generator when
    training; with several ranks, this rank's part of each global batch."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator, batch_size: int, train: bool, world):
        self.indices, self.generator, self.batch_size = indices, generator, batch_size
        self.train, self.world = train, world

    def __len__(self) -> int:
        return len(batch_sizes(len(self.indices), self.batch_size, self.train, self.world))

    def __iter__(self):
        order = self.indices
        if self.train:
            order = order[torch.randperm(len(order), generator=self.generator)]
        batches = []
        for start, stop in global_batches(order, batch_sizes(len(order), self.batch_size, self.train, self.world)):
            if self.world is not None:
                lo, hi = self.world.bounds(stop - start)
                start, stop = start + lo, start + hi
            batches.append(order[start:stop].tolist())
        return iter(batches)


class FolderLoader:
    """PIL decoding and augmentation in DataLoader workers (dataset.loader=pil)."""

    name = "pil"

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, generator: torch.Generator,
                 workers: int, timeout_s: float, pin_memory: bool, on_bad_file: str = "error", world=None):
        self.dataset = IndexedDataset(dataset, on_bad_file)
        self.batch_size, self.train, self.generator, self.world = batch_size, train, generator, world
        self.workers, self.timeout_s, self.pin_memory = workers, timeout_s, pin_memory
        self.indices = torch.arange(len(dataset))

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_indices(self, indices: torch.Tensor) -> None:
        self.indices = indices.detach().cpu().long()

    def batch_sizes(self) -> list[int]:
        return batch_sizes(self.num_samples, self.batch_size, self.train, self.world)

    def __len__(self) -> int:
        return len(self.batch_sizes())

    @property
    def what(self) -> str:
        """The loader as errors name it."""
        return f"dataset.loader={self.name} ({'train' if self.train else 'val'} images)"

    def __iter__(self):
        batches = IndexBatches(self.indices, self.generator, self.batch_size, self.train, self.world)
        # the DataLoader draws its workers' base seed from the same generator: augmentation is
        # reproducible and resumes exactly with the generator's saved state. So a new DataLoader each pass
        # (persistent workers would draw that seed once, and change results and resume)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.pin_memory, generator=self.generator, persistent_workers=False,
                            collate_fn=collate_present, timeout=self.timeout_s if self.workers else 0)
        before = int(self.dataset.skipped)
        yield from worker_batches(loader, self.what, self.workers, self.timeout_s)
        if int(self.dataset.skipped) > before:
            log.warning(f"{int(self.dataset.skipped) - before} unreadable images skipped in this pass "
                        f"({int(self.dataset.skipped)} in all; their paths are logged above)")


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
