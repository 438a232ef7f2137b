"""Data sources that fit in memory (digits, fake, CIFAR): each returns uint8 image tensors and labels."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spfde.errors import SpfdeError
from spfde.rundir.checkpoint import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(SpfdeError, RuntimeError):
    """Data that cannot be found or fetched; the message says what is missing and how to fix it."""


@dataclass
class Arrays:
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor


def train_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 training images (for CIFAR these are the usual constants)."""
    pixels = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return pixels.mean(1), pixels.std(1).clamp_min(1e-3)


def _to_uint8_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch to size x size (bilinear) if needed."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp_(0, 255).to(torch.uint8)


def load_digits(cfg) -> Arrays:
    images, labels, train_idx, test_idx = digits_split(float(cfg.test_fraction), int(cfg.split_seed))
    images = _to_uint8_size(images, cfg.image_size).repeat(1, cfg.channels, 1, 1)
    return Arrays(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


# What a data source keeps between runs because making it again costs start-up time: the digits split (without
# it every run imports scikit-learn, a second of CPU). SPFDE_CACHE_DIR moves it; else $XDG_CACHE_HOME/spfde.
CACHE_ENV = "SPFDE_CACHE_DIR"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "spfde"


def digits_split(test_fraction: float, split_seed: int):
    """scikit-learn's digits as uint8 8x8 images and labels, with its stratified train/test index split. The first
    load stores them in the cache directory, named by the scikit-learn version; later loads read that file and do
    not import scikit-learn (a file that cannot be read or written is made again, or not kept)."""
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        version = None  # the import below says what is missing
    path = cache_dir() / f"digits-sklearn-{version}-test{test_fraction!r}-seed{split_seed}.pt"
    if version is not None and path.is_file():
        with contextlib.suppress(Exception):  # damaged or foreign: made again below
            saved = torch.load(path, weights_only=True)
            return saved["images"], saved["labels"], saved["train_idx"], saved["test_idx"]

    # sklearn (through rich) draws from Python's global RNG when it is first imported: keep the run's seeded
    # stream the same whether this process imported it before or not
    state = random.getstate()
    from sklearn.datasets import load_digits as sk_digits  # local: a second of start-up, digits only, uncached
    from sklearn.model_selection import train_test_split

    random.setstate(state)

    x, y = sk_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8).mul(255 / 16).round().to(torch.uint8)
    labels = torch.tensor(y, dtype=torch.int64)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=test_fraction, stratify=y,
                                           random_state=split_seed)
    saved = {"images": images, "labels": labels, "train_idx": torch.tensor(train_idx),
             "test_idx": torch.tensor(test_idx)}
    with contextlib.suppress(OSError, SpfdeError):  # a read-only home: nothing kept, nothing lost
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(saved, tmp))
    return saved["images"], saved["labels"], saved["train_idx"], saved["test_idx"]


def load_fake(cfg) -> Arrays:
    """Random uint8 images and labels, one seeded tensor draw (torchvision's FakeData draws each image
    through PIL, which took over a minute for 60k CIFAR-sized images). Fixed across run seeds, like a
    real data set; `split_seed` picks another one."""
    generator = torch.Generator().manual_seed(cfg.split_seed)

    def make(size: int):
        images = torch.randint(0, 256, (size, cfg.channels, cfg.image_size, cfg.image_size), dtype=torch.uint8,
                               generator=generator)
        return images, torch.randint(0, cfg.num_classes, (size,), generator=generator)

    return Arrays(*make(cfg.train_size), *make(cfg.test_size))


CIFAR_FILES = {
    "cifar10": ("CIFAR10", "CIFAR-10", "cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR100", "CIFAR-100", "cifar-100-python.tar.gz"),
}


def load_cifar(cfg) -> Arrays:
    import torchvision.datasets as tvd

    class_name, title, archive = CIFAR_FILES[cfg.name]
    cls = getattr(tvd, class_name)
    root = os.path.abspath(cfg.root)
    try:
        splits = [cls(root, train=t, download=False) for t in (True, False)]
    except RuntimeError:
        if not cfg.download:
            raise DataError(f"{title} not found in {root} and dataset.download=false: extract {archive} "
                            f"(https://www.cs.toronto.edu/~kriz/{archive}) there (tar -xzf {archive} -C {root}), "
                            "or set dataset.root to a folder that has it") from None
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)  # offline machines must fail in seconds, not hang
        made = [p for p in (Path(root), *Path(root).parents) if not p.exists()]  # what the download would create
        try:
            splits = [cls(root, train=t, download=True) for t in (True, False)]
        except Exception as e:  # noqa: BLE001 - any network/IO failure means the same thing here
            for folder in made:  # a failed download leaves no empty folders behind (deepest first)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{title} not found in {root} and the download failed ({reason}). Put {archive} "
                            f"(https://www.cs.toronto.edu/~kriz/{archive}) or its extracted folder in {root}, "
                            f"or point dataset.root at a folder that has it") from None
        finally:
            socket.setdefaulttimeout(previous)

    def arrays(ds):
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW uint8
        return _to_uint8_size(images, cfg.image_size), torch.tensor(ds.targets, dtype=torch.int64)

    return Arrays(*arrays(splits[0]), *arrays(splits[1]))


IN_MEMORY = {"cifar10": load_cifar, "cifar100": load_cifar, "digits": load_digits, "fake": load_fake}
