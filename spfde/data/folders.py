"""Image-folder datasets (imagenet, imagefolder): checks before any work, and the loaders."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from spfde.data.dali import DaliLoader
from spfde.data.gpu_decode import GpuDecodeLoader
from spfde.data.loaders import BAD_FILE_WAYS_OUT, Data, FolderLoader, bad_image, in_memory_data
from spfde.data.sources import IMAGENET_MEAN, IMAGENET_STD, Arrays, DataError

FOLDERS = {"imagenet", "imagefolder"}
SMALL_IMAGE = 64  # px: folders whose sampled images are at most this on their longer side count as small
IN_MEMORY_CAP = 2 * 2**30  # bytes: in_memory=auto decodes small folders into memory up to this (uint8 train + val)
SIZE_SAMPLE = 32  # images whose sizes are read (headers only) to tell small folders from large ones
JPEG_SUFFIXES = (".jpg", ".jpeg")
log = logging.getLogger("spfde")


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


# leading bytes of the formats torchvision's ImageFolder reads (by extension) through PIL (.gif is not one)
IMAGE_MAGIC = {
    ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",), ".png": (b"\x89PNG\r\n\x1a\n",),
    ".ppm": (b"P3", b"P6"), ".pgm": (b"P2", b"P5"), ".bmp": (b"BM",),
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


@dataclass
class FolderListing:
    root: Path
    classes: list[str]
    train_images: int
    val_images: int


def check_image_folder(cfg) -> Path:
    """`list_image_folder`, for its root."""
    return list_image_folder(cfg).root


def walk_once(top: Path):
    """(folder, file names) under `top` as os.walk(followlinks=True) gives them — as torchvision's ImageFolder walks a
    class folder — but entering each real folder once: a symbolic link back up the tree (a loop) is not followed
    again, so the run and its plan read the same files."""
    seen = set()
    for root, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield root, files


def image_files(class_dir: Path) -> list[Path]:
    """Every file under a class folder, in ImageFolder's order (folders sorted, then file names)."""
    return [Path(root) / name for root, files in sorted(walk_once(class_dir)) for name in sorted(files)]


def image_folder(split_dir: Path):
    """torchvision's ImageFolder over `split_dir`, reading the files `image_files` lists."""
    from torchvision import datasets
    from torchvision.datasets.folder import has_file_allowed_extension

    class ImageFolder(datasets.ImageFolder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            valid = is_valid_file or (lambda path: has_file_allowed_extension(path, extensions))
            return [(str(path), class_to_idx[c]) for c in sorted(class_to_idx)
                    for path in image_files(Path(directory) / c) if valid(str(path))]

    return ImageFolder(str(split_dir))


def list_image_folder(cfg) -> FolderListing:
    """Check an image folder without decoding anything, before a run directory or a loader exists:
    train/ and val/ hold the same >= 2 class folders (ImageNet's 1000), none without images ImageFolder
    reads, and every image file starts like an image of its type (with dataset.on_bad_file=skip a file that
    does not is left to the loader, which skips it). Raises DataError naming the problem; returns the class
    names and image counts (what the run will read)."""
    from concurrent.futures import ThreadPoolExecutor

    root = find_image_folder(cfg)
    files = {"train": [], "val": []}
    classes = {}
    for split in ("train", "val"):
        names = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        classes[split] = names
        for name in names:
            found = [p for p in image_files(root / split / name) if p.is_file()]
            images = [p for p in found if p.suffix.lower() in IMAGE_MAGIC]
            if not images:
                others = sorted({p.suffix.lower() or p.name for p in found})
                what = f"it has only {', '.join(others)} files: convert them" if others else "add its images"
                raise DataError(f"{root / split / name} holds no images ImageFolder reads ({', '.join(IMAGE_MAGIC)}); "
                                f"{what}, or remove the class from train/ and val/")
            files[split] += images
    if len(classes["train"]) < 2:
        raise DataError(f"{root}/train has {len(classes['train'])} class folder(s): classification needs at "
                        "least 2 (one folder of images per class)")
    if classes["train"] != classes["val"]:
        only = sorted(set(classes["train"]) ^ set(classes["val"]))[:3]
        raise DataError(f"{root}: train/ and val/ have different class folders (e.g. {', '.join(only)})")
    if cfg.name == "imagenet" and len(classes["train"]) != cfg.num_classes:
        raise DataError(f"{root}/train has {len(classes['train'])} class folders, dataset.num_classes is "
                        f"{cfg.num_classes}: use dataset=imagefolder for other class counts")
    if cfg.on_bad_file != "skip":
        with ThreadPoolExecutor(16) as pool:  # reads 16 bytes a file: cheap even for ImageNet's 1.3M files
            every = files["train"] + files["val"]
            for path, problem in zip(every, pool.map(_bad_header, every, chunksize=256)):
                if problem:
                    raise DataError(f"{path} is {problem}: {BAD_FILE_WAYS_OUT}")
    return FolderListing(root, classes["train"], len(files["train"]), len(files["val"]))


def sampled_max_side(root: Path) -> int:
    """Longest side among up to SIZE_SAMPLE training images spread over the classes (headers only)."""
    from PIL import Image

    classes = sorted(p for p in (root / "train").iterdir() if p.is_dir())[:SIZE_SAMPLE]
    per_class = max(1, SIZE_SAMPLE // max(1, len(classes)))
    side = 0
    for c in classes:
        files = [p for p in image_files(c) if p.suffix.lower() in IMAGE_MAGIC and p.is_file()][:per_class]
        for f in files:
            try:
                with Image.open(f) as img:
                    side = max(side, *img.size)
            except Exception:  # noqa: BLE001 - a damaged file is reported by the loader (on_bad_file)
                continue
    return side


def auto_image_size(max_side: int) -> int:
    """image_size 0: the native size of small images, ImageNet's 224 otherwise."""
    return max_side if 0 < max_side <= SMALL_IMAGE else 224


def planned_image_size(d) -> int:
    """The image size a run will use, for planning: dataset.image_size, or with 0 read from the folder
    (224 when the folder cannot be read: planning needs no data)."""
    if d.image_size > 0 or d.name not in FOLDERS:
        return d.image_size
    try:
        return auto_image_size(sampled_max_side(find_image_folder(d)))
    except (DataError, OSError):
        return 224


@dataclass
class FolderChoice:
    """How a folder is loaded, decided from the config, the device and a look at the images."""
    image_size: int
    small: bool
    augment: str  # imagenet | cifar | none
    loader: str  # in-memory | pil | gpu | dali
    hflip: bool


def dali_installed() -> bool:
    """Is NVIDIA DALI importable (the optional `[dali]` extra)?"""
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` package at all
        return False


def choose(d, device: torch.device, samples: int, max_side: int, jpeg_only: bool) -> FolderChoice:
    small = 0 < max_side <= SMALL_IMAGE
    size = d.image_size or auto_image_size(max_side)
    augment = d.augment if d.augment != "auto" else ("cifar" if small else "imagenet")
    in_memory = str(d.in_memory).lower()
    fits = samples * d.channels * size * size <= IN_MEMORY_CAP
    if in_memory == "true" or (in_memory == "auto" and small and fits and augment != "imagenet"):
        loader = "in-memory"
        if augment == "imagenet":
            raise DataError("dataset.in_memory=true serves images at image_size, which RandomResizedCrop cannot "
                            "use: set dataset.augment=cifar or none, or dataset.in_memory=false")
    elif d.loader != "auto":
        loader = d.loader
    elif device.type == "cuda" and jpeg_only:
        loader = "dali" if dali_installed() else "gpu"
    else:
        loader = "pil"
    if loader == "dali" and augment == "cifar":
        raise DataError("dataset.loader=dali implements augment=imagenet or none; small images load in memory "
                        "(dataset.in_memory=auto) or use dataset.loader=gpu or pil for augment=cifar")
    return FolderChoice(size, small, augment, loader, hflip=bool(d.hflip) and augment != "none")


def normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics; for grayscale their channel average."""
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def pil_transforms(choice: FolderChoice, channels: int, train: bool):
    """PIL-path transforms: the train augmentation of `choice`, or the evaluation resize (+ centre crop)."""
    from torchvision import transforms

    size = choice.image_size
    if choice.small:  # whole small images, stretched to size x size when they differ
        evaluation = [transforms.Resize((size, size))]
    else:
        evaluation = [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size)]
    if not train or choice.augment == "none":
        steps = evaluation
    elif choice.augment == "imagenet":
        steps = [transforms.RandomResizedCrop(size)]
    else:  # cifar
        steps = [transforms.Resize((size, size)), transforms.RandomCrop(size, padding=size // 8)]
    if train and choice.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(*normalization(channels))])


def open_image(path: str, channels: int):
    """PIL image in RGB, or grayscale ("L") when the run asks for one channel."""
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("L" if channels == 1 else "RGB")


def decode_into_memory(samples: list[tuple[str, int]], size: int, channels: int, on_bad_file: str, what: str):
    """Decode every image once (PIL, threads), resized to size x size where it differs: uint8 [N, C, S, S] and
    int64 labels. Bad files follow on_bad_file (skipped ones are left out)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    def load(sample):
        path, _ = sample
        try:
            img = open_image(path, channels)
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(img).copy()).view(size, size, channels).permute(2, 0, 1)
        except Exception as e:  # noqa: BLE001 - PIL raises several types for damaged files
            return e

    start = time.perf_counter()
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(load, samples, chunksize=64))
    images, labels, skipped = [], [], 0
    for (path, label), image in zip(samples, loaded):
        if isinstance(image, Exception):
            bad_image(path, image, on_bad_file)
            skipped += 1
            continue
        images.append(image)
        labels.append(label)
    if not images:
        raise DataError(f"no image of the {what} split decodes (the first failures are logged above)")
    if skipped:
        log.warning(f"{skipped} unreadable {what} images skipped (their paths are logged above)")
    log.info(f"decoded {len(images)} {what} images into memory in {time.perf_counter() - start:.1f} s")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def build_folder_data(cfg, batch_size: int, eval_batch_size: int, generator, device, world=None) -> Data:
    """Loaders for an image folder: small folders decode once into memory (the in-memory loader, no workers);
    large ones stream through PIL, torchvision-GPU or DALI decoding (`choose`). Every streaming loader walks
    the same `IndexBatches` order, so sieving and exact resume do not depend on the loader."""
    d = cfg.dataset
    root = check_image_folder(d)
    train_set, test_set = image_folder(root / "train"), image_folder(root / "val")
    if train_set.classes != test_set.classes:
        raise DataError(f"{root}: train/ and val/ have different class folders")
    samples = len(train_set) + len(test_set)
    jpeg_only = all(p.lower().endswith(JPEG_SUFFIXES) for p, _ in train_set.samples + test_set.samples)
    max_side = sampled_max_side(root)
    choice = choose(d, device, samples, max_side, jpeg_only)
    size, channels, classes = choice.image_size, d.channels, len(train_set.classes)
    log.info(f"data: {d.name} {max_side}px images (sampled) at {size}x{size}x{channels}, "
             f"{'in memory' if choice.loader == 'in-memory' else 'streamed'}, augment {choice.augment}, "
             f"hflip {choice.hflip}, loader {choice.loader}")
    if choice.loader == "in-memory":
        arrays = Arrays(*decode_into_memory(train_set.samples, size, channels, d.on_bad_file, "train"),
                        *decode_into_memory(test_set.samples, size, channels, d.on_bad_file, "val"))
        padding = size // 8 if choice.augment == "cifar" else 0
        return in_memory_data(arrays, cfg, device, generator, world, num_classes=classes, crop_padding=padding,
                              hflip=choice.hflip)
    common = dict(generator=generator, workers=d.workers, on_bad_file=d.on_bad_file, world=world)
    if choice.loader == "pil":
        for dataset, train in ((train_set, True), (test_set, False)):
            dataset.transform = pil_transforms(choice, channels, train)
            dataset.loader = functools.partial(open_image, channels=channels)  # picklable for workers
        pin = device.type == "cuda"
        train = FolderLoader(train_set, batch_size, train=True, pin_memory=pin, timeout_s=d.timeout_s, **common)
        test = FolderLoader(test_set, eval_batch_size, train=False, pin_memory=pin, timeout_s=d.timeout_s, **common)
    else:
        mean, std = normalization(channels)
        opts = dict(device=device, image_size=size, augment=choice.augment, small=choice.small, hflip=choice.hflip,
                    channels=channels, mean=mean, std=std, seed=cfg.seed, **common)
        if choice.loader == "gpu":
            Loader = GpuDecodeLoader
            opts["timeout_s"] = d.timeout_s  # DALI reads files in the main process: no worker to wait for
        else:
            Loader = DaliLoader  # its library (the `dali` extra) loads when the loader starts
        train = Loader(train_set.samples, batch_size, train=True, **opts)
        test = Loader(test_set.samples, eval_batch_size, train=False, **opts)
    return Data(train, test, num_classes=classes, channels=channels, image_size=size)
