"""Folder loader on NVIDIA DALI (dataset.loader=dali; `pip install -e '.[dali]'`).

Python reads each batch's file bytes in the run's index order (`IndexBatches`, like every folder loader) and
feeds them through `fn.external_source`; DALI decodes on the GPU ("mixed"), fused with the random crop for
training (`fn.decoders.image_random_crop` decodes only the crop window), resizes, and `fn.crop_mirror_normalize`
flips (flags drawn from the run generator's per-pass seed, as in `GpuDecodeLoader`), normalises and lays out
CHW. The crop boxes come from DALI's own random generator, seeded from the run seed: runs are reproducible,
but a resumed run does not replay the crop boxes it would have drawn, and they differ from the other loaders'.
"""

from __future__ import annotations

import numpy as np
import torch

from spfde.data.loaders import BadImageError, FolderLoader, IndexBatches, bad_image, log, pass_draws, to_device


class DaliLoader(FolderLoader):
    """Same interface as `FolderLoader`. `device` "cpu" builds a CPU-only pipeline (for tests where DALI is
    installed but there is no GPU); runs use the CUDA device."""

    name = "dali"

    def __init__(self, samples: list[tuple[str, int]], batch_size: int, *, train: bool, generator: torch.Generator,
                 device: torch.device, image_size: int, augment: str = "imagenet", small: bool = False,
                 hflip: bool = True, channels: int = 3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 workers: int = 4, on_bad_file: str = "error", world=None, seed: int = 0):
        if augment == "cifar":
            raise ValueError("DaliLoader implements augment=imagenet or none")
        self.samples = samples
        self.batch_size, self.train, self.generator, self.world = batch_size, train, generator, world
        self.indices = torch.arange(len(samples))
        self.device, self.size, self.augment, self.small = torch.device(device), image_size, augment, small
        self.hflip, self.channels, self.on_bad_file = hflip and augment != "none", channels, on_bad_file
        self.mean, self.std = [m * 255 for m in mean], [s * 255 for s in std]
        self.threads, self.seed = max(1, workers), seed
        self.skipped = 0
        self._pipe = None

    @property
    def dataset_size(self) -> int:
        return len(self.samples)

    def pipeline(self):
        """Built once, for the largest batch; external_source takes smaller (last) batches as they come."""
        if self._pipe is not None:
            return self._pipe
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"
        decode_on = "mixed" if gpu else "cpu"
        image_type = types.GRAY if self.channels == 1 else types.RGB
        size, random_crop = self.size, self.train and self.augment == "imagenet"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                      device_id=(self.device.index or 0) if gpu else None, seed=self.seed, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
            if random_crop:  # RandomResizedCrop's ranges; DALI's generator (seed above) draws the boxes
                images = fn.decoders.image_random_crop(jpegs, device=decode_on, output_type=image_type,
                                                       random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                                       num_attempts=10)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            else:
                images = fn.decoders.image(jpegs, device=decode_on, output_type=image_type)
                if self.small:
                    images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
                else:
                    images = fn.resize(images, resize_shorter=int(round(size * 256 / 224)), antialias=True)
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                            mean=self.mean, std=self.std, mirror=mirror)

        self._pipe = pipe()
        self._pipe.build()
        return self._pipe

    def read(self, batch: list[int]):
        """File bytes of a batch; unreadable files follow on_bad_file."""
        arrays, kept = [], []
        for i in batch:
            path = self.samples[i][0]
            try:
                arrays.append(np.fromfile(path, dtype=np.uint8))
                kept.append(i)
            except OSError as e:
                bad_image(path, e, self.on_bad_file)
                self.skipped += 1
        return arrays, kept

    def run(self, arrays, flips):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pipe = self.pipeline()
        pipe.feed_input("jpegs", arrays)
        pipe.feed_input("mirror", flips)
        (out,) = pipe.run()
        tensor = out.as_tensor()
        result = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, result, cuda_stream=stream)
        return result

    def __iter__(self):
        batches = list(IndexBatches(self.indices, self.generator, self.batch_size, self.train, self.world))
        draws = pass_draws(self.generator)
        before = self.skipped
        for batch in batches:
            flip = dict(zip(batch, (torch.rand(len(batch), generator=draws) < 0.5).tolist() if self.hflip
                            else [False] * len(batch)))
            arrays, kept = self.read(batch)
            flips = [np.array(int(flip[i]), dtype=np.int32) for i in kept]
            try:
                x = self.run(arrays, flips)
            except RuntimeError:  # DALI names no file: find the ones PIL cannot decode either
                arrays, kept, flips = self.drop_undecodable(arrays, kept, flips)
                if not kept:
                    continue
                x = self.run(arrays, flips)
            labels = torch.tensor([self.samples[i][1] for i in kept], dtype=torch.int64)
            yield x, to_device(labels, self.device), torch.tensor(kept, dtype=torch.int64)
        if self.skipped > before:
            log.warning(f"{self.skipped - before} unreadable images skipped in this pass ({self.skipped} in all; "
                        "their paths are logged above)")

    def drop_undecodable(self, arrays, kept, flips):
        from PIL import Image

        good = []
        for k, i in enumerate(kept):
            path = self.samples[i][0]
            try:
                with Image.open(path) as img:
                    img.load()
                good.append(k)
            except Exception as e:  # noqa: BLE001 - PIL raises several types for damaged files
                bad_image(path, e, self.on_bad_file)
                self.skipped += 1
        if len(good) == len(kept):
            raise BadImageError(f"DALI failed on a batch whose files all decode with PIL (first: "
                                f"{self.samples[kept[0]][0]}); try dataset.loader=gpu or pil")
        return [arrays[k] for k in good], [kept[k] for k in good], [flips[k] for k in good]
