"""Nothing inside a captured step may make the host wait for the GPU. On the CPU, the plain training step of every
method (freezing and sieving on, bf16 autocast and the fused SGD with device learning rates, as on CUDA) and the
evaluation batch run under a dispatch mode that records each aten op and fails on any op that would synchronise
the host or copy between devices on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spfde.training.build import build_run
from spfde.training.freeze import candidate_blocks
from spfde.training.step import EvalBatches, TrainStep, ensure_momentum_buffers
from tests.helpers import make_cfg, quick_overrides
from tests.sparse.test_sparse import ALL, SMALL_INTERVALS

# ops that read a device value on the host (or need its size there) and so wait for the GPU
SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "nonzero_numpy",
           "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount",
           "histc", "repeat_interleave", "tolist", "_assert_async"}
# a tensor made on the host inside the step: torch.tensor(...), or `flags[i] = True` wrapping its Python value
HOST_MADE = {"lift_fresh", "lift_fresh_copy", "scalar_tensor"}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def storage_of(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)


class HostSyncGuard(TorchDispatchMode):
    """Records every aten op; `problems` lists the ones that would make a CUDA host wait or copy across
    devices. Tensors an op reads must be the step's own state (`state`, on the device) or made by an earlier op
    of the step: anything else was made on the host."""

    def __init__(self, state: list[torch.Tensor]):
        super().__init__()
        self.known = {storage_of(t) for t in state} - {0}
        self.ops: list[str] = []
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(str(func))
        if name in SYNCING:
            self.problems.append(f"{func}: reads a device value on the host")
        if name in HOST_MADE:
            self.problems.append(f"{func}: a tensor made on the host inside the step")
        if name in INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.problems.append(f"{func}: boolean-mask indexing (a nonzero on the host)")
        if name in ("_to_copy", "to", "copy_") and "device" in kwargs and kwargs["device"] is not None:
            source = args[0]
            if torch.device(kwargs["device"]) != source.device:
                self.problems.append(f"{func}: a copy to another device")
        for t in tensors_in((args, kwargs)):
            if t.dim() and storage_of(t) not in self.known:  # 0-dim: Python numbers the op takes as scalars
                self.problems.append(f"{func}: reads a {tuple(t.shape)} tensor from outside the step's state")
            elif not t.dim() and storage_of(t) not in self.known and name not in HOST_MADE:
                self.problems.append(f"{func}: reads a 0-dim tensor made outside the step")
        out = func(*args, **kwargs)
        self.known |= {storage_of(t) for t in tensors_in(out)} - {0}
        return out


def guarded(fn, state) -> HostSyncGuard:
    """Run fn under the guard. A factory call without a device (torch.ones(n)) makes a host tensor even when the
    step runs on CUDA: here it makes a "meta" one, which the step's CPU tensors refuse to mix with."""
    guard = HostSyncGuard(state)
    try:
        with guard, torch.device("meta"):
            fn()
    except (RuntimeError, NotImplementedError) as e:
        guard.problems.append(f"{type(e).__name__}: {str(e).splitlines()[0]} (a tensor made without a device?)")
    return guard


def test_the_guard_catches_the_ops_that_wait_for_the_gpu():
    """It must fail on the sieve line this project shipped (`flags[indices] = True`) and on the usual suspects."""
    flags, values = torch.zeros(10, dtype=torch.bool), torch.rand(10)
    idx = torch.tensor([1, 2])
    state = [flags, values, idx]

    def old_sieve_line():
        flags[idx] = True

    cases = {"lift_fresh": old_sieve_line, "_local_scalar_dense": lambda: values.sum().item(),
             "nonzero": lambda: values.nonzero(), "boolean-mask": lambda: values[values > 0.5],
             "masked_select": lambda: values.masked_select(flags),
             "tensor made on the host": lambda: values + torch.ones(10),
             "0-dim tensor": lambda: bool(values.sum() > 0)}
    for what, fn in cases.items():
        problems = guarded(fn, state).problems
        assert problems, what
    fine = guarded(lambda: (flags.index_fill_(0, idx, True), values.mul_(2), values * 3), state)
    assert fine.problems == [] and len(fine.ops) == 3


PLAIN = [m for m in ALL if m not in ("lth", "snfs", "deepr")]  # SNFS and DeepR never take a plain step


def as_on_cuda(train_step: TrainStep) -> None:
    """The optimizer a CUDA run gets: the fused SGD (one kernel), every momentum buffer made up front, each
    block's learning rate read from an fp32 tensor."""
    optimizer = train_step.optimizer
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    ensure_momentum_buffers(optimizer)
    train_step.lrs = torch.zeros(len(optimizer.param_groups))
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = train_step.lrs[i]


@pytest.mark.parametrize("name", PLAIN)
def test_the_plain_step_and_the_evaluation_batch_never_wait_for_the_gpu(tmp_path, name):
    cfg = make_cfg(quick_overrides(f"sparsity={name}", "freeze=0.15", "sieve=0.2", "interval=1", "epochs=4",
                                   "precision=bf16", *SMALL_INTERVALS.get(name, [])), tmp_path)
    run = build_run(cfg, tmp_path)
    run.method.initialize(iter(run.data.train))
    frozen = candidate_blocks(run.model, cfg.freeze_fraction) // 2
    run.freezer.set_frozen(range(frozen), True, run.optimizer)
    run.freezer.frozen = frozen
    assert run.sieve.enabled and frozen > 0
    step = TrainStep(run.model, run.optimizer, run.method, run.freezer, run.sieve, run.analysis, run.meter, run.rt,
                     cfg.optim.label_smoothing, cfg.batch_size, graphs=False)
    as_on_cuda(step)
    plain = [s for s in range(cfg.epochs * len(run.data.train)) if run.method.plain_step(s)]
    assert plain, "a method in PLAIN must take plain steps"
    run.freezer.train_mode()
    x, y, idx = next(iter(run.data.train))
    for _ in range(2):  # eager steps first, as before a capture
        step.run_step(x, y, idx, plain[0], plain=True)
    state = [*step.written_tensors(), step.lrs, x, y, idx]
    guard = guarded(lambda: step.run_step(x, y, idx, plain[0], plain=True), state)
    assert guard.problems == [], guard.problems
    assert len(guard.ops) > 50  # forward, backward, masks, SGD, sieve flags and sums were all seen

    batches = EvalBatches(run.model, run.rt, cfg.eval_batch_size, top5=True, graphs=False)
    batches.begin()
    run.model.eval()
    guard = guarded(lambda: batches.run_batch(x, y), [*run.model.parameters(), *run.model.buffers(), *batches.sums,
                                                       x, y])
    assert guard.problems == [], guard.problems
