"""What the gpu and data benchmarks' numbers mean (spfde/bench/common.py, gpu.py): every case runs with the same
backend settings, whatever the case before it left; a run's training time in parts (steady epochs, update epochs,
one-off first epochs) and their projection onto a longer schedule; data- or compute-bound. The benchmarks
themselves are rehearsed on the CPU in tests/training/test_step.py and tests/data/test_folders.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spfde.bench.gpu as gpu
from spfde.bench.common import Report, apply_backend_settings, bound_by
from spfde.config import compose_config
from spfde.planning.plan import build_plan


def test_epochs_to_fraction_on_made_up_numbers():
    # FLOPs saving 50% in every epoch, so 0.9x of it is 45%; MEST 2 s an epoch; SpFDE 1 s an epoch after a first
    # epoch of 3.05 s (a one-off cost): its saving after n epochs, 1 - (2.05 + n) / 2n, reaches 45% at n = 21
    mest_s, mest_flops, spfde_flops = [2.0] * 25, [2.0] * 25, [1.0] * 25
    spfde_s = [3.05] + [1.0] * 24
    assert gpu.epochs_to_fraction(spfde_s, mest_s, spfde_flops, mest_flops) == 21
    assert gpu.epochs_to_fraction(spfde_s[:20], mest_s[:20], spfde_flops[:20], mest_flops[:20]) is None  # never
    # reached after one epoch, lost after the second (a capture), reached again for good at 21: from 21 on
    assert gpu.epochs_to_fraction([1.0, 3.05, *[1.0] * 23], mest_s, spfde_flops, mest_flops) == 21
    assert gpu.epochs_to_fraction(spfde_s, mest_s, spfde_flops, mest_flops, fraction=0.5) == 5  # 1-7.05/10 >= .25


def test_a_projected_epoch_is_its_depths_steady_time_plus_its_update_and_its_depths_one_off():
    steady, one_off = {0: 1.0, 1: 0.5}, {0: 2.0, 1: 1.0}
    got = gpu.project_epochs([0, 0, 1, 1, 0], [True, False, True, False, True], steady, 0.25, one_off)
    assert got == [1.0 + 0.25 + 2.0, 1.0, 0.5 + 0.25 + 1.0, 0.5, 1.0 + 0.25]  # depth 0 again: no second one-off
    with pytest.raises(KeyError):
        gpu.project_epochs([2], [False], steady, 0.25, one_off)


def records(depths, times, updates):
    return [{"freeze/frozen_blocks": d, "time/train_s": t, **({"sparsity/updates": 1} if u else {})}
            for d, t, u in zip(depths, times, updates)]


def test_epoch_parts_leave_out_first_epochs_and_updates_from_the_steady_times():
    # MEST, graphed, interval 2: the first epoch holds the capture, every other epoch updates the masks
    mest = records([0] * 6, [4.0, 1.0, 1.3, 1.0, 1.3, 1.0], [True, False] * 3)
    steady, update_s, one_off = gpu.epoch_parts(mest, graphed=True)
    assert steady == {0: 1.0} and update_s == pytest.approx(0.3) and one_off == {0: pytest.approx(2.7)}
    # SpFDE, graphed, interval 2: each depth's first epoch updates and captures, the second is steady
    spfde = records([0, 0, 1, 1, 2, 2], [5.0, 1.0, 3.0, 0.8, 2.5, 0.6], [True, False] * 3)
    steady, update_s, one_off = gpu.epoch_parts(spfde, graphed=True, update_s=0.3)
    assert steady == {0: 1.0, 1: 0.8, 2: 0.6} and update_s == 0.3
    assert one_off == pytest.approx({0: 3.7, 1: 1.9, 2: 1.6})
    # eager, interval 1: only the run's first epoch is one-off (nothing is captured), every epoch updates (so
    # steady includes the update), and depth 0, whose only epoch is the first, takes a known steady time
    eager = records([0, 1, 2, 3], [2.0, 0.9, 0.7, 0.5], [True] * 4)
    steady, update_s, one_off = gpu.epoch_parts(eager, graphed=False, known={0: 1.0})
    assert steady == {0: 1.0, 1: 0.9, 2: 0.7, 3: 0.5} and update_s == 0.0 and one_off == {0: 1.0}
    # graphed, interval 1: no depth has an epoch after its first
    assert gpu.epoch_parts(records([0, 1], [2.0, 1.0], [True, True]), graphed=True) == ({}, 0.0, {})


@pytest.mark.slow
def test_the_default_runs_spend_two_epochs_at_each_depth():
    """--run-epochs 24 (interval 24 // 12 = 2) on --run-size 2560: SpFDE's plan reaches every candidate block,
    each depth for two epochs, so each has a steady epoch after the one that holds its capture."""
    assert [gpu.default_interval(e) for e in (4, 12, 23, 24, 36)] == [1, 1, 1, 2, 3]
    cfg = compose_config(["logger=none", "experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=100",
                          "dataset.train_size=2560", "epochs=24", "interval=2", "sieve=0.2", "freeze=0.2"])
    depths = [r["frozen_blocks"] for r in build_plan(cfg, conventions=(cfg.cost.memory,))["schedule"]]
    assert depths == [d for d in range(12) for _ in range(2)]


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


@pytest.mark.slow
def test_each_harness_case_closes_its_step_and_evaluation_also_when_it_fails(monkeypatch):
    """A case's CUDA graphs and memory pool must not outlive it: harness_epochs closes its training step and its
    evaluation before it returns, and when the case raises."""
    from spfde.bench import common
    from spfde.training.step import EvalBatches, TrainStep

    closed = []
    for cls in (TrainStep, EvalBatches):
        monkeypatch.setattr(cls, "close", lambda self, name=cls.__name__: closed.append(name))
    overrides = ["experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=10", "dataset.train_size=16",
                 "dataset.test_size=16", "dataset.image_size=8", "device=cpu", "model.width=1", "model.depth=8",
                 "batch_size=8"]
    result = common.harness_epochs(overrides, 0, True)
    assert result["img_s"] > 0 and closed == ["TrainStep", "EvalBatches"]

    closed.clear()
    monkeypatch.setattr(common, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError, match="injected"):
        common.harness_epochs(overrides, 0, True)
    assert closed == ["TrainStep", "EvalBatches"]
