"""Folder loader on NVIDIA DALI (dataset.loader=dali; `pip install -e '.[dali]'`).

Python reads each batch's file bytes in the run's index order (`IndexBatches`, like every folder loader) and
hands them to `fn.external_source`; DALI decodes on the GPU ("mixed"), fused with the random crop for
training (`fn.decoders.image_random_crop` decodes only the crop window), resizes, and `fn.crop_mirror_normalize`
flips (flags drawn from the run generator's per-pass seed, as in `GpuDecodeLoader`), normalises and lays out
CHW. The crop boxes come from DALI's own random generator, seeded from the run seed: runs are reproducible,
but a resumed run does not replay the crop boxes it would have drawn, and they differ from the other loaders'.

The pipeline runs with DALI's defaults: pipelined and asynchronous, prefetch_queue_depth 2. DALI calls the
external source (`source=`) whenever it needs the next batch, ahead of the one being consumed, one batch at a
time and in order: each call reads the next batch of the pass, and the batch's sample indices wait in a queue
until its output comes out. The end of the pass is a StopIteration from the source, after which the pipeline
is reset for the next pass.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from spfde.data.loaders import (
    BadImageError,
    FolderLoader,
    IndexBatches,
    bad_image,
    hand_over,
    log,
    pass_draws,
    to_device,
)


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
        self.finished = True  # the pipeline ended its last pass cleanly (else it still holds that pass's batches)
        self.todo = iter(())  # this pass's (batch, flips) not yet given to DALI
        self.retry = deque()  # batches to give again (a failed pipeline's, without their undecodable files)
        self.pending = deque()  # (file bytes, flips, indices) given to DALI, in order, whose output has not come out
        self.stream = None  # CUDA: the side stream outputs are copied out on

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
                      device_id=(self.device.index or 0) if gpu else None, seed=self.seed)
        def pipe():
            jpegs, mirror = fn.external_source(source=self.next_batch, num_outputs=2, dtype=[types.UINT8, types.INT32],
                                               ndim=[1, 0])
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

    def next_batch(self):
        """DALI's external source: the next batch's file bytes and mirror flags; StopIteration at the end of the
        pass (again on every later call, as DALI may ask past the end while it prefetches)."""
        while not self.retry:
            batch, flips = next(self.todo)
            arrays, kept = self.read(batch)
            if kept:  # a batch whose files all failed to read (and were skipped) is left out
                flip = dict(zip(batch, flips))
                self.retry.append((arrays, [np.array(int(flip[i]), dtype=np.int32) for i in kept], kept))
        self.pending.append(self.retry.popleft())
        arrays, flips, _ = self.pending[-1]
        return arrays, flips

    def output(self) -> torch.Tensor:
        """The oldest pending batch's images as a float tensor on the device (StopIteration when the pass is done)."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        (out,) = self.pipeline().run()
        tensor = out.as_tensor()
        if self.stream is None:
            result = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(tensor, result)
            return result
        # the copy runs on a side stream that is waited for here: the next run() hands this output's buffer back
        # to DALI, which may then overwrite it, and the consumer's stream may still be busy with training
        with torch.cuda.stream(self.stream):
            result = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(tensor, result, cuda_stream=self.stream)
        self.stream.synchronize()
        return result

    def __iter__(self):
        batches = list(IndexBatches(self.indices, self.generator, self.batch_size, self.train, self.world))
        draws = pass_draws(self.generator)
        # the flips of every batch, drawn in the pass's order as before DALI ran ahead
        flips = [(torch.rand(len(b), generator=draws) < 0.5).tolist() if self.hflip else [False] * len(b)
                 for b in batches]
        if not self.finished:  # the last pass stopped early: its batches are still in the pipeline
            self._pipe = None
        if self.device.type == "cuda" and self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        self.todo, self.retry, self.pending = iter(list(zip(batches, flips))), deque(), deque()
        self.finished = False
        before = self.skipped
        while True:
            try:
                x = self.output()
            except StopIteration:
                break
            except BadImageError:  # from reading a file (on_bad_file=error): not DALI's
                raise
            except RuntimeError:  # DALI names no file: find the ones PIL cannot decode either, in every batch in flight
                self._pipe = None  # a pipeline that failed is rebuilt, and given those batches again
                self.retry = deque(self.drop_undecodable(list(self.pending)))
                self.pending.clear()
                continue
            _, _, kept = self.pending.popleft()
            labels = torch.tensor([self.samples[i][1] for i in kept], dtype=torch.int64)
            yield hand_over((x, to_device(labels, self.device), torch.tensor(kept, dtype=torch.int64)), self.stream)
        self.pipeline().reset()
        self.finished = True
        if self.skipped > before:
            log.warning(f"{self.skipped - before} unreadable images skipped in this pass ({self.skipped} in all; "
                        "their paths are logged above)")

    def drop_undecodable(self, batches):
        """The batches without the files PIL cannot decode either (they follow on_bad_file); empty ones left out."""
        from PIL import Image

        out, dropped = [], 0
        for arrays, flips, kept in batches:
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
                    dropped += 1
            if good:
                out.append(([arrays[k] for k in good], [flips[k] for k in good], [kept[k] for k in good]))
        if not dropped:
            first = batches[0][2][0] if batches else None
            raise BadImageError(f"DALI failed on a batch whose files all decode with PIL (first: "
                                f"{self.samples[first][0] if first is not None else '?'}); try dataset.loader=gpu "
                                "or pil")
        return out
