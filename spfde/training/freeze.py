"""Progressive layer freezing (paper Sec. 4.2, Alg. 1, Fig. 3a): the plan, the four schemes, applying
and releasing a freeze, and the per-block cosine learning rate.

Blocks are the model's ordered block list (stem, body blocks, head). The candidates are the first
blocks that together hold about `freeze_fraction` (paper: 2/3) of the conv/linear layers; the head is
never frozen. Blocks freeze strictly in forward order, one more every Δτ (`interval`) epochs, so the
frozen part is always a prefix: it runs forward under `torch.no_grad()` and its backward is skipped.

The planner (Alg. 1) takes a table of the run's training FLOPs per epoch for every possible number of
frozen blocks (from `spfde.training.cost`, sieving included; frozen layers priced at the density they would
train at, so the difference is the back-propagation they skip, as the paper counts it) and solves each
scheme's free parameter so that freezing saves at least `freeze` (x) of the run's training FLOPs, as
little above it as the granularity allows: with `freeze_sync` (default) freeze events fall on
structure-update epochs (multiples of Δτ, T_frz > 0, paper Sec. 4.2.1), otherwise on any epoch:

  single_shot  the latest start epoch T_frz; block i freezes at T_frz + iΔτ and stays frozen (paper)
  resume       the same, released for the last `resume_epochs` epochs of fine-tuning at a small LR
  periodic     from epoch 0, frozen windows (the shortest length, whole Δτ when synced, reaching x) alternate
               with active windows of `period` epochs; in frozen windows the prefix grows one block every
               Δτ, in active windows every block trains; the last frozen epochs are trimmed to the target
  delayed      the same, starting after the first `delay` of training
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from spfde.errors import SpfdeError
from spfde.training.cost import flops_table
from spfde.training.schedule import cosine, lr_at


class FreezeError(SpfdeError, ValueError):
    """A freezing target that cannot be reached; the message says what can."""


def candidate_blocks(model: nn.Module, fraction: float) -> int:
    """Number of leading blocks holding about `fraction` of the conv/linear layers (never the head)."""
    per_block = [sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in block.modules()) for block in model.blocks]
    total = sum(per_block)
    best, best_gap, running = 0, float("inf"), 0
    for k in range(1, len(per_block)):  # the head (last block) is never a candidate
        running += per_block[k - 1]
        gap = abs(running - fraction * total)
        if gap < best_gap:
            best, best_gap = k, gap
    return best


@dataclass
class FreezePlan:
    scheme: str
    candidates: int
    frozen: list[int]  # frozen blocks (a prefix) during each epoch
    parameter: int  # the solved value: start epoch, or frozen-window length for `delayed`
    saving: float  # planned FLOPs saved, as a share of the run without freezing
    finetune_from: int | None = None  # resume: first epoch of the final fine-tune (all released)
    events: list[tuple[int, int, str]] = field(default_factory=list)  # (epoch, block, "freeze"/"release")


def progressive(epoch: int, start: int, interval: int, candidates: int) -> int:
    if epoch < start:
        return 0
    return min(candidates, (epoch - start) // interval + 1)


def scheme_schedule(scheme: str, value: int, epochs: int, interval: int, candidates: int, opts) -> list[int]:
    """Frozen blocks per epoch for a scheme and its free parameter `value`."""
    out = []
    for e in range(epochs):
        if scheme == "single_shot":
            k = progressive(e, value, interval, candidates)
        elif scheme == "resume":
            k = 0 if e >= epochs - opts.resume_epochs else progressive(e, value, interval, candidates)
        else:  # periodic (from epoch 0) and delayed (from `delay`): frozen windows of `value` epochs
            # alternate with active windows of `period`; in frozen windows the prefix grows one block
            # every Δτ as in single-shot, in active windows every block trains
            start = window_start(scheme, epochs, interval, opts)
            in_frozen_window = e >= start and (e - start) % (value + opts.period) < value
            k = progressive(e, start, interval, candidates) if in_frozen_window else 0
        out.append(k)
    return out


def window_start(scheme: str, epochs: int, interval: int, opts) -> int:
    """First epoch of the periodic windows: 0, or after the delay (rounded up to an update epoch when synced)."""
    if scheme == "periodic":
        return 0
    start = int(opts.delay * epochs)
    return -(-start // interval) * interval if opts.sync else start


def solve(scheme: str, target: float, table: list[list[float]], epochs: int, interval: int, candidates: int,
          opts) -> FreezePlan:
    """Pick the scheme's parameter that saves >= target of the run's FLOPs with the least excess.
    table[e][k]: FLOPs of epoch e with the first k blocks frozen.

    single_shot / resume: the latest start epoch that reaches the target. periodic / delayed: the
    shortest frozen window that reaches it, after which the last frozen epochs are trimmed (one block
    at a time, from the end) while the target still holds."""
    base = sum(row[0] for row in table)

    def saving(schedule: list[int]) -> float:
        return sum(table[e][0] - table[e][k] for e, k in enumerate(schedule)) / base

    # synced (paper Sec. 4.2.1): freeze events fall on structure-update epochs, multiples of Δτ, and
    # T_frz > 0 (Alg. 1: 0 < T_frz < T); otherwise any epoch
    step = interval if opts.sync else 1
    if scheme in ("periodic", "delayed"):
        values = range(step, epochs + 1, step)
    else:
        values = range((epochs - 1) // step * step, 0 if opts.sync else -1, -step)
    best_possible = 0.0
    for value in values:
        schedule = scheme_schedule(scheme, value, epochs, interval, candidates, opts)
        s = saving(schedule)
        best_possible = max(best_possible, s)
        if s >= target:
            if scheme in ("periodic", "delayed"):
                schedule, s = trim(schedule, target, table, base)
            return make_plan(scheme, candidates, schedule, value, s, epochs, opts)
    raise FreezeError(f"freeze={target:g} cannot be reached with freeze_scheme={scheme}: freezing all {candidates} "
                      f"candidate blocks as early as the scheme allows saves {best_possible:.4f} of the training "
                      f"FLOPs; use freeze <= {math.floor(best_possible * 1000) / 1000:g}")


def trim(schedule: list[int], target: float, table: list[list[float]], base: float) -> tuple[list[int], float]:
    schedule = list(schedule)
    excess = sum(table[e][0] - table[e][k] for e, k in enumerate(schedule)) - target * base
    for e in range(len(schedule) - 1, -1, -1):
        while schedule[e] > 0:
            loss = table[e][schedule[e] - 1] - table[e][schedule[e]]
            if loss > excess:
                return schedule, target + excess / base
            excess -= loss
            schedule[e] -= 1
    return schedule, target + excess / base


def make_plan(scheme, candidates, schedule, value, saving, epochs, opts) -> FreezePlan:
    events = []
    previous = 0
    for e, k in enumerate(schedule):
        for b in range(previous, k):
            events.append((e, b, "freeze"))
        for b in reversed(range(k, previous)):  # the prefix shrinks from its end
            events.append((e, b, "release"))
        previous = k
    finetune = epochs - opts.resume_epochs if scheme == "resume" else None
    return FreezePlan(scheme, candidates, schedule, value, saving, finetune, events)


def make_freeze_plan(cfg, model: nn.Module, method, cost_model,
                     batches_per_epoch: list[list[int]]) -> FreezePlan | None:
    """Alg. 1 for this run: None when freezing is off; FreezeError when the target is out of reach."""
    if cfg.freeze <= 0:
        return None

    candidates = candidate_blocks(model, cfg.freeze_fraction)
    table = flops_table(cost_model, method, batches_per_epoch, candidates, frozen_densities=False)  # BP saved
    return solve(cfg.freeze_scheme.name, cfg.freeze, table, cfg.epochs, cfg.interval, candidates,
                 scheme_options(cfg))


@dataclass
class SchemeOptions:
    resume_epochs: int
    resume_lr_scale: float
    period: int
    delay: float
    sync: bool = True  # freeze events on multiples of Δτ (cfg.freeze_sync)


def scheme_options(cfg) -> SchemeOptions:
    s = cfg.freeze_scheme
    return SchemeOptions(resume_epochs=max(1, round(s.resume_fraction * cfg.epochs)),
                         resume_lr_scale=s.resume_lr_scale, period=s.period, delay=s.delay, sync=cfg.freeze_sync)


class Freezer:
    """Applies the plan to the model epoch by epoch; owns the per-block learning rates."""

    def __init__(self, model: nn.Module, masks, plan: FreezePlan | None, optim_cfg, epochs: int, per_block_lr: bool,
                 opts):
        self.model, self.masks, self.plan = model, masks, plan
        self.optim, self.epochs, self.per_block_lr, self.opts = optim_cfg, epochs, per_block_lr, opts
        self.frozen = 0  # current frozen prefix
        self.active_before = self._active_before()  # [block][epoch]: active epochs of the block before it

    @property
    def enabled(self) -> bool:
        return self.plan is not None

    # ----------------------------------------------------------------- applying
    def start_epoch(self, epoch: int, optimizer, method) -> None:
        """Freeze or release blocks so that the prefix matches the plan for this epoch."""
        if not self.enabled:
            return
        target = self.plan.frozen[epoch]
        if target > self.frozen:
            newly = range(self.frozen, target)
            method.on_freeze(self.masks.in_blocks(newly), epoch)  # e.g. MEST prunes a soft-bound block to its target
            self.set_frozen(newly, True, optimizer)
        elif target < self.frozen:
            released = range(target, self.frozen)
            self.set_frozen(released, False, optimizer)
            method.on_release(self.masks.in_blocks(released), epoch)
        self.frozen = target

    def set_frozen(self, blocks: range, frozen: bool, optimizer) -> None:
        for b in blocks:
            for p in self.model.blocks[b].parameters():
                p.requires_grad_(not frozen)
                p.grad = None
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if not frozen and buf is not None:
                    buf.zero_()  # a released block starts with fresh momentum (in place: CUDA graphs read it)
        names = set(self.masks.in_blocks(blocks))
        self.masks.frozen = (self.masks.frozen | names) if frozen else (self.masks.frozen - names)

    def train_mode(self) -> None:
        """model.train(), with the BN layers of frozen blocks kept in eval mode (statistics fixed)."""
        self.model.train()
        for block in self.model.blocks[:self.frozen]:
            block.eval()

    # ----------------------------------------------------------------- learning rates
    def _active_before(self) -> list[list[int]]:
        end = self.epochs
        if self.enabled and self.plan.finetune_from is not None:
            end = self.plan.finetune_from
        table = []
        for b in range(len(self.model.blocks)):
            counts, n = [], 0
            for e in range(end + 1):
                counts.append(n)
                if e < end and (not self.enabled or self.plan.frozen[e] <= b):
                    n += 1
            table.append(counts)
        return table

    def block_lr(self, block: int, t: float) -> float:
        """Learning rate of `block` at fractional epoch t: cosine over the block's own active epochs
        (a block frozen at epoch t_b reaches the minimum at t_b); the resume fine-tune runs a cosine
        from lr x resume_lr_scale to the minimum."""
        if not self.enabled:
            return lr_at(t, self.optim, self.epochs)
        finetune = self.plan.finetune_from
        if finetune is not None and t >= finetune:
            return cosine(t, finetune, self.epochs, self.optim.lr * self.opts.resume_lr_scale, self.optim.min_lr)
        end = finetune if finetune is not None else self.epochs
        if not self.per_block_lr:
            return lr_at(t, self.optim, end)
        epoch = min(int(t), end - 1)
        before = self.active_before[block]
        own = before[epoch] + (t - epoch)
        return lr_at(own, self.optim, before[end])

    def block_lrs(self, optimizer, t: float) -> list[float]:
        """The learning rate of each optimizer group (one per block) at fractional epoch t."""
        return [self.block_lr(group["block"], t) for group in optimizer.param_groups]

    def set_lrs(self, optimizer, t: float) -> float:
        for group, lr in zip(optimizer.param_groups, self.block_lrs(optimizer, t)):
            group["lr"] = lr
        return optimizer.param_groups[-1]["lr"]

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"frozen": self.frozen, "schedule": list(self.plan.frozen) if self.plan else None}

    def load_state_dict(self, state: dict, optimizer) -> None:
        if self.plan is not None and state["schedule"] != list(self.plan.frozen):
            raise FreezeError("the checkpoint was trained with another freeze plan than this config gives")
        self.frozen = 0
        if state["frozen"]:
            self.set_frozen(range(0, state["frozen"]), True, optimizer)
            self.frozen = state["frozen"]


def block_param_groups(model: nn.Module) -> list[dict]:
    """One optimizer parameter group per block, so each block can follow its own learning rate."""
    return [{"params": list(block.parameters()), "block": i} for i, block in enumerate(model.blocks)]


def frozen_prefix_forward(model: nn.Module, x: torch.Tensor, frozen: int) -> torch.Tensor:
    """The model's forward with its first `frozen` blocks under no_grad: their backward never runs."""
    if frozen:
        with torch.no_grad():
            for block in model.blocks[:frozen]:
                x = block(x)
    for block in model.blocks[frozen:]:
        x = block(x)
    return x
