"""Image-folder loaders (issue 13): PIL, torchvision decode (tested on the CPU) and DALI share the sample
order; small folders load into memory with CIFAR-style augmentation; grayscale and hflip are honoured."""

from __future__ import annotations

import gc
import os
import re
import time

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from spfde.checks.command_line import precheck_overrides
from spfde.config import ConfigError
from spfde.data import build_data
from spfde.data.folders import FolderChoice, dali_installed, pil_transforms
from spfde.data.gpu_decode import GpuDecodeLoader, pack
from spfde.data.loaders import FolderLoader, LoaderError
from tests.helpers import make_cfg, run_cli


def write_folder(root, size=(40, 30), classes=3, per_class=6, mode="RGB", suffix="jpg"):
    g = torch.Generator().manual_seed(0)
    channels = 1 if mode == "L" else 3
    for split, n in (("train", per_class), ("val", max(2, per_class // 3))):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.squeeze(-1).numpy(), mode=mode).save(root / split / f"c{c}" / f"{i}.{suffix}")
    return root


def loaders(root, indices=None, batch_size=4):
    """The PIL loader and the torchvision-decode loader over the same folder, each with its own generator."""
    from torchvision import datasets

    train_set = datasets.ImageFolder(str(root / "train"))
    choice = FolderChoice(image_size=16, small=False, augment="imagenet", loader="pil", hflip=True)
    train_set.transform = pil_transforms(choice, 3, train=True)
    pil = FolderLoader(train_set, batch_size, train=True, generator=torch.Generator().manual_seed(7), workers=0,
                       timeout_s=60, pin_memory=False)
    gpu = GpuDecodeLoader(train_set.samples, batch_size, train=True, generator=torch.Generator().manual_seed(7),
                          device=torch.device("cpu"), image_size=16, timeout_s=60)
    out = [pil, gpu]
    if dali_installed():
        from spfde.data.dali import DaliLoader

        out.append(DaliLoader(train_set.samples, batch_size, train=True, generator=torch.Generator().manual_seed(7),
                              device=torch.device("cpu"), image_size=16, workers=1))
    for loader in out:
        if indices is not None:
            loader.set_indices(indices)
    return out


def epoch_indices(loader) -> list[list[int]]:
    return [b[2].tolist() for b in loader]


@pytest.mark.parametrize("sieved", [False, True])
def test_loaders_walk_the_same_indices_per_epoch_and_resume(tmp_path, sieved):
    root = write_folder(tmp_path / "f")
    indices = torch.tensor([0, 2, 3, 5, 7, 8, 11, 13, 14, 17]) if sieved else None
    all_loaders = loaders(root, indices)
    runs = []
    for loader in all_loaders:
        first = epoch_indices(loader)
        state = loader.generator.get_state()
        second = epoch_indices(loader)
        loader.generator.set_state(state)  # a resumed run: the generator's saved state replays epoch 2
        assert epoch_indices(loader) == second
        runs.append((first, second))
    assert all(r == runs[0] for r in runs[1:])
    first, second = runs[0]
    expected = sorted(indices.tolist()) if sieved else list(range(18))
    assert sorted(sum(first, [])) == expected and sorted(sum(second, [])) == expected
    assert first != second  # reshuffled each epoch


def test_gpu_decode_loader_output_flips_and_deterministic_validation(tmp_path):
    root = write_folder(tmp_path / "f")
    from torchvision import datasets

    samples = datasets.ImageFolder(str(root / "train")).samples
    make = dict(generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), image_size=16, timeout_s=60)
    train = GpuDecodeLoader(samples, 5, train=True, **make)
    x, y, idx = next(iter(train))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64 and len(idx) == 5
    assert -3 < x.mean() < 3 and 0.3 < x.std() < 3  # normalised with ImageNet's mean and std
    val = GpuDecodeLoader(samples, 5, train=False, **make)
    first, again = [torch.cat([b[0] for b in val]) for _ in range(2)]
    assert torch.equal(first, again) and first.shape == (18, 3, 16, 16)
    # flips only where hflip: with the crop switched off, each image is its evaluation view or its mirror
    images, _, _ = val.decode(pack([val.dataset[i] for i in range(18)]))
    reference = val.transform(images, torch.Generator())
    for hflip in (False, True):
        loader = GpuDecodeLoader(samples, 18, train=True, augment="none", **make)
        loader.hflip = hflip  # augment=none turns flips off; force them to test the flip step alone
        out = loader.transform(images, torch.Generator().manual_seed(1))
        flipped = [not torch.equal(a, b) for a, b in zip(out, reference)]
        assert all(torch.equal(a, b.flip(2)) for a, b, f in zip(out, reference, flipped) if f)
        assert any(flipped) == hflip


def per_image_view(image, box, size):
    """The GPU loader's resampling before it was batched, the reference: the box cropped and resized alone,
    antialiased bilinear (float, 0-255)."""
    import torch.nn.functional as F

    top, left, h, w = box
    if float(top).is_integer() and float(left).is_integer() and float(h).is_integer() and float(w).is_integer():
        crop, new = image[:, int(top):int(top + h), int(left):int(left + w)], (size, size)
    else:  # an evaluation box: resize the whole image so that the box becomes size x size, then crop it
        new = (round(image.shape[-2] * size / h), round(image.shape[-1] * size / w))
        crop = image
    if tuple(crop.shape[-2:]) == new:
        out = crop.float()
    else:
        out = F.interpolate(crop[None].float(), size=new, mode="bilinear", antialias=True, align_corners=False)[0]
    if crop is image:
        y, x = round(top * new[0] / image.shape[-2]), round(left * new[1] / image.shape[-1])
        out = out[:, y:y + size, x:x + size]
    return out


def smooth_images(sizes, seed=0):
    """uint8 RGB images that vary smoothly (a 5 x 5 random grid, bicubic): resamplers then differ only a little."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    grids = [torch.rand(1, 3, 5, 5, generator=g) * 255 for _ in sizes]
    return [F.interpolate(grid, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 255).round()
            .to(torch.uint8) for grid, size in zip(grids, sizes)]


def write_smooth_folder(root, count, seed=1):
    """`count` smooth JPEGs of 20-90 px sides in two class folders."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    sizes = [tuple(int(v) for v in torch.randint(20, 90, (2,), generator=g)) for _ in range(count)]
    for k, image in enumerate(smooth_images(sizes, seed)):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"c{k % 2}" / f"{k}.jpg", quality=95)
    return root


def close_views(new, reference):
    """Mean difference under half a grey level (of 255), inside the 1-pixel frame at most 4: an average of samples
    is not quite a triangle filter. On the frame of an upscaled crop, the batched resampler reads the image's pixels
    just past the crop, where F.interpolate repeats the crop's edge."""
    diff = (new - reference).abs()
    return diff.mean() < 0.5 and diff[..., 1:-1, 1:-1].max() < 4 and diff.max() < 25


class RecordOps(TorchDispatchMode):
    """The names of the aten operators run inside it; "boolean mask" for indexing with one (a nonzero on CUDA)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        self.names.add(name)
        if name.startswith("index") and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                            for i in (args[1] if len(args) > 1 and isinstance(args[1], list) else [])):
            self.names.add("boolean mask")
        return func(*args, **(kwargs or {}))


def test_batched_resampling_matches_the_per_image_interpolate(monkeypatch):
    from spfde.data import gpu_decode
    from spfde.data.gpu_decode import crops_resized, eval_box, resized_crop_params

    g = torch.Generator().manual_seed(0)
    sizes = [tuple(int(v) for v in torch.randint(12, 160, (2,), generator=g)) for _ in range(24)] + [(32, 32)]
    images = smooth_images(sizes)
    size = 32
    train = [resized_crop_params(h, w, g) for h, w in sizes]
    for boxes in (train, [eval_box(h, w, size, False) for h, w in sizes],
                  [eval_box(h, w, size, True) for h, w in sizes]):
        reference = torch.stack([per_image_view(im, box, size) for im, box in zip(images, boxes)])
        assert close_views(crops_resized(images, boxes, size), reference)
    # a box of the output's size is copied exactly; grayscale is PIL's luma of the RGB, rounded
    assert torch.equal(crops_resized(images[-1:], [(0, 0, 32, 32)], size)[0], images[-1].float())
    luma = torch.tensor((0.299, 0.587, 0.114)).view(3, 1, 1)
    gray = [(im.float() * luma).sum(0, keepdim=True).round().to(torch.uint8) for im in images]
    reference = torch.stack([per_image_view(im, box, size) for im, box in zip(gray, train)])
    assert close_views(crops_resized(images, train, size, luma), reference)
    # nothing in it waits for the device (on CUDA: no .item(), no nonzero, no boolean masks)
    with RecordOps() as ops:
        whole = crops_resized(images, train, size)
    assert not {"_local_scalar_dense", "nonzero", "masked_select", "boolean mask"} & ops.names
    # a canvas over roi_align's 32-bit index limit is split into halves of the batch: the same views
    monkeypatch.setattr(gpu_decode, "CANVAS_LIMIT", 3 * 200 * 200)
    assert torch.allclose(crops_resized(images, train, size), whole, atol=1e-3)


def test_gpu_decode_loader_draws_the_same_boxes_and_flips_as_before(tmp_path, monkeypatch):
    """The boxes and flips come from the per-pass generator image by image, as before the resampling was batched;
    so the sample order, the draws and exact resume are unchanged."""
    from PIL import Image
    from torchvision import datasets

    from spfde.data import gpu_decode
    from spfde.data.gpu_decode import resized_crop_params
    from spfde.data.loaders import IndexBatches, pass_draws

    samples = datasets.ImageFolder(str(write_smooth_folder(tmp_path / "f", 10))).samples
    loader = GpuDecodeLoader(samples, 4, train=True, generator=torch.Generator().manual_seed(7),
                             device=torch.device("cpu"), image_size=24, timeout_s=60)
    seen = []

    def spy(images, boxes, size, luma=None):
        seen.append((images, boxes, crops_resized(images, boxes, size, luma)))
        return seen[-1][2]

    crops_resized = gpu_decode.crops_resized
    monkeypatch.setattr(gpu_decode, "crops_resized", spy)
    out = list(loader)
    # the draws before batching: the order, then per batch each image's box and then the batch's flips
    run = torch.Generator().manual_seed(7)
    order = list(IndexBatches(torch.arange(len(samples)), run, 4, True, None))
    draws = pass_draws(run)
    mean, std = loader.mean, loader.std
    for batch, (x, _, index), (images, boxes, resampled) in zip(order, out, seen):
        assert index.tolist() == batch
        shapes = [Image.open(samples[i][0]).size[::-1] for i in batch]
        assert boxes == [resized_crop_params(h, w, draws) for h, w in shapes]
        flips = torch.rand(len(batch), generator=draws) < 0.5
        expected = torch.where(flips[:, None, None, None], resampled.flip(3), resampled)
        assert torch.allclose(x * std + mean, expected, atol=1e-3)
        reference = torch.stack([per_image_view(im, box, 24) for im, box in zip(images, boxes)])
        assert close_views(resampled, reference)


def test_grayscale_gpu_decode_keeps_one_channel(tmp_path):
    root = write_folder(tmp_path / "g", size=(28, 28), mode="L")
    from torchvision import datasets

    samples = datasets.ImageFolder(str(root / "train")).samples
    loader = GpuDecodeLoader(samples, 4, train=True, generator=torch.Generator(), device=torch.device("cpu"),
                             image_size=28, timeout_s=60, augment="cifar", small=True, hflip=False, channels=1,
                             mean=(0.45,), std=(0.23,))
    assert next(iter(loader))[0].shape == (4, 1, 28, 28)


def pil_loader(root, train: bool, workers: int, split="train"):
    from torchvision import datasets

    dataset = datasets.ImageFolder(str(root / split))
    choice = FolderChoice(image_size=16, small=False, augment="imagenet", loader="pil", hflip=True)
    dataset.transform = pil_transforms(choice, 3, train=train)
    return FolderLoader(dataset, 4, train=train, generator=torch.Generator().manual_seed(7), workers=workers,
                        timeout_s=60, pin_memory=False)


def gpu_loader(root, train: bool, workers: int, augment="imagenet"):
    from torchvision import datasets

    samples = datasets.ImageFolder(str(root / "train")).samples
    return GpuDecodeLoader(samples, 4, train=train, generator=torch.Generator().manual_seed(7),
                           device=torch.device("cpu"), image_size=16, timeout_s=60, augment=augment,
                           workers=workers)


def passes(loader, n=2):
    return [[tuple(t.clone() for t in batch) for batch in loader] for _ in range(n)]


def same_batches(a, b, parts=(0, 1, 2)) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(torch.equal(bx[k], by[k]) for bx, by in zip(x, y)
                                                             for k in parts) for x, y in zip(a, b))


@pytest.mark.timeout(180)
def test_pil_loader_with_two_workers_gives_the_same_evaluation_and_reproducible_training(tmp_path):
    """Evaluation batches equal those without workers. Training with workers is reproducible and covers the same
    samples, but its order and crops differ from workers=0 (PyTorch's worker DataLoader iterates the sampler twice
    per pass, so the run generator gives the second shuffle; crops come from the workers' seeded generators):
    kept as it was, since results and exact resume of existing runs depend on it (README, Deviations)."""
    root = write_folder(tmp_path / "f")
    assert same_batches(passes(pil_loader(root, False, 0)), passes(pil_loader(root, False, 2)))
    main, workers = passes(pil_loader(root, True, 0)), passes(pil_loader(root, True, 2))
    assert same_batches(workers, passes(pil_loader(root, True, 2)))
    for a, b in zip(main, workers):
        assert sorted(torch.cat([x[2] for x in a]).tolist()) == sorted(torch.cat([x[2] for x in b]).tolist())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("augment", ["imagenet", "cifar"])
def test_gpu_decode_loader_with_two_workers_gives_the_same_batches(tmp_path, augment):
    """Workers only read file bytes (the hang came from sending file-mapped tensors): the same images, labels and
    indices as without workers, pass after pass (the workers persist), PNGs (decoded in the workers) included."""
    root = write_folder(tmp_path / "f")
    write_folder(tmp_path / "f", classes=1, per_class=3, suffix="png")  # c0 gets PNGs next to its JPEGs
    for train in (True, False):
        main = passes(gpu_loader(root, train, 0, augment))
        assert same_batches(main, passes(gpu_loader(root, train, 2, augment)))
        assert sum(len(b[2]) for b in main[0]) == (20 if train else 21)  # training drops a last batch of 1


class Blocking(torch.utils.data.Dataset):
    """A dataset whose worker gets stuck (or dies) on item 5."""

    def __init__(self, dataset, dies: bool):
        self.dataset, self.dies = dataset, dies
        self.samples, self.skipped = getattr(dataset, "samples", None), getattr(dataset, "skipped", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == 5 and torch.utils.data.get_worker_info() is not None:
            if self.dies:
                os._exit(3)
            time.sleep(600)
        return self.dataset[i]


@pytest.mark.slow
@pytest.mark.whole_machine
@pytest.mark.timeout(120)
@pytest.mark.parametrize("dies", [False, True], ids=["stuck", "dead"])
@pytest.mark.parametrize("kind", ["pil", "gpu"])
def test_a_stuck_or_dead_worker_is_a_one_line_error_naming_the_loader(tmp_path, monkeypatch, kind, dies):
    import torch.utils.data._utils as data_utils

    monkeypatch.setattr(data_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)  # join the stuck worker quickly at shutdown
    root = write_folder(tmp_path / "f", per_class=3)
    loader = pil_loader(root, True, 2) if kind == "pil" else gpu_loader(root, True, 2)
    loader.timeout_s = 1.5
    loader.dataset = Blocking(loader.dataset, dies)
    start = time.perf_counter()
    with pytest.raises(LoaderError) as err:
        list(loader)
    message = str(err.value)
    assert "\n" not in message and f"dataset.loader={kind} (train images)" in message
    assert "set dataset.workers=0" in message
    expected = "worker process died" if dies else "no batch from its 2 worker process(es) in 1.5 s"
    assert expected in message
    assert time.perf_counter() - start < 30
    del loader, err  # the stuck worker is ended now, while the short shutdown interval holds
    gc.collect()


def folder_run(root, tmp_path, *extra):
    return run_cli(["experiment=quickstart", "model.depth=8", "dataset=imagefolder", f"dataset.root={root}",
                    "dataset.workers=0", "epochs=1", "batch_size=8", "logger=none", "progress=false", "device=cpu",
                    f"hydra.run.dir={tmp_path / 'run'}", *extra], cwd=tmp_path, timeout=300)


@pytest.mark.slow
def test_small_rgb_folder_trains_in_memory_with_cifar_augmentation(tmp_path):
    root = write_folder(tmp_path / "f", size=(32, 32), suffix="png")
    data = build_data(make_cfg(["dataset=imagefolder", f"dataset.root={root}"]), torch.device("cpu"),
                      torch.Generator())
    assert data.image_size == 32 and data.channels == 3 and data.train.images.shape == (18, 3, 32, 32)
    assert data.train.crop_padding == 4 and data.train.hflip
    proc = folder_run(root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "at 32x32x3, in memory, augment cifar, hflip True, loader in-memory" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_grayscale_folder_keeps_one_channel_and_no_flip(tmp_path):
    root = write_folder(tmp_path / "g", size=(28, 28), mode="L", suffix="png")
    cfg = make_cfg(["dataset=imagefolder", f"dataset.root={root}", "dataset.channels=1", "dataset.hflip=false"])
    data = build_data(cfg, torch.device("cpu"), torch.Generator())
    assert data.channels == 1 and data.image_size == 28 and data.train.images.shape[1] == 1
    assert not data.train.hflip and data.train.crop_padding == 28 // 8
    proc = folder_run(root, tmp_path, "dataset.channels=1", "dataset.hflip=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "at 28x28x1, in memory, augment cifar, hflip False" in proc.stdout + proc.stderr


def test_large_folder_streams_with_pil_on_cpu_and_plan_sees_the_size(tmp_path):
    root = write_folder(tmp_path / "f", size=(80, 70))
    cfg = make_cfg(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=0", "batch_size=4"])
    data = build_data(cfg, torch.device("cpu"), torch.Generator())
    assert isinstance(data.train, FolderLoader) and data.image_size == 224
    from spfde.planning.plan import build_plan

    assert build_plan(cfg)["train_flops"] > 0


@pytest.mark.slow
def test_bad_loader_values_are_one_line_errors_before_training(tmp_path):
    root = write_folder(tmp_path / "f", per_class=2)
    base = ["experiment=quickstart", "dataset=imagefolder", f"dataset.root={root}", "device=cpu"]
    cases = [("dataset.loader=gpu", "dataset.loader=gpu decodes images on a CUDA device"),
             ("dataset.augment=bogus", "dataset.augment must be one of auto, imagenet, cifar, none, got 'bogus'"),
             ("dataset.loader=fast", "dataset.loader must be one of auto, gpu, dali, pil"),
             ("dataset.in_memory=maybe", "dataset.in_memory must be auto, true or false"),
             ("dataset.image_size=-1", "dataset.image_size must be >= 8 (or 0: from the images), got -1"),
             ("dataset.timeout_s=0", "dataset.timeout_s must be > 0 (seconds to wait for a batch from the workers)")]
    for override, expected in cases:
        with pytest.raises(ConfigError, match=re.escape(expected)) as err:
            precheck_overrides([*base, override])
        assert "\n" not in str(err.value)
    if not dali_installed():
        with pytest.raises(ConfigError) as err:
            precheck_overrides([*base, "dataset.loader=dali"])
        assert "CUDA" in str(err.value) or "pip install -e '.[dali]'" in str(err.value)
    proc = folder_run(root, tmp_path, "dataset.augment=bogus")
    assert proc.returncode == 2 and "dataset.augment must be one of" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_on_cuda_matches_the_cpu_indices(tmp_path):
    """The same indices and (up to JPEG decoders' rounding) the same images on CUDA as on the CPU; and the same
    images again while the consumer's stream is kept busy, the CPU running ahead of it as with graph replay: the
    side stream's batches reach the consumer complete, and no memory is reused under it."""
    from torchvision import datasets

    samples = datasets.ImageFolder(str(write_smooth_folder(tmp_path / "f", 18))).samples

    def pass_of(device, busy=False):
        loader = GpuDecodeLoader(samples, 4, train=True, generator=torch.Generator().manual_seed(3),
                                 device=torch.device(device), image_size=32, timeout_s=60)
        out = []
        for x, y, index in loader:
            assert x.device.type == device and y.device.type == device
            if busy:
                torch.cuda._sleep(50_000_000)  # tens of ms of spinning on the consumer's stream
            out.append((x.clone(), y.clone(), index))
        return out

    cpu, cuda = pass_of("cpu"), pass_of("cuda")
    assert [b[2].tolist() for b in cpu] == [b[2].tolist() for b in cuda]
    assert all(torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, cuda))
    assert all((a[0] - b[0].cpu()).abs().mean() < 0.05 for a, b in zip(cpu, cuda))  # normalised: ~3 grey levels
    busy = pass_of("cuda", busy=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cuda, busy))
