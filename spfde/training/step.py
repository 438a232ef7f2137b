"""The training step and the evaluation batch, run eagerly or replayed from CUDA graphs.

Eagerly (the CPU, and `cuda_graphs=off`), a step runs op by op in the order `TrainStep.run_step` reads.
At the paper's batch size 64 a GPU then waits on Python for each of a step's ~1,000 kernel launches.
With CUDA graphs, a *plain* step — one in which the sparse method only masks gradients and weights
(`SparseMethod.plain_step`) — is captured once per frozen-prefix depth and then replayed as one launch:
forward, loss, backward, gradient masks, the SGD step with each block's learning rate, weight masks,
the sieve's correct/incorrect flags and the running loss/accuracy sums.

A graph replays fixed memory addresses, so everything it reads lives in tensors updated in place:
the batch (static buffers filled by a device-to-device copy), the masks (`Masks.set_mask` copies into
them), each block's learning rate (a device vector that the fused SGD reads), the momentum buffers
(zeroed, never dropped, when a block is released), the sieve's counters and the running sums. Mask
updates, per-block cosine LRs, freezing and releasing therefore need no recapture.

Steps that stay eager with graphs on: steps that are not plain (RigL/SET/ITOP/DSR update steps, every
SNFS and DeepR step, MEST with λ > 0), every step while `analysis.every` is on, the epoch's last partial
batch, and the first `WARMUP_STEPS` plain steps at each depth (warm-up before capture, as PyTorch's
CUDA-graph recipe asks).

Nothing inside a step may make the host wait for the GPU (no `.item()`, no `nonzero`, no boolean-mask
indexing, no host tensor such as `flags[i] = True` turns into): inside a capture that is an error, and
eagerly a stall per step. `tests/training/test_capture_safety.py` runs every plain step under a dispatch mode
that fails on any such op. With `cuda_graphs=auto` a capture that fails anyway costs nothing but speed:
the step's state is restored and the run goes on eagerly (`Graphs`); `summary.json` says so. A sticky CUDA
error (a device-side assert, an illegal memory access) leaves nothing to go on with: the run stops with one
line that names it and `cuda_graphs=off`.

A benchmark that builds one step after another frees each one's graphs and memory pool with `close()`.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from spfde.errors import SpfdeError
from spfde.training.distributed import World
from spfde.training.freeze import frozen_prefix_forward

log = logging.getLogger("spfde")

WARMUP_STEPS = 3  # eager steps at a new depth before its capture (cuDNN autotuning, lazy allocations)


def use_cuda_graphs(setting: str, device: torch.device) -> bool:
    """cuda_graphs=auto|on|off for this run's device (validation refuses `on` without CUDA)."""
    return device.type == "cuda" and setting in ("auto", "on")


def device_lr_dtype(device: torch.device, graphs: bool) -> torch.dtype | None:
    """Where graphs may run, and on every CUDA run, each block's learning rate lives in a device vector that
    the SGD step reads, eager or replayed: one code path on CUDA, so graphs on and off compute the same (the
    fused kernel given Python floats would compute in double). fp32 for the CUDA kernel; fp64 on the CPU,
    where the graph path's rehearsal must equal the Python floats of the plain CPU path. None: Python floats."""
    if device.type == "cuda":
        return torch.float32
    return torch.float64 if graphs else None


class GraphCaptureError(RuntimeError):
    """cuda_graphs=on and a capture (or its first replay) failed: the run stops (auto falls back instead)."""


class StickyCudaError(SpfdeError, RuntimeError):
    """A capture failed with an error that leaves this process's GPU context unusable (the synchronize before the
    fallback raises again): no eager step can follow it. One line; the way out is cuda_graphs=off."""


class DeterministicKernelError(SpfdeError, RuntimeError):
    """deterministic=true and the GPU has no deterministic kernel for a layer of the step. One line."""


def ensure_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter a momentum buffer (zeros) before capture, so none is allocated inside a graph.
    A zero buffer gives the same first step as SGD's lazily created one (0·m + g = g)."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def first_line(error: BaseException) -> str:
    """The error a failed capture started with (CUDA adds its own at capture end), as one short line."""
    while error.__context__ is not None and error.__cause__ is None:
        error = error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def refused_as_nondeterministic(error: RuntimeError) -> bool:
    """Did deterministic mode refuse a kernel (cuDNN finds no deterministic engine, or PyTorch's check refuses an
    op)? Only while it is on: the same words from another run are another error."""
    on = torch.backends.cudnn.deterministic or torch.are_deterministic_algorithms_enabled()
    text = str(error).lower()
    return on and ("deterministic" in text or "unable to find an engine" in text)


class Graphs:
    """CUDA graphs by key, sharing one memory pool; each captured after `warmup` eager calls of its key.

    A capture, or the first replay of a new graph, that raises costs the run nothing when `fallback` is on
    (cuda_graphs=auto): the tensors that `run`'s `state()` names (everything a step writes) are restored from a
    copy taken just before the capture, one warning says why, and from then on every call runs eagerly
    (`failed` holds the reason). With `fallback` off (cuda_graphs=on) it raises GraphCaptureError. If the
    restore itself fails (a sticky CUDA error), it raises StickyCudaError.

    Memory: a replay allocates nothing, so the allocator's peak does not see it. Each graph's peak during
    its capture (the same buffers a replay reuses) is kept, without the fallback's copy, and `peak()` reports
    the larger of the allocator's peak since `begin()` and the capture peaks of the graphs run since then.

    `state` is passed to each `run` rather than kept: a getter kept here would tie the step that owns these
    graphs to them in a reference cycle, and only the garbage collector would free them.

    The CUDA calls live in `setup`, `warm`, `capture`, `synchronize`, `allocated`, `max_allocated` and
    `reset_peak`, so a test can stand in for them on the CPU."""

    def __init__(self, warmup: int = WARMUP_STEPS, fallback: bool = True):
        self.warmup, self.fallback = warmup, fallback
        self.graphs: dict = {}
        self.calls: dict = {}
        self.failed: str | None = None
        self.capture_s = 0.0
        self.capture_peak: dict = {}
        self.closed = False
        self.setup()
        self.begin()

    # ----------------------------------------------------------------- the CUDA side
    def setup(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated()

    def max_allocated(self) -> int:
        return torch.cuda.max_memory_allocated()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def warm(self, fn) -> None:
        """An eager warm-up call on a side stream (PyTorch's recipe before a capture)."""
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            fn()
        torch.cuda.current_stream().wait_stream(self.side)

    def capture(self, key, fn):
        """Record `fn` into a new graph (nothing runs) and return it."""
        graph = torch.cuda.CUDAGraph()
        # the outer stream context puts the current stream back even when a failed capture's end raises
        # (torch.cuda.graph's exit then skips its own); thread_local: DataLoader's pin-memory thread may call
        # CUDA while this thread captures
        with torch.cuda.stream(torch.cuda.current_stream()):
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                fn()
        torch.cuda.synchronize()
        return graph

    # ----------------------------------------------------------------- the logic
    def begin(self) -> None:
        """Start a new memory window (an epoch's training, or one evaluation)."""
        self.reset_peak()
        self.used: set = set()
        self.peak_before_capture = 0

    def peak(self) -> int:
        return max([self.max_allocated(), self.peak_before_capture,
                    *(self.capture_peak[k] for k in self.used if k in self.capture_peak)])

    def close(self) -> None:
        """Drop every graph (a graph's destructor frees its share of the memory pool) and refuse further runs."""
        self.graphs.clear()
        self.pool = self.side = None
        self.closed = True

    def run(self, key, fn, state=lambda: [], before_capture=None) -> None:
        """Replay the graph of `key`, or run `fn` eagerly (on a side stream while warming up, on the current
        one after a failed capture), or capture it and replay it (capturing does not execute). `state()`:
        every tensor `fn` writes, what a failed capture must leave as it was."""
        if self.closed:
            raise RuntimeError("these CUDA graphs were closed (close() freed them); build a new step")
        if self.failed is not None:
            fn()
            return
        self.used.add(key)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= self.warmup:
            self.warm(fn)
            return
        self.synchronize()
        self.peak_before_capture = max(self.peak_before_capture, self.max_allocated())  # this window's so far
        before = self.allocated()
        saved = [t.clone() for t in state()]  # what a failed capture or replay must leave as it was
        # the copy is the fallback's, not the step's: its bytes (as the allocator counts them) come off the
        # capture peak, and the allocator's peak starts afresh once it is freed
        snapshot = self.allocated() - before
        self.reset_peak()
        start = time.perf_counter()
        try:
            if before_capture is not None:
                before_capture()
            graph = self.capture(key, fn)
            took = time.perf_counter() - start
            self.capture_peak[key] = self.max_allocated() - snapshot
            graph.replay()  # the step itself: a capture only records it
            self.synchronize()  # a replay that fails says so here, not at some later step
        except Exception as e:  # noqa: BLE001 - any failure of capture or first replay: fall back or stop
            self.give_up(key, e, state(), saved)
            del saved
            self.reset_peak()
            fn()  # this step, eagerly, from the restored state
            return
        del saved
        self.reset_peak()
        self.capture_s += took
        self.graphs[key] = graph
        log.info(f"CUDA graph captured: {key} in {took:.2f} s")

    def give_up(self, key, error: Exception, state: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
        reason = first_line(error)
        if not self.fallback:
            raise GraphCaptureError(f"CUDA graph capture of {key} failed ({reason}); with cuda_graphs=auto the run "
                                    "would continue eagerly") from error
        try:
            self.synchronize()
            with torch.no_grad():
                for tensor, copy in zip(state, saved):
                    tensor.copy_(copy)
        except Exception as again:  # noqa: BLE001 - a sticky error: every CUDA call of this process fails now
            # from None: one line from the commands, one traceback (not two) where a caller prints it
            raise StickyCudaError(f"CUDA graph capture of {key} failed ({reason}) and left the GPU unusable in this "
                                  f"process ({first_line(again)}), so the run cannot go on eagerly; run it again "
                                  "with cuda_graphs=off (eager steps), which resumes from the last checkpoint"
                                  ) from None
        self.failed = reason
        self.graphs.clear()  # one eager path from here on: the same numbers as a run without graphs
        log.warning(f"CUDA graph capture of {key} failed ({reason}); the run continues with eager steps "
                    "(cuda_graphs=off skips the attempt)")


class TrainStep:
    """One training step of the run, graphed when it can be. Owns the running loss/accuracy sums."""

    def __init__(self, model, optimizer, method, freezer, sieve, analysis, meter, rt, label_smoothing: float,
                 batch_size: int, graphs: bool, world: World | None = None, fallback: bool = True):
        self.world = world or World()  # several ranks: gradients are averaged before masks and SGD see them
        self.model, self.optimizer, self.method, self.freezer = model, optimizer, method, freezer
        self.sieve, self.analysis, self.meter, self.rt = sieve, analysis, meter, rt
        self.label_smoothing, self.batch_size = label_smoothing, batch_size
        self.loss_sum = torch.zeros((), device=rt.device)
        self.correct = torch.zeros((), device=rt.device, dtype=torch.long)
        self.graphs = Graphs(fallback=fallback) if graphs else None
        self.closed = False
        if rt.device.type == "cuda":
            ensure_momentum_buffers(optimizer)  # the fused SGD wants all buffers or none
        self.lrs = None
        dtype = device_lr_dtype(rt.device, graphs)
        if dtype is not None:
            self.lrs = torch.zeros(len(optimizer.param_groups), device=rt.device, dtype=dtype)
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = self.lrs[i]
        self.static: tuple[torch.Tensor, ...] | None = None
        # optimizer steps taken by the run, the clock of every step-based schedule (RigL's updates and drop
        # fraction, DSR's period): counted here as they happen, checkpointed, the same on every rank
        self.steps = 0

    @property
    def capture_s(self) -> float:
        return self.graphs.capture_s if self.graphs is not None else 0.0

    @property
    def graphed(self) -> bool:
        """Are plain steps replayed from CUDA graphs (graphs on, and no capture has failed)?"""
        return self.graphs is not None and self.graphs.failed is None

    def written_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step writes in place: what a failed capture must leave as it was."""
        optimizer_state = [v for state in self.optimizer.state.values() for v in state.values()
                           if isinstance(v, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *optimizer_state,
                *self.method.masks.masks.values(), *self.sieve.step_tensors(), self.loss_sum, self.correct]

    def close(self) -> None:
        """Free this step's GPU memory now rather than at the next garbage collection: its CUDA graphs and their
        memory pool (with the gradients a capture allocated there), its static batch buffers. For a caller that
        builds one step after another (a benchmark's cases); a closed step refuses to run."""
        if self.graphs is not None:
            self.graphs.close()
        self.optimizer.zero_grad(set_to_none=True)
        self.static = None
        self.closed = True

    def begin_epoch(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.graphs is not None:
            self.graphs.begin()
        elif self.rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.rt.device)

    def peak_memory(self) -> int | None:
        """Peak bytes allocated on the GPU since begin_epoch() (None off CUDA)."""
        return peak_memory(self.graphs, self.rt.device)

    def set_lrs(self, t: float) -> float:
        """Each block's learning rate at fractional epoch t (per-block cosine over each block's active epochs);
        returns the head's."""
        if self.lrs is None:
            return self.freezer.set_lrs(self.optimizer, t)
        lrs = self.freezer.block_lrs(self.optimizer, t)
        host = torch.tensor(lrs, dtype=self.lrs.dtype)
        self.lrs.copy_(host.pin_memory() if self.lrs.is_cuda else host, non_blocking=True)
        return lrs[-1]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, t: float,
                 samples: int | None = None) -> float:
        """Train on one batch (x, y, idx all on the training device) at fractional epoch `t`, as the run's step
        `self.steps`; returns the head's LR. `samples`: the global batch size (all ranks), which the cost meter
        counts; default len(y)."""
        if self.closed:
            raise RuntimeError("this TrainStep was closed (close() freed its CUDA graphs); build a new one")
        step = self.steps
        self.steps += 1
        self.samples = len(y) if samples is None else samples
        lr = self.set_lrs(t)
        plain = self.method.plain_step(step) and not self.analysis.enabled and len(y) == self.batch_size
        if not (self.graphed and plain):
            self.run_step(x, y, idx, step, plain=False)
            if self.world.enabled and not self.method.plain_step(step):
                self.world.check_masks(self.method.masks, f"after step {step}")
            return lr
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y), torch.empty_like(idx))
        for buffer, value in zip(self.static, (x, y, idx)):
            buffer.copy_(value, non_blocking=True)
        self.graphs.run(("train step", f"{self.freezer.frozen} frozen blocks"),
                        lambda: self.run_step(*self.static, step, plain=True), state=self.written_tensors,
                        before_capture=lambda: self.optimizer.zero_grad(set_to_none=True))
        self.meter.step(self.samples, dense_grad=False)  # a plain step changes no mask: its cost can follow it
        return lr

    def run_step(self, x, y, idx, step: int, plain: bool) -> None:
        try:
            self.step_ops(x, y, idx, step, plain)
        except RuntimeError as e:
            if isinstance(e, SpfdeError) or not refused_as_nondeterministic(e):
                raise
            settings = ", ".join(["deterministic=true", *(["precision=bf16"] if self.rt.bf16 else []),
                                  *(["channels_last=true"] if self.rt.channels_last else [])])
            raise DeterministicKernelError(
                f"{settings}: the GPU has no deterministic kernel for a layer of this model ({first_line(e)}); run "
                "with deterministic=false, or keep it with precision=fp32 or channels_last=false") from None

    def step_ops(self, x, y, idx, step: int, plain: bool) -> None:
        """The step itself, op by op (what a graph records)."""
        with self.rt.autocast(cache=self.graphs is None):  # a graph must not keep autocast's weight cache
            logits = frozen_prefix_forward(self.model, x, self.freezer.frozen)  # frozen prefix under no_grad
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world.enabled:  # average the trainable gradients over the ranks
            self.world.sync_gradients([p for p in self.model.parameters() if p.requires_grad])
        if plain:
            self.method.masks.mask_grads()
        else:
            self.method.after_backward(step)  # e.g. RigL reads the dense gradient; then masked grads are zeroed
            self.analysis.after_backward()  # per-layer gradient norms (when analysis is on)
        self.optimizer.step()
        if plain:
            self.method.masks.apply()
        else:
            self.meter.step(self.samples, dense_grad=self.method.dense_grad_step(step))  # FLOPs at this step's masks
            self.method.after_optimizer_step(step)  # masked weights back to zero; step-based updates (RigL, SET)
        hits = logits.detach().argmax(1) == y
        self.sieve.observe(idx, hits)  # forgetting events from this step's own predictions
        self.loss_sum += loss.detach().float() * len(y)
        self.correct += hits.sum()


class EvalBatches:
    """Evaluation batches: full ones replayed from one CUDA graph when graphs are on."""

    def __init__(self, model, rt, batch_size: int, top5: bool, graphs: bool, fallback: bool = True):
        self.model, self.rt, self.batch_size, self.top5 = model, rt, batch_size, top5
        self.graphs = Graphs(warmup=1, fallback=fallback) if graphs else None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.closed = False

    def close(self) -> None:
        """Free the evaluation graph, its memory pool and the static batch now (see TrainStep.close); a closed
        one refuses to run."""
        if self.graphs is not None:
            self.graphs.close()
        self.static = None
        self.closed = True

    def begin(self) -> None:
        device = self.rt.device
        if self.sums is None:
            self.sums = (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long),
                         torch.zeros((), device=device, dtype=torch.long))
        for s in self.sums:
            s.zero_()
        if self.graphs is not None:
            self.graphs.begin()
        elif device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak_memory(self) -> int | None:
        """Peak bytes allocated on the GPU since begin() (None off CUDA)."""
        return peak_memory(self.graphs, self.rt.device)

    @property
    def capture_s(self) -> float:
        return self.graphs.capture_s if self.graphs is not None else 0.0

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.closed:
            raise RuntimeError("these EvalBatches were closed (close() freed their CUDA graph); build new ones")
        if self.graphs is None or self.graphs.failed is not None or len(y) != self.batch_size:
            self.run_batch(x, y)
            return
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y))
        self.static[0].copy_(x, non_blocking=True)
        self.static[1].copy_(y, non_blocking=True)
        self.graphs.run("evaluation batch", lambda: self.run_batch(*self.static), state=lambda: list(self.sums))

    def run_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss_sum, correct1, correct5 = self.sums
        with torch.no_grad(), self.rt.autocast(cache=self.graphs is None):
            logits = self.model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        top = logits.topk(5 if self.top5 else 1, dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        if self.top5:
            correct5 += (top == y[:, None]).any(1).sum()


def graphs_status(*parts) -> str:
    """For the summary: "off", "on", or "fallback: <the error>" when a capture failed and the run went eager."""
    graphs = [p.graphs for p in parts if p.graphs is not None]
    failed = [g.failed for g in graphs if g.failed is not None]
    return f"fallback: {failed[0]}" if failed else ("on" if graphs else "off")


def peak_memory(graphs: Graphs | None, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return graphs.peak() if graphs is not None else torch.cuda.max_memory_allocated(device)
