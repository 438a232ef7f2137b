"""What the gpu and data benchmarks' numbers mean (spfde/bench/common.py, gpu.py): every case runs with the same
backend settings, whatever the case before it left; data- or compute-bound. The benchmarks themselves are rehearsed
on the CPU in tests/training/test_step.py and tests/data/test_folders.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spfde.bench.gpu as gpu
from spfde.bench.common import Report, apply_backend_settings, bound_by
from spfde.config import compose_config


def test_data_or_compute_bound():
    assert bound_by(100.0, 200.0) == "data-bound"
    assert bound_by(300.0, 200.0) == "compute-bound"
    assert bound_by(None, 200.0) is None


SETTINGS = ("cudnn.benchmark", "cudnn.deterministic", "cuda.matmul.allow_tf32", "cudnn.allow_tf32")


def flip_settings() -> None:
    """What a case before may have left: every switch the other way, one more CPU thread."""
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = not torch.backends.cudnn.deterministic
    torch.backends.cuda.matmul.allow_tf32 = not torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = not torch.backends.cudnn.allow_tf32
    torch.set_num_threads(torch.get_num_threads() + 1)


@pytest.mark.slow
def test_every_case_of_a_batch_size_runs_with_the_same_backend_settings(monkeypatch, capsys):
    """The bare anchor and each harness case start from settings flipped by the case before, and still train with
    the ones apply_backend_settings gives: seen by a probe in the loss of every training step, and recorded."""
    threads = torch.get_num_threads()
    probes = []
    cross_entropy = F.cross_entropy

    def probe(*args, **kwargs):
        probes.append({"cudnn.benchmark": torch.backends.cudnn.benchmark,
                       "cudnn.deterministic": torch.backends.cudnn.deterministic,
                       "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "threads": torch.get_num_threads()})
        return cross_entropy(*args, **kwargs)

    def flipped_first(measure):
        def case(*args):
            flip_settings()
            return measure(*args)
        return case

    monkeypatch.setattr(F, "cross_entropy", probe)
    monkeypatch.setattr(gpu, "bare_model_img_s", flipped_first(gpu.bare_model_img_s))
    monkeypatch.setattr(gpu, "harness_epochs", flipped_first(gpu.harness_epochs))
    overrides = ["experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=10", "dataset.train_size=32",
                 "dataset.test_size=16", "dataset.image_size=16", "device=cpu", "model.width=1", "model.depth=8"]
    cfg = compose_config(["logger=none", *overrides])
    expected = apply_backend_settings(cfg)
    flip_settings()
    report = Report()
    try:
        gpu.gpu_batch(report, cfg, overrides, 16, 2)
    finally:
        apply_backend_settings(cfg)
        torch.set_num_threads(threads)
    assert report.failures == 0
    by_case = report.values["bs16_settings_by_case"]
    assert report.values["bs16_settings"] == expected
    assert list(by_case) == ["bare_eager", "dense", "mest", "mest_frozen", "mest_sieve"]
    assert all(settings == expected for settings in by_case.values())
    assert probes and all(p == {k: expected[k] for k in (*SETTINGS, "threads")} for p in probes)
    assert "backend settings of every case: cudnn.benchmark=" in capsys.readouterr().out
    assert "DIFFERENT" not in report.text()
    # had one run with other settings, the line would name it
    assert "DIFFERENT in: mest (" in gpu.settings_line(expected, {"mest": {**expected, "threads": threads + 5}})
