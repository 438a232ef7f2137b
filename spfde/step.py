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
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from spfde.distributed import World
from spfde.freeze import frozen_prefix_forward

log = logging.getLogger("spfde")

WARMUP_STEPS = 3  # eager steps at a new depth before its capture (cuDNN autotuning, lazy allocations)


def use_cuda_graphs(setting: str, device: torch.device) -> bool:
    """cuda_graphs=auto|on|off for this run's device (validation refuses `on` without CUDA)."""
    return device.type == "cuda" and setting in ("auto", "on")


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


class Graphs:
    """CUDA graphs by key, sharing one memory pool; each captured after `warmup` eager calls of its key.

    Memory: a replay allocates nothing, so the allocator's peak does not see it. Each graph's peak during
    its capture (the same buffers a replay reuses) is kept, and `peak()` reports the larger of the
    allocator's peak since `begin()` and the capture peaks of the graphs run since then."""

    def __init__(self, warmup: int = WARMUP_STEPS):
        self.warmup = warmup
        self.graphs: dict = {}
        self.calls: dict = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream()
        self.capture_s = 0.0
        self.capture_peak: dict = {}
        self.begin()

    def begin(self) -> None:
        """Start a new memory window (an epoch's training, or one evaluation)."""
        torch.cuda.reset_peak_memory_stats()
        self.used: set = set()
        self.peak_before_capture = 0

    def peak(self) -> int:
        return max([torch.cuda.max_memory_allocated(), self.peak_before_capture,
                    *(self.capture_peak[k] for k in self.used if k in self.capture_peak)])

    def run(self, key, fn, before_capture=None) -> None:
        """Replay the graph of `key`, or run `fn` eagerly on a side stream while warming up, or capture it
        (then replay, since capturing does not execute)."""
        self.used.add(key)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= self.warmup:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                fn()
            torch.cuda.current_stream().wait_stream(self.side)
            return
        torch.cuda.synchronize()
        start = time.perf_counter()
        if before_capture is not None:
            before_capture()
        self.peak_before_capture = max(self.peak_before_capture, torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        # thread_local: DataLoader's pin-memory thread may call CUDA while this thread captures
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            fn()
        torch.cuda.synchronize()
        self.capture_peak[key] = torch.cuda.max_memory_allocated()
        took = time.perf_counter() - start
        self.capture_s += took
        self.graphs[key] = graph
        log.info(f"CUDA graph captured: {key} in {took:.2f} s")
        graph.replay()


class TrainStep:
    """One training step of the run, graphed when it can be. Owns the running loss/accuracy sums."""

    def __init__(self, model, optimizer, method, freezer, sieve, analysis, meter, rt, label_smoothing: float,
                 batch_size: int, graphs: bool, world: World | None = None):
        self.world = world or World()  # several ranks: gradients are averaged before masks and SGD see them
        self.model, self.optimizer, self.method, self.freezer = model, optimizer, method, freezer
        self.sieve, self.analysis, self.meter, self.rt = sieve, analysis, meter, rt
        self.label_smoothing, self.batch_size = label_smoothing, batch_size
        self.loss_sum = torch.zeros((), device=rt.device)
        self.correct = torch.zeros((), device=rt.device, dtype=torch.long)
        self.graphs = Graphs() if graphs else None
        if rt.device.type == "cuda":
            ensure_momentum_buffers(optimizer)  # the fused SGD wants all buffers or none
        if self.graphs is not None:
            # the learning rate of each block lives on the device; the fused SGD reads it from there (fp32
            # for its kernel; fp64 off CUDA, where these values must equal the eager path's Python floats)
            dtype = torch.float32 if rt.device.type == "cuda" else torch.float64
            self.lrs = torch.zeros(len(optimizer.param_groups), device=rt.device, dtype=dtype)
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = self.lrs[i]
            self.static: tuple[torch.Tensor, ...] | None = None

    @property
    def capture_s(self) -> float:
        return self.graphs.capture_s if self.graphs is not None else 0.0

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

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, step: int, t: float,
                 samples: int | None = None) -> float:
        """Train on one batch at global step `step` and fractional epoch `t`; returns the head's LR.
        `samples`: the global batch size (all ranks), which the cost meter counts; default len(y)."""
        self.samples = len(y) if samples is None else samples
        if self.graphs is None:
            lr = self.freezer.set_lrs(self.optimizer, t)  # per-block cosine over each block's active epochs
            self.run_step(x, y, idx, step, plain=False)
            if self.world.enabled and not self.method.plain_step(step):
                self.world.check_masks(self.method.masks, f"after step {step}")
            return lr
        lrs = self.freezer.block_lrs(self.optimizer, t)
        host = torch.tensor(lrs, dtype=self.lrs.dtype)
        self.lrs.copy_(host.pin_memory() if host.device != self.lrs.device else host, non_blocking=True)
        plain = self.method.plain_step(step) and not self.analysis.enabled and len(y) == self.batch_size
        if not plain:
            self.run_step(x, y, idx.to(self.rt.device, non_blocking=True), step, plain=False)
            return lrs[-1]
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y), torch.empty_like(idx, device=self.rt.device))
        for buffer, value in zip(self.static, (x, y, idx)):
            buffer.copy_(value, non_blocking=True)
        self.graphs.run(("train step", f"{self.freezer.frozen} frozen blocks"),
                        lambda: self.run_step(*self.static, step, plain=True),
                        before_capture=lambda: self.optimizer.zero_grad(set_to_none=True))
        self.meter.step(self.samples, dense_grad=False)  # a plain step changes no mask: its cost can follow it
        return lrs[-1]

    def run_step(self, x, y, idx, step: int, plain: bool) -> None:
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

    def __init__(self, model, rt, batch_size: int, top5: bool, graphs: bool):
        self.model, self.rt, self.batch_size, self.top5 = model, rt, batch_size, top5
        self.graphs = Graphs(warmup=1) if graphs else None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
        if self.graphs is None or len(y) != self.batch_size:
            self.run_batch(x, y)
            return
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y))
        self.static[0].copy_(x, non_blocking=True)
        self.static[1].copy_(y, non_blocking=True)
        self.graphs.run("evaluation batch", lambda: self.run_batch(*self.static))

    def run_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss_sum, correct1, correct5 = self.sums
        with torch.no_grad(), self.rt.autocast(cache=self.graphs is None):
            logits = self.model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        top = logits.topk(5 if self.top5 else 1, dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        if self.top5:
            correct5 += (top == y[:, None]).any(1).sum()


def peak_memory(graphs: Graphs | None, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return graphs.peak() if graphs is not None else torch.cuda.max_memory_allocated(device)
