"""Datasets by name. In-memory sets (cifar10/100, digits, fake) become uint8 tensors on the training
device; folder sets (imagenet, imagefolder) stream through a DataLoader with workers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spfde.data.loaders import FolderLoader, InMemoryLoader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """Data that cannot be found or fetched; the message says what is missing and how to fix it."""


@dataclass
class Arrays:
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor


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


# ----------------------------------------------------------------------------- sources


def _to_uint8_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch to size x size (bilinear) if needed."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp_(0, 255).to(torch.uint8)


def load_digits(cfg) -> Arrays:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8).mul(255 / 16).round().to(torch.uint8)
    images = _to_uint8_size(images, cfg.image_size).repeat(1, cfg.channels, 1, 1)
    labels = torch.tensor(y, dtype=torch.int64)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=cfg.test_fraction,
                                           stratify=y, random_state=cfg.split_seed)
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return Arrays(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


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
            raise DataError(f"{title} not found in {root} and dataset.download=false: put {archive} "
                            f"(https://www.cs.toronto.edu/~kriz/{archive}) there, or set dataset.root") from None
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)  # offline machines must fail in seconds, not hang
        try:
            splits = [cls(root, train=t, download=True) for t in (True, False)]
        except Exception as e:  # noqa: BLE001 - any network/IO failure means the same thing here
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


def find_image_folder(cfg) -> Path:
    """Check that dataset.root holds train/ and val/ class folders, before anything else happens."""
    from omegaconf import OmegaConf

    what = "ImageNet (ILSVRC2012)" if cfg.name == "imagenet" else "the image folder"
    if OmegaConf.is_missing(cfg, "root") or not cfg.root:
        raise DataError(f"dataset={cfg.name} needs dataset.root=/path/to/folder with train/ and val/ "
                        "(one sub-folder of images per class in each)")
    root = Path(cfg.root).expanduser().absolute()
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        hint = (" Download ILSVRC2012 from https://image-net.org (account needed), arrange val/ into class "
                "folders like train/, and pass" if cfg.name == "imagenet" else " Pass")
        raise DataError(f"{what} not found: {root} has no {' or '.join(m + '/' for m in missing)} folder.{hint} "
                        f"dataset.root=/path/to/folder (holding train/ and val/ with one folder per class)")
    return root


# leading bytes of the formats torchvision's ImageFolder reads (by extension) through PIL
IMAGE_MAGIC = {
    ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",), ".png": (b"\x89PNG\r\n\x1a\n",),
    ".ppm": (b"P3", b"P6"), ".pgm": (b"P2", b"P5"), ".bmp": (b"BM",), ".gif": (b"GIF87a", b"GIF89a"),
    ".tif": (b"II*\x00", b"MM\x00*"), ".tiff": (b"II*\x00", b"MM\x00*"), ".webp": (b"RIFF",),
}


def _bad_header(path: Path) -> str | None:
    magic = IMAGE_MAGIC[path.suffix.lower()]
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "empty file"
    return None if head.startswith(magic) else f"not a {path.suffix.lower()[1:].upper()} file"


def check_image_folder(cfg) -> Path:
    """Check an image folder without decoding anything, before a run directory or a loader exists:
    train/ and val/ hold the same >= 2 class folders, none empty, and every image file (by the
    extensions ImageFolder reads) starts like an image of its type. Raises DataError naming the problem."""
    from concurrent.futures import ThreadPoolExecutor

    root = find_image_folder(cfg)
    files = []
    classes = {}
    for split in ("train", "val"):
        names = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        classes[split] = names
        for name in names:
            images = [p for p in (root / split / name).rglob("*") if p.suffix.lower() in IMAGE_MAGIC and p.is_file()]
            if not images:
                raise DataError(f"{root / split / name} holds no images (.jpg, .png, ...): remove the class folder "
                                "or add its images")
            files += images
    if len(classes["train"]) < 2:
        raise DataError(f"{root}/train has {len(classes['train'])} class folder(s): classification needs at "
                        "least 2 (one folder of images per class)")
    if classes["train"] != classes["val"]:
        only = sorted(set(classes["train"]) ^ set(classes["val"]))[:3]
        raise DataError(f"{root}: train/ and val/ have different class folders (e.g. {', '.join(only)})")
    with ThreadPoolExecutor(16) as pool:  # reads 16 bytes a file: cheap even for ImageNet's 1.3M files
        for path, problem in zip(files, pool.map(_bad_header, files, chunksize=256)):
            if problem:
                raise DataError(f"{path} is {problem}: remove or replace it (checked before training; "
                                "images that decode badly later follow dataset.on_bad_file)")
    return root


def build_folder_data(cfg, batch_size: int, eval_batch_size: int, generator, device, world=None) -> Data:
    from torchvision import datasets, transforms

    d = cfg.dataset
    root = check_image_folder(d)
    size = d.image_size
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size),
                                  transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    test_set = datasets.ImageFolder(str(root / "val"), transform=test_tf)
    if train_set.classes != test_set.classes:
        raise DataError(f"{root}: train/ and val/ have different class folders")
    if d.name == "imagenet" and len(train_set.classes) != d.num_classes:
        raise DataError(f"{root}/train has {len(train_set.classes)} class folders, dataset.num_classes is "
                        f"{d.num_classes}: use dataset=imagefolder for other class counts")
    pin = device.type == "cuda"
    train = FolderLoader(train_set, batch_size, train=True, generator=generator, workers=d.workers, pin_memory=pin,
                         on_bad_file=d.on_bad_file, world=world)
    test = FolderLoader(test_set, eval_batch_size, train=False, generator=generator, workers=d.workers,
                        pin_memory=pin, on_bad_file=d.on_bad_file, world=world)
    return Data(train, test, num_classes=len(train_set.classes), channels=3, image_size=size)


IN_MEMORY = {"cifar10": load_cifar, "cifar100": load_cifar, "digits": load_digits, "fake": load_fake}
FOLDERS = {"imagenet", "imagefolder"}
DATASETS = sorted(set(IN_MEMORY) | FOLDERS)


def build_data(cfg, device: torch.device, generator: torch.Generator, world=None) -> Data:
    """Train and test loaders for cfg.dataset; raises DataError (one line) when data is missing. With
    several ranks (`world`), each loader yields this rank's part of every global batch."""
    d = cfg.dataset
    if d.name in FOLDERS:
        return build_folder_data(cfg, cfg.batch_size, cfg.eval_batch_size, generator, device, world)
    arrays = IN_MEMORY[d.name](d)
    # per-channel statistics of the training images (for CIFAR these are the usual constants)
    pixels = arrays.train_images.float().div(255).transpose(0, 1).reshape(arrays.train_images.shape[1], -1)
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-3)
    to_dev = {k: v.to(device) for k, v in vars(arrays).items()}
    common = dict(mean=mean, std=std, generator=generator, world=world)
    train = InMemoryLoader(to_dev["train_images"], to_dev["train_labels"], cfg.batch_size, train=True,
                           crop_padding=d.crop_padding, hflip=d.hflip, **common)
    test = InMemoryLoader(to_dev["test_images"], to_dev["test_labels"], cfg.eval_batch_size, train=False, **common)
    return Data(train, test, num_classes=d.num_classes, channels=arrays.train_images.shape[1],
                image_size=arrays.train_images.shape[-1])
