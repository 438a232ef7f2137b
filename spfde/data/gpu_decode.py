"""Folder loader that decodes JPEGs on the training device (torchvision.io.decode_jpeg on batches).

DataLoader workers only read file bytes (files of other formats they decode on the CPU) and send each batch as
one packed buffer; the main process decodes the batch on the device, crops and resizes all its images in one
resampling (`crops_resized`), flips and normalises there; on CUDA on a side stream, one batch ahead of the
consumer, so that decoding overlaps training. The random crop boxes and flips are drawn on the CPU from a generator
seeded, once per pass, by one draw from the run generator: the same draws the PIL `FolderLoader` makes
from it without workers (its sample order, then its DataLoader's worker seed). So the loaders consume the run
generator alike, walk the same `IndexBatches` order, and a run resumes exactly from the generator's state. (With
workers, PyTorch's DataLoader iterates its sampler twice a pass, so the PIL loader shuffles twice: see docs/data.md.)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from spfde.data.loaders import (
    FolderLoader,
    IndexBatches,
    augmentation_draws,
    bad_image,
    hand_over,
    log,
    pass_draws,
    random_crop_flip,
    to_device,
    worker_batches,
)

JPEG_MAGIC = b"\xff\xd8\xff"
# ITU-R 601 luma, what PIL's convert("L") uses: grayscale from decoded RGB, identically on every device
LUMA = (0.299, 0.587, 0.114)


class FileBytes(Dataset):
    """Item i: (uint8 numpy array, shape, label, i): a JPEG file's bytes (shape None) or, for other formats, the
    image decoded on the CPU, flattened (shape (C, H, W)). Plain numpy, never the tensor torchvision.io.read_file
    returns: that one maps the file, and sending it from a worker fails (EBADF in the worker's queue feeder
    thread) while the DataLoader waits for the batch forever."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, on_bad_file: str):
        self.samples, self.channels, self.on_bad_file = samples, channels, on_bad_file
        self.skipped = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_image

        path, label = self.samples[i]
        try:
            data = np.fromfile(path, dtype=np.uint8)
            if data[:3].tobytes() != JPEG_MAGIC:  # PNG & co: decoded here, on the CPU
                mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
                image = decode_image(torch.from_numpy(data), mode=mode)
                return image.numpy().reshape(-1), tuple(image.shape), label, i
        except Exception as e:  # noqa: BLE001 - unreadable or undecodable file
            bad_image(path, e, self.on_bad_file)
            self.skipped += 1
            return None
        return data, None, label, i


@dataclass
class Packed:
    """A batch of `FileBytes` items with every item's bytes back to back in ONE uint8 tensor: sent from a worker
    it costs one shared-memory file descriptor, where a tensor per image would cost one each (15 workers x
    batch 256 x prefetch 4 would exceed the usual open-file limit)."""
    data: torch.Tensor
    sizes: list[int]
    shapes: list[tuple[int, ...] | None]
    labels: list[int]
    index: list[int]

    def items(self):
        """(bytes or flattened pixels as a uint8 tensor view, shape, label, index) of each item."""
        return zip(torch.split(self.data, self.sizes), self.shapes, self.labels, self.index)


def pack(items) -> Packed:
    """collate_fn of the GPU-decode loader (runs in the worker): the items that read, packed (skipped ones left
    out)."""
    items = [item for item in items if item is not None]
    data = np.concatenate([item[0] for item in items]) if items else np.empty(0, dtype=np.uint8)
    return Packed(torch.from_numpy(data), [len(item[0]) for item in items], [item[1] for item in items],
                  [item[2] for item in items], [item[3] for item in items])


class PassBatches(Sampler):
    """The batch sampler of a persistent DataLoader: the batches of the pass under way, set before each pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def resized_crop_params(height: int, width: int, generator: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), drawn from `generator` (10 tries, then the
    central crop at the nearest allowed aspect ratio)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_box(height: int, width: int, size: int, small: bool) -> tuple[float, float, float, float]:
    """The evaluation (and augment=none) view as a box (top, left, height, width) of the image, in its pixels:
    small images whole (stretched to size x size); others the centre crop that torchvision's
    Resize(round(size * 256 / 224)) + CenterCrop(size) keep."""
    if small:
        return 0.0, 0.0, height, width
    short = int(round(size * 256 / 224))
    new_h, new_w = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    scale_y, scale_x = height / new_h, width / new_w
    return top * scale_y, left * scale_x, size * scale_y, size * scale_x


def shelf_pack(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corners (y, x) for rectangles (h, w) laid side by side on shelves, tallest first, and the height and
    width of the canvas they fill. The canvas is as wide as the widest rectangle or the square root of their total
    area, whichever is more: the batch is never padded to its largest image (some ImageNet images are several
    thousand pixels wide, and a batch padded to one of them can need gigabytes)."""
    width = max(max(w for _, w in sizes), math.isqrt(sum(h * w for h, w in sizes)))
    corners = [(0, 0)] * len(sizes)
    y = x = shelf = 0
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k][0]):
        h, w = sizes[k]
        if x + w > width:  # start a shelf under the last one
            y, x, shelf = y + shelf, 0, 0
        corners[k] = (y, x)
        x, shelf = x + w, max(shelf, h)
    return corners, y + shelf, width


def spans(starts: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
    """The indices start, start + 1, ..., start + length - 1 of every run, one run after another. `total` (the sum
    of the lengths) comes from the host, so nothing waits for the device."""
    begins = torch.cumsum(lengths, 0) - lengths  # where each run begins in the result
    shift = torch.repeat_interleave(starts - begins, lengths, output_size=total)
    return torch.arange(total, device=starts.device) + shift


def canvas_of(images: list[torch.Tensor], corners: list[tuple[int, int]], height: int,
              width: int) -> torch.Tensor:
    """uint8 [C, height, width] holding each image (uint8 [C, h, w]) with its top-left pixel at its corner, inside a
    one-pixel border that repeats the image's edge pixels: bilinear taps just past an edge read that edge, as
    F.interpolate's clamping does, never a neighbour. A dozen kernels for the whole batch, whatever its size."""
    device, channels = images[0].device, images[0].shape[0]
    plane = height * width
    canvas = torch.zeros(channels * plane, dtype=torch.uint8, device=device)
    sizes = [tuple(im.shape[-2:]) for im in images]
    meta = to_device(torch.tensor([[h, w, y, x] for (h, w), (y, x) in zip(sizes, corners)]), device)
    h, w, y, x = meta.unbind(1)
    # every pixel row of every image (channel by channel, in the order of its pixels): where it starts in the canvas
    rows = channels * h
    count = channels * sum(hh for hh, _ in sizes)
    image = torch.repeat_interleave(torch.arange(len(images), device=device), rows, output_size=count)
    row = spans(torch.zeros_like(rows), rows, count)  # channel * h + row within the image
    height_of, width_of = h[image], w[image]
    starts = (row // height_of) * plane + (y[image] + row % height_of) * width + x[image]
    pixels = torch.cat([im.reshape(-1) for im in images])
    canvas.index_copy_(0, spans(starts, width_of, pixels.numel()), pixels)
    # the border: left and right columns from the edge pixels, then the rows above and below (corners included)
    canvas[starts - 1] = canvas[starts]
    canvas[starts + width_of] = canvas[starts + width_of - 1]
    edges = [(c * plane + yy * width + xx - 1, c * plane + (yy + hh - 1) * width + xx - 1, ww + 2)
             for (hh, ww), (yy, xx) in zip(sizes, corners) for c in range(channels)]
    top, bottom, length = to_device(torch.tensor(edges), device).unbind(1)
    total = sum(e[2] for e in edges)
    for edge, outward in ((spans(top, length, total), -width), (spans(bottom, length, total), width)):
        canvas[edge + outward] = canvas[edge]
    return canvas.view(channels, height, width)


# roi_align's CUDA kernel indexes its input with 32-bit ints: a larger canvas is split (two halves of the batch)
CANVAS_LIMIT = 2**31 - 1


def crops_resized(images: list[torch.Tensor], boxes: list[tuple[float, float, float, float]], size: int,
                  luma: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box (top, left, height, width, in its pixels; fractions allowed) resized to size x size: float
    [B, C, size, size], values 0-255 (one channel through `luma` when given). The whole batch in a few kernels: the
    images go into one canvas (`canvas_of`) and torchvision's roi_align samples every box at once, averaging
    ceil(box / size) x ceil(box / size) bilinear samples per output pixel (its adaptive sampling ratio): area
    antialiasing when downscaling, plain bilinear when upscaling. Values differ slightly from the per-image
    antialiased F.interpolate (a box of samples, not a triangle filter)."""
    import torchvision  # noqa: F401 - registers torch.ops.torchvision

    sizes = [(im.shape[-2] + 2, im.shape[-1] + 2) for im in images]  # with the border
    corners, height, width = shelf_pack(sizes)
    if images[0].shape[0] * height * width > CANVAS_LIMIT and len(images) > 1:
        half = len(images) // 2
        return torch.cat([crops_resized(images[:half], boxes[:half], size, luma),
                          crops_resized(images[half:], boxes[half:], size, luma)])
    corners = [(y + 1, x + 1) for y, x in corners]  # the images' own top-left pixels
    canvas = canvas_of(images, corners, height, width).float()
    if luma is not None:  # PIL's convert("L") on the decoded RGB, rounded to integers as PIL does
        canvas = (canvas * luma).sum(0, keepdim=True).round_().clamp_(0, 255)
    rois = [(0.0, x + left, y + top, x + left + w, y + top + h)
            for (y, x), (top, left, h, w) in zip(corners, boxes)]
    rois = to_device(torch.tensor(rois, dtype=torch.float32), canvas.device)
    # the operator itself, not torchvision.ops.roi_align: that one switches CUDA inputs to a torch.compile'd Python
    # version when deterministic algorithms are on (for its backward), which compiles and allocates per shape
    return torch.ops.torchvision.roi_align(canvas[None], rois, spatial_scale=1.0, pooled_height=size,
                                           pooled_width=size, sampling_ratio=-1, aligned=True)


class GpuDecodeLoader(FolderLoader):
    """Same interface as `FolderLoader` (indices, set_indices, batch sizes, world sharding). `device` is where
    JPEGs are decoded and augmented: a CUDA device in runs (dataset.loader=gpu), the CPU in tests."""

    name = "gpu"

    def __init__(self, samples: list[tuple[str, int]], batch_size: int, *, train: bool, generator: torch.Generator,
                 device: torch.device, image_size: int, timeout_s: float, augment: str = "imagenet",
                 small: bool = False, hflip: bool = True, channels: int = 3, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), workers: int = 0, on_bad_file: str = "error", world=None, seed: int = 0):
        self.dataset = FileBytes(samples, channels, on_bad_file)
        self.batch_size, self.train, self.generator, self.world = batch_size, train, generator, world
        self.workers, self.timeout_s, self.pin_memory = workers, timeout_s, False
        self.indices = torch.arange(len(samples))
        self.device, self.size, self.augment, self.small = torch.device(device), image_size, augment, small
        self.hflip, self.channels, self.on_bad_file = hflip and augment != "none", channels, on_bad_file
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.luma = torch.tensor(LUMA, device=self.device).view(3, 1, 1)  # made once: not a copy per image
        self.passes = PassBatches()
        self.loader = None  # one DataLoader for every pass: its workers persist
        self.stream = None  # CUDA: the side stream batches are decoded and augmented on

    def file_loader(self) -> DataLoader:
        """The DataLoader reading file bytes, made once. Its workers draw no randomness (a private generator keeps
        the run's and the global one untouched), so they can persist from pass to pass."""
        if self.loader is None:
            workers = self.workers
            self.loader = DataLoader(self.dataset, batch_sampler=self.passes, num_workers=workers, collate_fn=pack,
                                     generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0,
                                     prefetch_factor=4 if workers else None, timeout=self.timeout_s if workers else 0)
        return self.loader

    def __iter__(self):
        """Batches in the pass's order, each prepared one step ahead: batch k + 1 is decoded and augmented (on CUDA
        on a side stream) before batch k goes to the consumer, so decoding overlaps training. Same numbers, in the
        same order, with or without the look-ahead."""
        self.passes.batches = list(IndexBatches(self.indices, self.generator, self.batch_size, self.train,
                                                self.world))
        draws = pass_draws(self.generator)
        if self.device.type == "cuda" and self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        before = int(self.dataset.skipped)
        ready = None
        for packed in worker_batches(self.file_loader(), self.what, self.workers, self.timeout_s):
            batch = self.prepare(packed, draws)
            if batch is None:  # every file of the batch was skipped
                continue
            if ready is not None:
                yield hand_over(ready, self.stream)
            ready = batch
        if ready is not None:
            yield hand_over(ready, self.stream)
        if int(self.dataset.skipped) > before:
            log.warning(f"{int(self.dataset.skipped) - before} unreadable images skipped in this pass "
                        f"({int(self.dataset.skipped)} in all; their paths are logged above)")

    def prepare(self, packed: Packed, draws: torch.Generator):
        """(images, labels, indices) of one batch, decoded and augmented; on CUDA on the side stream."""
        side = contextlib.nullcontext()
        if self.stream is not None:
            # torchvision's CUDA decode_jpeg allocates its outputs on the current stream, writes them on an nvjpeg
            # stream of its own that does not wait for the current one, and returns when they are written. Memory
            # the side stream freed (the last batch's images, canvas, indices) may still be read by its queued
            # kernels: let them finish first. This waits for the last batch's augmentation, never for training.
            self.stream.synchronize()
            side = torch.cuda.stream(self.stream)
        with side:
            images, labels, index = self.decode(packed)
            return (self.transform(images, draws), to_device(labels, self.device), index) if images else None

    def decode(self, packed: Packed):
        """Decode the batch's JPEGs in one batched call on the device; a failure is traced to its file(s)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        items = list(packed.items())
        jpegs = [k for k, (_, shape, _, _) in enumerate(items) if shape is None]
        # images decoded in the workers; grayscale ones as RGB too, so the batch shares one canvas (their luma
        # gives back the same values)
        decoded = {k: data.view(shape).to(self.device).expand(3, -1, -1) for k, (data, shape, _, _)
                   in enumerate(items) if shape is not None}
        if jpegs:
            data = [items[k][0] for k in jpegs]
            try:
                out = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # find the bad file(s): decode one by one
                out = []
                for k, d in zip(jpegs, data):
                    try:
                        out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError as e:
                        bad_image(self.dataset.samples[items[k][3]][0], e, self.on_bad_file)
                        self.dataset.skipped += 1
                        out.append(None)
            for k, image in zip(jpegs, out):
                if image is not None:
                    decoded[k] = image
        keep = sorted(decoded)
        labels = torch.tensor([items[k][2] for k in keep], dtype=torch.int64)
        index = torch.tensor([items[k][3] for k in keep], dtype=torch.int64)
        return [decoded[k] for k in keep], labels, index

    def transform(self, images: list[torch.Tensor], draws: torch.Generator) -> torch.Tensor:
        """Crop/resize every image to size x size (one batched resampling), flip, normalise: float [B, C, S, S] on
        the device. The boxes and flips are drawn from `draws` image by image, in the batch's order, as before the
        resampling was batched: the same numbers, the same sample order."""
        size, n = self.size, len(images)
        shapes = [tuple(im.shape[-2:]) for im in images]
        if not self.train or self.augment == "none":
            boxes = [eval_box(h, w, size, self.small) for h, w in shapes]
        elif self.augment == "imagenet":
            boxes = [resized_crop_params(h, w, draws) for h, w in shapes]
        else:  # cifar: the whole image stretched to size x size, then padded and randomly cropped below
            boxes = [(0, 0, h, w) for h, w in shapes]
        batch = crops_resized(images, boxes, size, self.luma if self.channels == 1 else None)
        if self.train and self.augment == "cifar":  # the in-memory loader's augmentation
            padding = size // 8
            dy, dx, _ = augmentation_draws([n], padding, False, draws, self.device)
            batch = random_crop_flip(batch, padding, dy, dx, None)
        if self.train and self.hflip:
            flip = to_device(torch.rand(n, generator=draws) < 0.5, self.device)
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        return (batch - self.mean) / self.std
