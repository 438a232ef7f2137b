"""Data-parallel training on torch.distributed: one process per GPU (or CPU process with gloo).

A run is distributed when it is started by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) or as a
multi-task SLURM job (submitit's `TorchDistributedEnvironment` reads SLURM's variables). Every rank
builds the same run from the same config and seed; `batch_size` stays the *global* batch: each global
batch (the same samples a single process would draw) is split among the ranks.

What keeps the ranks identical, and why it is exact:
- weights: the same seed on every rank, then gradients of the trainable blocks are all-reduced by hand
  (one flat buffer) before the masks and the optimizer see them. By hand rather than through
  DistributedDataParallel because the trainable set changes at every freeze/release event and the
  frozen prefix runs outside autograd; BN buffers are averaged once per epoch;
- masks: initial masks are broadcast from rank 0 (saliency methods score data each rank holds a part
  of); every later update reads only weights, all-reduced gradients and the method's own generator
  (same seed, same draws), so it is the same on every rank. `check_masks` compares a checksum after
  each update and stops the run on a mismatch;
- the sieve: every rank reads its disjoint shard of the partial set; the per-sample observations of an
  epoch are combined (each sample is seen once an epoch, on one rank) before they are folded into the
  forgetting counts, so the partial set and the removed queue are the same everywhere.
Only rank 0 writes the checkpoint, metrics, summary and wandb; every rank resumes from the same file.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from spfde.errors import SpfdeError

log = logging.getLogger("spfde")


class DistributedError(SpfdeError, RuntimeError):
    """Ranks that disagree (masks), or a setting the world size cannot serve; one line for the user."""


class World:
    """This process's place among the ranks; with one process every method is a no-op."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's part [lo, hi) of a global batch of n samples (contiguous; sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def all_reduce_(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def sum(self, values: list[float]) -> list[float]:
        """Sum Python numbers over the ranks."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.all_reduce_(t).tolist()

    @property
    def device(self) -> torch.device:
        """Where collectives of this backend run (NCCL: the rank's GPU; gloo: the CPU)."""
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # ----------------------------------------------------------------- training state
    @torch.no_grad()
    def sync_gradients(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of `params` (the trainable ones) over the ranks, in one flat buffer."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        reduced = self.all_reduce_(flat.to(self.device)).div_(self.size).to(flat.device)
        offset = 0
        for g in grads:
            g.copy_(reduced[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @torch.no_grad()
    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values into `tensors` on every rank."""
        if not self.enabled:
            return
        for t in tensors:
            buf = t.detach().to(self.device)
            dist.broadcast(buf, src=0)
            t.copy_(buf.to(t.dtype))

    @torch.no_grad()
    def average_buffers(self, module: torch.nn.Module) -> None:
        """BN running statistics differ per rank (each normalises its own shard): average them."""
        if not self.enabled:
            return
        for b in module.buffers():
            if b.is_floating_point():
                reduced = self.all_reduce_(b.detach().to(self.device, torch.float64)).div_(self.size)
                b.copy_(reduced.to(b.dtype))

    def check_masks(self, masks, when: str) -> None:
        """Stop with a clear error if any rank holds other masks than the others."""
        self.check_same(masks.masks, "masks", when)

    def check_sieve(self, sieve, when: str) -> None:
        """Stop with a clear error if any rank holds another partial set or removed queue."""
        if sieve.enabled:
            self.check_same({"partial set": sieve.partial, "removed queue": sieve.queue}, "sieve state", when)

    @torch.no_grad()
    def check_same(self, tensors: dict[str, torch.Tensor], what: str, when: str) -> None:
        """Compare a cheap checksum of each tensor over the ranks (its sum and the sum of its values
        weighted by position); on a difference, raise naming the first tensor that differs."""
        if not self.enabled or not tensors:
            return
        sums = []
        for t in tensors.values():
            flat = t.flatten().double()
            positions = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            sums += [flat.sum(), (positions * flat).sum()]
        local = torch.stack(sums).to(self.device)
        low, high = local.clone(), local.clone()
        self.all_reduce_(low, dist.ReduceOp.MIN)
        self.all_reduce_(high, dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            name = list(tensors)[int((low != high).nonzero()[0]) // 2]
            raise DistributedError(f"the ranks hold different {what} {when} (first: {name}); an update read "
                                   "something that differs between ranks. Stopped")


def environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's or a SLURM job's environment; None for one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SUBMITIT_EXECUTOR" in os.environ:  # a submitit job (SLURM or local) with several tasks
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        if JobEnvironment().num_tasks > 1:
            env = TorchDistributedEnvironment().export()  # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
            return env.rank, env.world_size, env.local_rank
    return None


def setup_world(device_setting: str) -> World:
    """Join the process group when started as one of several ranks (NCCL with CUDA, gloo otherwise)."""
    found = environment()
    if found is None or found[1] <= 1:
        return World()
    rank, size, local_rank = found
    cuda = device_setting.startswith("cuda") or (device_setting == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # NCCL: bind the group to this rank's GPU, so its barriers need not guess the device (and warn)
        bound = {"device_id": torch.device("cuda", local_rank)} if cuda else {}
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size,
                                timeout=datetime.timedelta(minutes=30), **bound)
    return World(rank, size, local_rank)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_world(cfg, world: World) -> None:
    """Settings a multi-rank run cannot serve, as one line each, before any work."""
    if not world.enabled:
        return
    if cfg.batch_size % world.size:
        raise DistributedError(f"batch_size={cfg.batch_size} is the global batch and must divide among the "
                               f"{world.size} ranks; use a multiple of {world.size}")
    if cfg.cuda_graphs == "on":
        raise DistributedError("cuda_graphs=on: CUDA graphs are not used with several ranks yet (the gradient "
                               "all-reduce runs between the captured parts); use cuda_graphs=auto")
    if cfg.distributed.sync_bn and not (cfg.device.startswith("cuda") or
                                        (cfg.device == "auto" and torch.cuda.is_available())):
        raise DistributedError("distributed.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm)")

