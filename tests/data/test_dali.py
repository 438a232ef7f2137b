"""The DALI loader's feeding (issue 22): DALI is not installable here, so these tests run `DaliLoader` on a stand-in
`nvidia.dali` that follows the documented behaviour of a pipelined pipeline with an external source: the first run()
calls the source prefetch_queue_depth times, each later run() once, outputs come out oldest first, a StopIteration
from the source ends the pass once the prefetched outputs are consumed, and reset() starts the next. What runs is
our bookkeeping (order, flips, labels, pass ends, a failed batch); DALI's decoding itself is untested."""

from __future__ import annotations

import sys
import types
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from spfde.data.dali import DaliLoader
from spfde.data.loaders import IndexBatches, pass_draws
from tests.data.test_folders import write_folder

SIZE = 16


class Node:
    def __init__(self, compute):
        self.compute = compute  # batch of source data -> list of per-sample values


class Output:
    """A DALI TensorList of one output: as_tensor() gives a tensor whose shape() is a method."""

    def __init__(self, data):
        self.data = data

    def as_tensor(self):
        return self

    def shape(self):
        return list(self.data.shape)


class Pipeline:
    """A pipelined DALI pipeline as its documentation and Python sources describe it (one queue, depth 2)."""

    def __init__(self, graph, depth=2):
        self.graph, self.depth = graph, depth
        self.queue, self.first, self.last, self.calls = deque(), True, False, 0

    def build(self):
        self.source, self.out = None, None
        self.out = self.graph()

    def iteration(self):
        data = self.source()  # StopIteration ends the pass
        self.calls += 1
        self.queue.append(torch.stack(self.out.compute(data)))

    def run(self):
        try:
            for _ in range(self.depth if self.first else 1):
                if not self.last:
                    self.iteration()
        except StopIteration:
            self.last = True
        self.first = False
        if not self.queue:
            raise StopIteration
        return (Output(self.queue.popleft()),)

    def reset(self):
        if self.last:
            self.first, self.last = True, False


def fake_dali(monkeypatch):
    """Install the stand-in as nvidia.dali (decoding with torchvision on the CPU; no random crop)."""
    from torchvision.io import decode_jpeg

    building = []

    def pipeline_def(**kwargs):
        assert not {"exec_pipelined", "exec_async", "prefetch_queue_depth"} & set(kwargs)  # DALI's defaults
        return lambda graph: (lambda: building.append(Pipeline(graph)) or building[-1])

    def external_source(source, num_outputs, dtype, ndim):
        building[-1].source = source
        return Node(lambda data: list(data[0])), Node(lambda data: [int(m) for m in data[1]])

    def decode(jpegs, **kwargs):
        def run(data):
            out = []
            for array in jpegs.compute(data):
                if bytes(array[:3]) != b"\xff\xd8\xff":
                    raise RuntimeError("[/opt/dali/...] Error in thread 0: nvJPEG failed")
                out.append(decode_jpeg(torch.from_numpy(array)).float())
            return out
        return Node(run)

    def resize(images, **kwargs):
        return Node(lambda data: [F.interpolate(im[None], size=(SIZE, SIZE), mode="bilinear")[0]
                                  for im in images.compute(data)])

    def crop_mirror_normalize(images, mean, std, mirror, **kwargs):
        m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        return Node(lambda data: [((im.flip(2) if f else im) - m) / s
                                  for im, f in zip(images.compute(data), mirror.compute(data))])

    fn = types.SimpleNamespace(external_source=external_source, resize=resize,
                               crop_mirror_normalize=crop_mirror_normalize,
                               decoders=types.SimpleNamespace(image=decode, image_random_crop=decode))
    dali = types.ModuleType("nvidia.dali")
    dali.fn, dali.pipeline_def = fn, pipeline_def
    dali.types = types.SimpleNamespace(GRAY="gray", RGB="rgb", UINT8="u8", INT32="i32", FLOAT="f32")
    pytorch = types.ModuleType("nvidia.dali.plugin.pytorch")
    pytorch.feed_ndarray = lambda tensor, result, cuda_stream=None: result.copy_(tensor.data)
    for name, module in (("nvidia", types.ModuleType("nvidia")), ("nvidia.dali", dali),
                         ("nvidia.dali.plugin", types.ModuleType("nvidia.dali.plugin")),
                         ("nvidia.dali.plugin.pytorch", pytorch)):
        monkeypatch.setitem(sys.modules, name, module)
    return building


def reference(loader, samples, seed, passes):
    """Per pass: the batches' indices and flips the loader must produce (its order, its per-pass flip draws)."""
    run = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(passes):
        batches = list(IndexBatches(loader.indices, run, loader.batch_size, True, None))
        draws = pass_draws(run)
        out.append([(b, (torch.rand(len(b), generator=draws) < 0.5).tolist()) for b in batches])
    return out


def dali_loader(samples, **kwargs):
    return DaliLoader(samples, 4, train=True, generator=torch.Generator().manual_seed(5), device=torch.device("cpu"),
                      image_size=SIZE, workers=1, **kwargs)


def check_pass(batches, expected, samples, plain):
    assert [b[2].tolist() for b in batches] == [b for b, _ in expected]
    for (x, y, index), (_, flips) in zip(batches, expected):
        assert y.tolist() == [samples[i][1] for i in index]
        for image, i, flip in zip(x, index.tolist(), flips):
            assert torch.equal(image, plain[i].flip(2) if flip else plain[i])


def test_pipelined_dali_loader_keeps_order_flips_and_labels_pass_after_pass(tmp_path, monkeypatch):
    from torchvision import datasets

    building = fake_dali(monkeypatch)
    samples = datasets.ImageFolder(str(write_folder(tmp_path / "f") / "train")).samples
    loader = dali_loader(samples)
    evaluation = DaliLoader(samples, 18, train=False, generator=torch.Generator(), device=torch.device("cpu"),
                            image_size=SIZE, augment="none")
    plain = dict(enumerate(next(iter(evaluation))[0]))  # every image unflipped, in index order
    expected = reference(loader, samples, 5, 3)
    check_pass(list(loader), expected[0], samples, plain)
    check_pass(list(loader), expected[1], samples, plain)  # the same pipeline, reset between passes
    assert len(building) == 2 and building[1].calls == 10  # evaluation's, then training's: 5 batches a pass
    # a pass given up after one batch leaves batches in the pipeline: the next pass starts a fresh one
    next(iter(loader))
    expected = reference(loader, samples, 5, 4)
    loader.generator.manual_seed(5)
    for _ in range(3):
        list(loader)
    assert len(building) == 3
    check_pass(list(loader), expected[3], samples, plain)


def test_pipelined_dali_loader_skips_a_file_dali_cannot_decode(tmp_path, monkeypatch, caplog):
    from torchvision import datasets

    fake_dali(monkeypatch)
    root = write_folder(tmp_path / "f")
    samples = datasets.ImageFolder(str(root / "train")).samples
    (root / "train" / "c1" / "2.jpg").write_bytes(b"not a jpeg")
    bad = [i for i, (path, _) in enumerate(samples) if path.endswith("c1/2.jpg")][0]
    loader = dali_loader(samples, on_bad_file="skip")
    batches = list(loader)
    seen = sum((b[2].tolist() for b in batches), [])
    order = sum((b for b, _ in reference(loader, samples, 5, 1)[0]), [])
    assert seen == [i for i in order if i != bad] and "skipped unreadable image" in caplog.text
    with pytest.raises(Exception, match="does not decode"):
        list(dali_loader(samples))  # on_bad_file=error
