"""The training step (spfde/training/step.py) on the CPU: the `plain_step` contract that lets CUDA graphs skip a
method's hooks, and the graph path's plumbing (static buffers, device-side learning rates, cost order)
with capture replaced by direct calls. Real capture is tested in test_gpu.py."""

from __future__ import annotations

import gc
import math
import re
import traceback
import weakref

import pytest
import torch
import torch.nn.functional as F

import spfde.training.loop
import spfde.training.step
from spfde.errors import SpfdeError
from spfde.models import build_model
from spfde.training.build import Runtime, build_run
from spfde.training.loop import evaluate
from spfde.training.step import EvalBatches, TrainStep
from tests.helpers import make_cfg, quick_overrides, read_metrics, run_training
from tests.sparse.test_sparse import ALL, SMALL_INTERVALS, make_method, random_batches

PLAIN_METHODS = [m for m in ALL if m != "lth"]  # LTH is the base class's hooks: covered by `static`


@pytest.mark.slow
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


class CpuGraphs(spfde.training.step.Graphs):
    """step.Graphs with its CUDA calls replaced, so its logic runs on the CPU: a warm-up call runs the step,
    a "capture" records it without running it, a replay runs it; every replay's key is kept in `keys`.
    `fail` = {key: "capture" | "replay" | "sticky"} makes that key's capture or first replay raise *after*
    running the step, the worst case: state changed that the fallback must restore; "sticky": a capture error
    after which every CUDA call fails too (a device-side assert)."""

    keys: list = []
    fail: dict = {}
    broken = False  # after a sticky error

    def setup(self) -> None:
        pass

    def allocated(self) -> int:
        return 0

    def max_allocated(self) -> int:
        return 0

    def reset_peak(self) -> None:
        pass

    def synchronize(self) -> None:
        if CpuGraphs.broken:
            raise RuntimeError("CUDA error: device-side assert triggered")

    def warm(self, fn) -> None:
        fn()

    def capture(self, key, fn):
        if CpuGraphs.fail.get(key) == "capture":
            fn()
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        if CpuGraphs.fail.get(key) == "sticky":
            fn()
            CpuGraphs.broken = True
            raise RuntimeError("CUDA error: device-side assert triggered")
        return Replay(key, fn)


class Replay:
    def __init__(self, key, fn):
        self.key, self.fn, self.replays = key, fn, 0

    def replay(self) -> None:
        self.fn()
        self.replays += 1
        CpuGraphs.keys.append(self.key)
        if self.replays == 1 and CpuGraphs.fail.get(self.key) == "replay":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")


def graphed_run(monkeypatch, overrides, run_dir, fail=None):
    """A run whose graph path runs on the CPU through CpuGraphs."""
    CpuGraphs.keys, CpuGraphs.fail, CpuGraphs.broken = [], fail or {}, False
    with monkeypatch.context() as m:
        m.setattr(spfde.training.loop, "use_cuda_graphs", lambda setting, device: True)
        m.setattr(spfde.training.step, "Graphs", CpuGraphs)
        return run_training(overrides, run_dir)


def assert_same_run(a, b) -> None:
    """Same metrics (times aside), same final weights."""
    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]

    assert strip(read_metrics(a)) == strip(read_metrics(b))
    wa = torch.load(a / "last.pt", weights_only=False)["model"]
    wb = torch.load(b / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


GRAPH_RUN = ("epochs=4", "interval=1", "freeze=0.15", "sieve=0.2")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mest", "rigl"])
def test_the_graph_path_trains_exactly_like_the_eager_path(tmp_path, monkeypatch, method):
    """Static buffers, device-side per-block learning rates, eager non-plain and partial batches, cost
    counted after plain steps: with capture replaced by direct calls, every metric and weight matches."""
    overrides = quick_overrides(*GRAPH_RUN, f"sparsity={method}", *SMALL_INTERVALS.get(method, []))
    eager = run_training(overrides, tmp_path / "eager")
    graphed = graphed_run(monkeypatch, overrides, tmp_path / "graphed")
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    assert eager["train_flops"] == graphed["train_flops"]
    assert eager["cuda_graphs"] == "off" and graphed["cuda_graphs"] == "on"
    depths = {key[1] for key in CpuGraphs.keys if key[0] == "train step"}
    frozen = {r["freeze/frozen_blocks"] for r in read_metrics(tmp_path / "graphed")}
    assert depths == {f"{k} frozen blocks" for k in frozen} and len(depths) > 1  # one graph per depth used
    assert "evaluation batch" not in CpuGraphs.keys  # digits' test set is one partial batch: eager


@pytest.mark.slow
@pytest.mark.parametrize("where", ["capture", "replay"])
def test_a_failed_capture_falls_back_to_eager_steps_from_the_same_state(tmp_path, monkeypatch, caplog, where):
    """cuda_graphs=auto: a capture (or first replay) that fails, at the first depth or at a deeper one after
    freezing, leaves no trace: the run ends with the same metrics, weights and FLOPs as an eager run, one
    warning names the error, and summary.json records the fallback."""
    overrides = quick_overrides(*GRAPH_RUN)
    eager = run_training(overrides, tmp_path / "eager")
    deepest = max(r["freeze/frozen_blocks"] for r in read_metrics(tmp_path / "eager"))
    assert deepest > 0
    for depth in (0, deepest):
        key = ("train step", f"{depth} frozen blocks")
        caplog.clear()
        run_dir = tmp_path / f"fail-{depth}"
        summary = graphed_run(monkeypatch, overrides, run_dir, fail={key: where})
        assert_same_run(tmp_path / "eager", run_dir)
        assert summary["train_flops"] == eager["train_flops"]
        assert summary["cuda_graphs"].startswith("fallback: RuntimeError: CUDA error")
        warnings = [r.getMessage() for r in caplog.records if "CUDA graph capture" in r.getMessage()]
        assert len(warnings) == 1 and "continues with eager steps" in warnings[0]
        if depth:  # graphs replayed before the failure; none after it
            assert CpuGraphs.keys and all(k != key for k in CpuGraphs.keys[:-1])


def test_cuda_graphs_on_fails_loudly_when_a_capture_fails():
    calls = []
    graphs = CpuGraphs(warmup=0, fallback=False)
    CpuGraphs.fail = {"k": "capture"}
    with pytest.raises(spfde.training.step.GraphCaptureError, match="capture of k failed .*RuntimeError: CUDA error"):
        graphs.run("k", lambda: calls.append(1))
    CpuGraphs.fail = {}


def test_a_sticky_cuda_error_in_a_capture_stops_with_one_line(monkeypatch):
    """A device-side assert during capture breaks every later CUDA call, the fallback's own synchronize included:
    instead of a second traceback, one SpfdeError (`spfde: error: ...`) that names the error and cuda_graphs=off."""
    monkeypatch.setattr(CpuGraphs, "fail", {"k": "sticky"})
    monkeypatch.setattr(CpuGraphs, "broken", False)
    weights, calls = torch.zeros(3), []
    graphs = CpuGraphs(warmup=0)
    with pytest.raises(spfde.training.step.StickyCudaError) as caught:
        graphs.run("k", lambda: (calls.append(1), weights.add_(1)), state=lambda: [weights])
    error = caught.value
    assert isinstance(error, SpfdeError) and calls == [1]  # the stand-in's capture ran it; no eager step after
    assert str(error).startswith("CUDA graph capture of k failed (RuntimeError: CUDA error: device-side assert "
                                 "triggered) and left the GPU unusable")
    assert str(error).endswith("run it again with cuda_graphs=off (eager steps), which resumes from the last "
                               "checkpoint")
    assert "".join(traceback.format_exception(error)).count("Traceback") == 1  # no "during handling of..."


def small_step(tmp_path, *overrides: str, graphs: bool = False):
    """A digits run's parts and its TrainStep, masks initialised."""
    cfg = make_cfg(quick_overrides(*overrides), tmp_path)
    run = build_run(cfg, tmp_path)
    run.method.initialize(iter(run.data.train))
    step = TrainStep(run.model, run.optimizer, run.method, run.freezer, run.sieve, run.analysis, run.meter, run.rt,
                     cfg.optim.label_smoothing, cfg.batch_size, graphs=graphs)
    return cfg, run, step


@pytest.mark.slow
def test_a_closed_step_is_freed_without_the_garbage_collector_and_refuses_to_run(tmp_path, monkeypatch):
    """close() drops the graphs (and their pool), and nothing ties a step or its evaluation to its graphs in a
    reference cycle: a benchmark frees each case's GPU memory when it lets go of it, not at some later gc."""
    monkeypatch.setattr(spfde.training.step, "Graphs", CpuGraphs)
    monkeypatch.setattr(CpuGraphs, "keys", [])
    monkeypatch.setattr(CpuGraphs, "fail", {})
    cfg, run, step = small_step(tmp_path, "eval_batch_size=128", graphs=True)
    batches = EvalBatches(run.model, run.rt, cfg.eval_batch_size, top5=True, graphs=True)
    x, y, idx = next(iter(run.data.train))
    for _ in range(spfde.training.step.WARMUP_STEPS + 2):  # warm-up, capture, replay
        step(x, y, idx, t=0.0)
    evaluate(run.model, run.data.test, run.rt, True, batches)  # 2 full batches: warm-up, capture and replay
    assert step.graphs.graphs and batches.graphs.graphs
    step.close()
    batches.close()
    assert not step.graphs.graphs and not batches.graphs.graphs and step.static is None
    assert all(p.grad is None for p in run.model.parameters())  # a capture allocates the gradients in its pool
    with pytest.raises(RuntimeError, match="this TrainStep was closed"):
        step(x, y, idx, t=0.0)
    with pytest.raises(RuntimeError, match="these EvalBatches were closed"):
        batches.add(x, y)
    gc.collect()
    gc.disable()
    try:
        refs = [weakref.ref(o) for o in (step, step.graphs, batches, batches.graphs, run.model)]
        del step, batches, run, x, y, idx
        assert [r() for r in refs] == [None] * 5  # the model too, once the caller lets go of the run
    finally:
        gc.enable()


def test_the_capture_peak_leaves_out_the_fallbacks_copy_of_the_state(monkeypatch):
    """The copy of weights, momentum, masks... that a failed capture would restore is alive during the capture; the
    peak memory reported for the step is the step's own. A stand-in allocator counts each clone while it lives."""
    live = {"bytes": 0, "peak": 0}
    real_clone = torch.Tensor.clone

    def free(n: int) -> None:
        live["bytes"] -= n

    def clone(t, *args, **kwargs):
        out = real_clone(t, *args, **kwargs)
        live["bytes"] += out.nbytes
        live["peak"] = max(live["peak"], live["bytes"])
        weakref.finalize(out, free, out.nbytes)
        return out

    step_bytes = 1000  # what the step itself allocates while it is captured

    class Allocated(CpuGraphs):
        def allocated(self) -> int:
            return live["bytes"]

        def max_allocated(self) -> int:
            return live["peak"]

        def reset_peak(self) -> None:
            live["peak"] = live["bytes"]

        def capture(self, key, fn):
            live["peak"] = max(live["peak"], live["bytes"] + step_bytes)
            return super().capture(key, fn)

    monkeypatch.setattr(torch.Tensor, "clone", clone)
    monkeypatch.setattr(CpuGraphs, "fail", {})
    weights = torch.zeros(1000)  # 4,000 bytes of state, so 4,000 bytes of copy
    graphs = Allocated(warmup=0)
    graphs.run("k", lambda: weights.add_(1), state=lambda: [weights])
    assert "k" in graphs.graphs and live["bytes"] == 0  # captured; the copy is gone
    assert graphs.capture_peak["k"] == step_bytes  # not 5,000
    assert graphs.peak() == step_bytes


def test_deterministic_true_without_a_deterministic_kernel_is_one_line(tmp_path, monkeypatch):
    """deterministic=true on a GPU with bf16 and channels_last can meet a layer with no deterministic kernel: one
    SpfdeError naming the settings and the ways out. The same error with determinism off stays what it is."""
    _, run, step = small_step(tmp_path, "precision=bf16")
    step.rt = Runtime(run.device, "bf16", channels_last=True)  # the settings of a CUDA run

    def no_kernel(*args):
        raise RuntimeError("cudnn_convolution_backward does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'")

    monkeypatch.setattr(spfde.training.step, "frozen_prefix_forward", no_kernel)
    x, y, idx = next(iter(run.data.train))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    with pytest.raises(spfde.training.step.DeterministicKernelError) as caught:
        step(x, y, idx, t=0.0)
    assert isinstance(caught.value, SpfdeError)
    assert str(caught.value) == (
        "deterministic=true, precision=bf16, channels_last=true: the GPU has no deterministic kernel for a layer of "
        "this model (RuntimeError: cudnn_convolution_backward does not have a deterministic implementation, but you "
        "set 'torch.use_deterministic_algorithms(True)'); run with deterministic=false, or keep it with "
        "precision=fp32 or channels_last=false")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    with pytest.raises(RuntimeError, match="does not have a deterministic") as caught:
        step(x, y, idx, t=0.0)
    assert not isinstance(caught.value, SpfdeError)


@pytest.mark.slow
def test_the_evaluation_graph_is_captured_replayed_and_equals_the_eager_evaluation(tmp_path, monkeypatch):
    """Digits' 360 test images at eval_batch_size=128: 2 full batches (a warm-up, then a capture and its replay;
    the next evaluation replays both) and a partial one (eager); every evaluation equals the eager one."""
    monkeypatch.setattr(spfde.training.step, "Graphs", CpuGraphs)
    monkeypatch.setattr(CpuGraphs, "keys", [])
    monkeypatch.setattr(CpuGraphs, "fail", {})
    cfg, run, _ = small_step(tmp_path, "eval_batch_size=128")
    assert [len(y) for _, y, _ in run.data.test] == [128, 128, 104]
    eager = evaluate(run.model, run.data.test, run.rt, True)
    batches = EvalBatches(run.model, run.rt, cfg.eval_batch_size, top5=True, graphs=True)
    assert evaluate(run.model, run.data.test, run.rt, True, batches) == eager
    assert CpuGraphs.keys == ["evaluation batch"] and list(batches.graphs.graphs) == ["evaluation batch"]
    assert evaluate(run.model, run.data.test, run.rt, True, batches) == eager
    assert CpuGraphs.keys == ["evaluation batch"] * 3 and batches.graphs.failed is None


@pytest.mark.slow
def test_learning_rates_reach_sgd_one_way_on_cuda_and_bit_identically_on_the_cpu():
    """On CUDA the per-block learning rates always live in an fp32 device vector (eager or graphed: one code path
    for the fused kernel). On the CPU a tensor learning rate trains bit-identically to Python floats: the fp64
    vector of the graph path's rehearsal with the for-loop and foreach SGD, an fp32 one with the fused SGD."""
    assert spfde.training.step.device_lr_dtype(torch.device("cuda"), graphs=False) == torch.float32
    assert spfde.training.step.device_lr_dtype(torch.device("cuda"), graphs=True) == torch.float32
    assert spfde.training.step.device_lr_dtype(torch.device("cpu"), graphs=True) == torch.float64
    assert spfde.training.step.device_lr_dtype(torch.device("cpu"), graphs=False) is None

    def train(kind, **sgd):
        torch.manual_seed(0)
        model = build_model(make_cfg(quick_overrides()).model, 10, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **sgd)
        lrs = torch.zeros(1, dtype=kind) if kind is not None else None
        for i in range(6):
            lr = 0.05 * (1 + math.cos(math.pi * i / 6))
            if lrs is None:
                optimizer.param_groups[0]["lr"] = lr
            else:
                lrs.copy_(torch.tensor([lr], dtype=kind))
                optimizer.param_groups[0]["lr"] = lrs[0]
            x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.state_dict()

    for kind, sgd in ((torch.float64, dict(foreach=False)), (torch.float64, dict(foreach=True)),
                      (torch.float32, dict(fused=True))):
        a, b = train(None, **sgd), train(kind, **sgd)
        assert all(torch.equal(a[k], b[k]) for k in a), (kind, sgd)


def test_cuda_graphs_setting_is_validated():
    from spfde.config import ConfigError

    with pytest.raises(ConfigError, match="cuda_graphs must be auto, on or off"):
        make_cfg(quick_overrides("cuda_graphs=maybe"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda_graphs=on needs a CUDA device"):
            make_cfg(quick_overrides("cuda_graphs=on"))
    assert not spfde.training.step.use_cuda_graphs("auto", torch.device("cpu"))
    assert not spfde.training.step.use_cuda_graphs("off", torch.device("cuda"))
    assert spfde.training.step.use_cuda_graphs("auto", torch.device("cuda"))


@pytest.mark.slow
def test_the_gpu_benchmark_rehearses_on_the_cpu(capsys):
    """At interval 2 every frozen depth of the SpFDE run has a steady epoch after its first, and the 160-epoch
    projection is made from the SpFDE run's own steady times."""
    from spfde.bench.__main__ import main

    main(["gpu", "--batch-sizes", "16", "--train-size", "64", "--steps", "2", "device=cpu", "model.width=1",
          "model.depth=8", "dataset.test_size=32", "dataset.image_size=16", "--run-size", "64", "--run-epochs", "8",
          "--run-interval", "2"])
    out = capsys.readouterr().out
    for row in ("| bare model, eager |", "| harness dense |", "| harness MEST |", "all candidates frozen",
                "| harness MEST, sieve=0.2 loader |", "| 0 frozen |", "| SpFDE 0.2+0.2 |", "FLOPs saving",
                "backend settings of every case: cudnn.benchmark=True", "interval 2",
                "steady-state training s per epoch by frozen depth", "projected onto the paper's 160 epochs"):
        assert row in out, row
    assert re.search(r"\| harness MEST \| [\d,]+ \| \d+\.\d\dx \| \d+\.\d\dx \| eager \|", out)
    assert re.search(r"\| SpFDE 0\.2\+0\.2 \| .* \| eager \|", out)
    assert "DIFFERENT" not in out and "the MEST run's" not in out and "not measured" not in out
    assert re.search(r"at least 0\.9x of it (from epoch \d+ on|never within 160 epochs)", out)


@pytest.mark.slow
def test_a_benchmark_case_says_what_ran_from_the_step_itself(monkeypatch):
    """harness_epochs reports what its timed epoch ran, read from the step: eager without graphs, graphed when its
    steps were replayed, and the fallback with its error when a capture failed, though graphs were asked for."""
    import spfde.bench.common as common

    overrides = ["experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=10", "dataset.train_size=64",
                 "dataset.test_size=16", "dataset.image_size=16", "device=cpu", "model.width=1", "model.depth=8",
                 "batch_size=16"]
    assert common.harness_epochs(overrides)["ran"] == "eager"
    monkeypatch.setattr(common, "use_cuda_graphs", lambda setting, device: True)
    monkeypatch.setattr(spfde.training.step, "Graphs", CpuGraphs)
    monkeypatch.setattr(CpuGraphs, "keys", [])
    monkeypatch.setattr(CpuGraphs, "fail", {})
    monkeypatch.setattr(CpuGraphs, "broken", False)
    graphed = common.harness_epochs(overrides, "all")
    assert graphed["graphs"] and graphed["ran"] == "graphed"
    assert ("train step", f"{graphed['frozen']} frozen blocks") in CpuGraphs.keys
    monkeypatch.setattr(CpuGraphs, "fail", {("train step", "0 frozen blocks"): "capture"})
    fallback = common.harness_epochs(overrides)
    assert fallback["graphs"] and fallback["ran"].startswith("fallback: RuntimeError: CUDA error: operation not")
