"""The training step (spfde/step.py) on the CPU: the `plain_step` contract that lets CUDA graphs skip a
method's hooks, and the graph path's plumbing (static buffers, device-side learning rates, cost order)
with capture replaced by direct calls. Real capture is tested in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spfde.step
import spfde.train
from spfde.models import build_model
from tests.helpers import make_cfg, quick_overrides, read_metrics, run_training
from tests.test_sparse import ALL, SMALL_INTERVALS, make_method, random_batches

PLAIN_METHODS = [m for m in ALL if m != "lth"]  # LTH is the base class's hooks: covered by `static`


@pytest.mark.parametrize("name", PLAIN_METHODS)
def test_a_plain_step_only_masks_gradients_and_weights(name):
    """Training where plain steps skip the method's hooks (as a replayed graph does) ends bit-identical to
    training that calls every hook: weights, masks, and the method's update counts."""
    overrides = [*SMALL_INTERVALS.get(name, []), "interval=1"]
    runs = []
    for skip_plain in (False, True):
        torch.manual_seed(0)
        model = build_model(make_cfg(quick_overrides()).model, 10, 1)
        method, model, optimizer = make_method(name, *overrides, model=model, epochs=4, steps_per_epoch=5)
        method.initialize(random_batches(50, seed=2))
        batches = random_batches(20, seed=1)
        kinds, stats = [], []
        for epoch in range(4):
            method.start_epoch(epoch)
            for i in range(5):
                step = epoch * 5 + i
                plain = skip_plain and method.plain_step(step)
                kinds.append(method.plain_step(step))
                x, y, _ = next(batches)
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                method.masks.mask_grads() if plain else method.after_backward(step)
                optimizer.step()
                method.masks.apply() if plain else method.after_optimizer_step(step)
            stats.append(method.epoch_stats())
        runs.append((model.state_dict(), {n: m.clone() for n, m in method.masks.masks.items()}, stats, kinds))
    (w_all, m_all, s_all, kinds), (w_plain, m_plain, s_plain, _) = runs
    assert all(torch.equal(w_all[k], w_plain[k]) for k in w_all)
    assert all(torch.equal(m_all[n], m_plain[n]) for n in m_all)
    assert s_all == s_plain
    if name in ("snfs", "deepr"):
        assert not any(kinds)  # these read the dense gradient or rewire at every step
    elif name in ("rigl", "set", "itop", "dsr"):
        assert any(kinds) and not all(kinds)  # update steps are not plain, the others are
    else:
        assert all(kinds)


class DirectGraphs:
    """Stands in for spfde.step.Graphs on the CPU: every call runs the step directly, keys are recorded."""

    runs: list = []

    def __init__(self, warmup: int = 0):
        self.capture_s = 0.0

    def begin(self) -> None:
        pass

    def peak(self) -> int:
        return 0

    def run(self, key, fn, before_capture=None) -> None:
        DirectGraphs.runs.append(key)
        fn()


@pytest.mark.parametrize("method", ["mest", "rigl"])
def test_the_graph_path_trains_exactly_like_the_eager_path(tmp_path, monkeypatch, method):
    """Static buffers, device-side per-block learning rates, eager non-plain and partial batches, cost
    counted after plain steps: with capture replaced by direct calls, every metric and weight matches."""
    overrides = quick_overrides("epochs=4", "interval=1", "freeze=0.15", "sieve=0.2", f"sparsity={method}",
                                *SMALL_INTERVALS.get(method, []))
    eager = run_training(overrides, tmp_path / "eager")
    DirectGraphs.runs = []
    monkeypatch.setattr(spfde.train, "use_cuda_graphs", lambda setting, device: True)
    monkeypatch.setattr(spfde.step, "Graphs", DirectGraphs)
    graphed = run_training(overrides, tmp_path / "graphed")

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]

    assert strip(read_metrics(tmp_path / "eager")) == strip(read_metrics(tmp_path / "graphed"))
    assert eager["train_flops"] == graphed["train_flops"]
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "graphed" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    depths = {key[1] for key in DirectGraphs.runs if key[0] == "train step"}
    frozen = {r["freeze/frozen_blocks"] for r in read_metrics(tmp_path / "graphed")}
    assert depths == {f"{k} frozen blocks" for k in frozen} and len(depths) > 1  # one graph per depth used
    assert "evaluation batch" not in DirectGraphs.runs  # digits' test set is one partial batch: eager


def test_cuda_graphs_setting_is_validated():
    from spfde.config import ConfigError

    with pytest.raises(ConfigError, match="cuda_graphs must be auto, on or off"):
        make_cfg(quick_overrides("cuda_graphs=maybe"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda_graphs=on needs a CUDA device"):
            make_cfg(quick_overrides("cuda_graphs=on"))
    assert not spfde.step.use_cuda_graphs("auto", torch.device("cpu"))
    assert not spfde.step.use_cuda_graphs("off", torch.device("cuda"))
    assert spfde.step.use_cuda_graphs("auto", torch.device("cuda"))


@pytest.mark.slow
def test_the_gpu_benchmark_rehearses_on_the_cpu(capsys):
    from spfde.bench import main

    main(["gpu", "--batch-sizes", "16", "--train-size", "64", "--steps", "2", "device=cpu", "model.width=1",
          "model.depth=8", "dataset.test_size=32", "--run-size", "256", "--run-epochs", "4"])
    out = capsys.readouterr().out
    for row in ("| bare model, eager |", "| harness dense |", "| harness MEST |", "all candidates frozen",
                "| harness MEST, sieve=0.2 loader |", "| 0 frozen |", "| SpFDE 0.2+0.2 |", "FLOPs saving"):
        assert row in out, row
