"""Image-folder datasets (imagenet, imagefolder): checks before any work, and the loaders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spfde.data.loaders import FolderLoader
from spfde.data.sources import IMAGENET_MEAN, IMAGENET_STD, DataError

if TYPE_CHECKING:
    from spfde.data import Data

FOLDERS = {"imagenet", "imagefolder"}


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
    from spfde.data import Data

    return Data(train, test, num_classes=len(train_set.classes), channels=3, image_size=size)
