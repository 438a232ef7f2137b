"""Datasets and loaders: splits, the index-array loader, GPU-style augmentation, offline failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from spfde.data import DataError, build_data
from spfde.data.loaders import augmentation_draws, random_crop_flip
from spfde.data.sources import CACHE_ENV, load_digits
from tests.helpers import REPO, make_cfg


def data_for(overrides, tmp_path=None):
    cfg = make_cfg(overrides, tmp_path)
    return build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))


def test_digits_stratified_split_matches_config():
    data = data_for(["dataset=digits"])
    cfg = make_cfg(["dataset=digits"]).dataset
    assert data.train.dataset_size == cfg.train_size and data.test.dataset_size == cfg.test_size
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 16, 16)
    train_counts = torch.bincount(data.train.labels, minlength=10).float()
    test_counts = torch.bincount(data.test.labels, minlength=10).float()
    ratio = test_counts / (train_counts + test_counts)
    assert torch.all((ratio - 0.2).abs() < 0.02)  # stratified: every class split ~80/20


@pytest.mark.slow
def test_loading_digits_in_a_fresh_process_leaves_the_seeded_python_rng_alone(tmp_path):
    # a fresh process with an empty cache: sklearn is imported for the first time here, as in `python -m spfde.run`
    code = ("import random, sys; from spfde.data.sources import load_digits; from tests.helpers import make_cfg; "
            "cfg = make_cfg(['experiment=quickstart']); random.seed(0); state = random.getstate(); "
            "load_digits(cfg.dataset); print(random.getstate() == state, 'sklearn' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, CACHE_ENV: str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "True"], proc.stderr[-2000:]
    assert len(list(tmp_path.glob("digits-*.pt"))) == 1  # kept for the next run


def test_digits_come_from_the_cache_without_sklearn_and_a_bad_cache_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cfg = make_cfg(["experiment=quickstart"]).dataset
    made = load_digits(cfg)
    (kept,) = (tmp_path / "cache").glob("digits-*.pt")

    def same(arrays) -> bool:
        return all(torch.equal(a, b) for a, b in zip(vars(made).values(), vars(arrays).values(), strict=True))

    with monkeypatch.context() as m:  # the second load reads the file: an import of sklearn would fail here
        m.setitem(sys.modules, "sklearn.datasets", None)
        m.setitem(sys.modules, "sklearn.model_selection", None)
        assert same(load_digits(cfg))
    kept.write_bytes(b"not a tensor file")
    assert same(load_digits(cfg))
    assert torch.load(kept, weights_only=True)["images"].shape == (1797, 1, 8, 8)  # made again
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a-file" / "cache"))  # cannot be made: nothing kept, nothing lost
    assert same(load_digits(cfg))


def test_loader_covers_its_index_array_once_per_epoch():
    data = data_for(["dataset=digits", "batch_size=100"])
    seen = torch.cat([idx for _x, _y, idx in data.train])
    assert sorted(seen.tolist()) == list(range(data.train.dataset_size))
    subset = torch.tensor([5, 17, 300, 1000, 3])
    data.train.set_indices(subset)
    batches = list(data.train)
    assert len(batches) == 1 and sorted(batches[0][2].tolist()) == sorted(subset.tolist())
    x, y, idx = batches[0]
    assert torch.equal(y, data.train.labels[idx])
    assert x.dtype == torch.float32 and x.shape == (5, 1, 16, 16)


def test_training_order_is_shuffled_and_seeded_test_order_is_not():
    a = [idx for _x, _y, idx in data_for(["dataset=digits"]).train]
    b = [idx for _x, _y, idx in data_for(["dataset=digits"]).train]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.arange(len(torch.cat(a))))
    test_idx = torch.cat([idx for _x, _y, idx in data_for(["dataset=digits"]).test])
    assert torch.equal(test_idx, torch.arange(len(test_idx)))


def test_random_crop_flip_on_a_known_image():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 2, 1, 1)

    def augment(padding: int, hflip: bool):
        return random_crop_flip(img, padding, *augmentation_draws([64], padding, hflip, g, img.device))

    assert torch.equal(augment(0, False), img)
    flipped = augment(0, True)
    is_flip = [torch.equal(f, img[0].flip(2)) for f in flipped]
    assert all(torch.equal(f, img[0]) or fl for f, fl in zip(flipped, is_flip)) and 10 < sum(is_flip) < 54
    cropped = augment(1, False)
    assert cropped.shape == img.shape and cropped.dtype == torch.uint8
    padded = torch.nn.functional.pad(img[0], (1, 1, 1, 1))
    windows = {padded[:, r:r + 4, c:c + 4].numpy().tobytes() for r in range(3) for c in range(3)}
    assert all(c.numpy().tobytes() in windows for c in cropped)  # every crop is a shifted window
    assert len({c.numpy().tobytes() for c in cropped}) > 3


def test_fake_data_any_shape():
    data = data_for(["dataset=fake", "dataset.image_size=20", "dataset.channels=2", "dataset.num_classes=7",
                     "dataset.train_size=30", "dataset.test_size=10"])
    assert data.train.images.shape == (30, 2, 20, 20) and data.test.images.shape == (10, 2, 20, 20)
    assert int(data.train.labels.max()) < 7 and data.num_classes == 7
    again = data_for(["dataset=fake", "dataset.image_size=20", "dataset.channels=2", "dataset.num_classes=7",
                      "dataset.train_size=30", "dataset.test_size=10", "seed=3"])
    assert torch.equal(again.train.images, data.train.images)  # a fixed data set across run seeds
    other = data_for(["dataset=fake", "dataset.image_size=20", "dataset.channels=2", "dataset.num_classes=7",
                      "dataset.train_size=30", "dataset.test_size=10", "dataset.split_seed=1"])
    assert not torch.equal(other.train.images, data.train.images)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*_a, **_k):
        raise socket.gaierror(-2, "Name or service not known (simulated offline)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_offline_fails_fast_saying_where_to_put_files(name, tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        data_for([f"dataset={name}", f"dataset.root={tmp_path}/c"])
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert str(tmp_path / "c") in message and ".tar.gz" in message and "dataset.root" in message
    assert "\n" not in message


def test_imagenet_missing_says_what_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        data_for(["model=resnet50", f"dataset.root={tmp_path}/none"])
    assert "ImageNet" in str(err.value) and "dataset.root=" in str(err.value) and "train/" in str(err.value)


def make_image_folder(root, classes=3, per_class=4, size=40):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


def test_image_folder_loads_with_standard_augmentation(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    data = data_for(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                     "dataset.workers=0", "batch_size=5"])
    assert data.num_classes == 3 and data.train.dataset_size == 12
    batches = list(data.train)
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    assert batches[0][0].shape == (5, 3, 32, 32)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(12))
    data.train.set_indices(torch.tensor([0, 1, 2]))
    assert sorted(torch.cat([b[2] for b in data.train]).tolist()) == [0, 1, 2]
