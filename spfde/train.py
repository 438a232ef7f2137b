"""The training loop. It reads top to bottom; each technique is called by name."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from spfde.analysis import Analysis
from spfde.checkpoint import (
    CHECKPOINT,
    SUMMARY,
    finished_summary,
    load_checkpoint,
    restore_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from spfde.cost import CostMeter, CostModel, MemoryModel, epoch_batches
from spfde.data import build_data
from spfde.freeze import Freezer, block_param_groups, frozen_prefix_forward, make_freeze_plan, scheme_options
from spfde.log import RunLogger, new_run_id
from spfde.models import build_model
from spfde.rundir import (
    Stopped,
    catch_stop_signals,
    check_fingerprint,
    check_finite,
    config_fingerprint,
    data_fingerprint,
    lock_run_dir,
    restore_signals,
    start_fresh,
)
from spfde.sieve import Sieve, check_sieve, sieve_epochs
from spfde.sparse import build_sparsity

log = logging.getLogger("spfde")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """SGD with one parameter group per block (each block may follow its own learning rate)."""
    return torch.optim.SGD(block_param_groups(model), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, nesterov=optim.nesterov)


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    precision: str
    channels_last: bool

    def autocast(self):
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda")
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def train_one_epoch(model, loader, optimizer, sparsity, freezer, sieve, cost, analysis, epoch: int, rt: Runtime,
                    cfg, bar) -> dict:
    freezer.train_mode()  # model.train(), frozen blocks' BN in eval mode
    steps = len(loader)
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.long)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        x, y = rt.batch(x, y)
        step = epoch * steps + i
        lr = freezer.set_lrs(optimizer, epoch + i / steps)  # per-block cosine over each block's active epochs
        with rt.autocast():
            logits = frozen_prefix_forward(model, x, freezer.frozen)  # the frozen prefix runs under no_grad
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sparsity.after_backward(step)  # e.g. RigL reads the dense gradient; then masked grads are zeroed
        analysis.after_backward()  # per-layer gradient norms (when analysis is on)
        optimizer.step()
        cost.step(len(y), dense_grad=sparsity.dense_grad_step(step))  # FLOPs of this step, at its masks
        sparsity.after_optimizer_step(step)  # masked weights back to zero; step-based updates (RigL, SET)
        hits = logits.detach().argmax(1) == y
        sieve.observe(idx, hits)  # forgetting events from this step's own predictions
        loss_sum += loss.detach().float() * len(y)
        correct += hits.sum()
        seen += len(y)
        bar.update(1)
    return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen, "samples": seen, "lr": lr}


@torch.no_grad()
def evaluate(model, loader, rt: Runtime, top5: bool) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=rt.device)
    correct1 = torch.zeros((), device=rt.device, dtype=torch.long)
    correct5 = torch.zeros((), device=rt.device, dtype=torch.long)
    seen = 0
    for x, y, _idx in loader:
        x, y = rt.batch(x, y)
        with rt.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        top = logits.topk(5 if top5 else 1, dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        if top5:
            correct5 += (top == y[:, None]).any(1).sum()
        seen += len(y)
    stats = {"test/loss": loss_sum.item() / seen, "test/acc": correct1.item() / seen}
    if top5:
        stats["test/acc5"] = correct5.item() / seen
    return stats


def train(cfg) -> dict:
    """Train one run in cfg.run_dir: resume from its checkpoint if there is one, return the summary."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)  # one process per run dir; a second one fails at once, naming the holder
    if cfg.sparsity.name == "lth" and cfg.sparsity.lth.round < 0:
        from spfde.sparse.lth import run_rounds

        return run_rounds(cfg, train)  # LTH: one normal run per pruning round, in sub-directories
    fresh = start_fresh(cfg, run_dir)  # archives earlier results, once per launch
    # the checkpoint first: a damaged or foreign one, or one made with other settings, stops here
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    fingerprint = config_fingerprint(cfg)
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    done = finished_summary(run_dir)
    if done is not None and not fresh:
        log.info(f"This run already finished: test acc {done['final_acc']:.4f} after {done['epochs']} epochs. "
                 f"Results: {run_dir / SUMMARY} and metrics.jsonl. To train it again, add fresh=true "
                 f"(the old results move to {run_dir}/previous-<time>/).")
        return done
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # --- the parts of a run
    threads = cfg.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0))
    if threads:  # jobs sharing a machine should not each use every core
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    # denormal floats make CPU kernels several times slower (seen with GraSP masks on digits); flushing
    # them to zero changes nothing measurable in accuracy
    torch.set_flush_denormal(True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    generator = torch.Generator().manual_seed(cfg.seed)
    data = build_data(cfg, device, generator)
    fingerprint.update(data_fingerprint(data))
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    check_sieve(cfg, data.train.dataset_size)
    sieve = Sieve(cfg, data.train.dataset_size, device, torch.Generator().manual_seed(cfg.seed + 2))
    sieve.start_epoch(0, data.train)  # the loader draws from the partial set only
    rt = Runtime(device, cfg.precision, channels_last=cfg.channels_last and device.type == "cuda")
    model = build_model(cfg.model, data.num_classes, data.channels).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    sparsity = build_sparsity(cfg, model, optimizer, steps_per_epoch=len(data.train))
    input_shape = (data.channels, data.image_size, data.image_size)
    cost_model = CostModel(model, input_shape)
    cost = CostMeter(cost_model, MemoryModel(model, input_shape, cfg.cost.memory_batch), sparsity)
    batches = [epoch_batches(n, cfg.batch_size) for n in sieve_epochs(cfg, data.train.dataset_size)]
    freeze_plan = make_freeze_plan(cfg, model, sparsity, cost_model, batches)
    freezer = Freezer(model, sparsity.masks, freeze_plan, cfg.optim, cfg.epochs, cfg.per_block_lr,
                      scheme_options(cfg))
    analysis = Analysis(cfg, run_dir, model, sparsity.masks, data.test, device)
    top5 = data.num_classes > 5

    # --- resume from the run directory's checkpoint, if any
    start_epoch, best_acc, elapsed, run_id, records = 0, 0.0, 0.0, new_run_id(), []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sparsity.load_state_dict(ckpt["sparsity"])  # masks bit-exact, never re-randomised
        cost.load_state_dict(ckpt["cost"])
        freezer.load_state_dict(ckpt["freezer"], optimizer)
        sieve.load_state_dict(ckpt["sieve"])
        set_rng_state(ckpt["rng"], generator)
        start_epoch, best_acc, elapsed, run_id = ckpt["epoch"], ckpt["best_acc"], ckpt["elapsed_s"], ckpt["run_id"]
        records = restore_metrics(run_dir, ckpt.get("records"), start_epoch)  # metrics.jsonl = the checkpoint's
        log.info(f"resuming {run_dir} after epoch {start_epoch}")
    else:
        sparsity.initialize(iter(data.train))  # initial masks: random, or from saliency (SNIP, GraSP)
        cost.add_init(sparsity.init_samples, sparsity.init_passes)

    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"run dir {run_dir} | {cfg.model.name} ({n_params / 1e6:.2f}M params) on {cfg.dataset.name} "
             f"({data.train_size} train images) | {cfg.sparsity.name} at sparsity {sparsity_target(cfg):g} | "
             f"{cfg.epochs} epochs x {len(data.train)} steps | device {device}")
    logger = RunLogger(cfg, run_dir, run_id, records)
    stop_handlers = catch_stop_signals()  # SIGTERM/SIGINT: one line, then stop (the checkpoint stays)
    summary = None
    steps = len(data.train)
    show_bar = cfg.progress and sys.stderr.isatty()
    try:
        with logging_redirect_tqdm(), tqdm(total=cfg.epochs * steps, initial=start_epoch * steps,
                                           disable=not show_bar, unit="step", dynamic_ncols=True) as bar:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sieve.start_epoch(epoch, data.train)  # every Δτ: easiest samples out, queued ones back in
                freezer.start_epoch(epoch, optimizer, sparsity)  # freeze / release blocks as planned
                sparsity.start_epoch(epoch)  # epoch-based structure updates (MEST, every Δτ epochs)
                cost.begin_epoch(epoch, frozen_blocks=freezer.frozen)
                train_stats = train_one_epoch(model, data.train, optimizer, sparsity, freezer, sieve, cost,
                                              analysis, epoch, rt, cfg, bar)
                t_train = time.perf_counter() - t0
                test_stats = evaluate(model, data.test, rt, top5)
                check_finite(epoch, {**train_stats, **test_stats}, run_dir, cfg)  # NaN/inf loss: stop, keep last.pt
                t_epoch = time.perf_counter() - t0
                elapsed += t_epoch
                best_acc = max(best_acc, test_stats["test/acc"])
                record = {"epoch": epoch + 1, **train_stats, **test_stats, "test/best_acc": best_acc,
                          **sparsity.epoch_stats(), **cost.end_epoch(data.train.dataset_size),
                          "freeze/frozen_blocks": freezer.frozen, **sieve.epoch_stats(),
                          **analysis.end_epoch(epoch),
                          "time/epoch_s": t_epoch, "time/train_s": t_train, "time/elapsed_s": elapsed,
                          "time/samples_per_s": train_stats["samples"] / t_train}
                if device.type == "cuda":
                    record["memory/cuda_peak"] = torch.cuda.max_memory_allocated(device)
                bar.set_postfix(acc=f"{test_stats['test/acc']:.3f}")
                logger.log_epoch(record, cfg.epochs)  # metrics first: a resume drops lines past the checkpoint
                save_checkpoint(ckpt_path, {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "sparsity": sparsity.state_dict(), "cost": cost.state_dict(), "freezer": freezer.state_dict(),
                    "sieve": sieve.state_dict(),
                    "rng": rng_state(generator), "best_acc": best_acc, "elapsed_s": elapsed, "run_id": run_id,
                    "fingerprint": fingerprint, "records": logger.records,
                })
                start_epoch = epoch + 1  # where a resume would start (for the stop message)
        last = load_last_record(run_dir)
        summary = {"final_acc": last["test/acc"], "best_acc": best_acc, "epochs": cfg.epochs,
                   "final_loss": last["test/loss"], "train_time_s": elapsed, "run_id": run_id,
                   "run_dir": str(run_dir), "model": cfg.model.name, "dataset": cfg.dataset.name,
                   "params": n_params, "seed": cfg.seed, "sparsity_method": cfg.sparsity.name,
                   "sparsity_ratio": sparsity_target(cfg), "final_sparsity": last["sparsity/overall"],
                   **cost.summary(), "freeze": cfg.freeze, "freeze_scheme": cfg.freeze_scheme.name,
                   "freeze_planned_saving": freeze_plan.saving if freeze_plan else 0.0,
                   "sieve": cfg.sieve, "sieve_method": cfg.sieve_method, "sieve_seen_fraction": sieve.seen_fraction()}
        if "test/acc5" in last:
            summary["final_acc5"] = last["test/acc5"]
        write_json(run_dir / SUMMARY, summary)
        if analysis.enabled:
            logger.log_analysis(run_dir, cfg.analysis.debiased)
        share = summary["train_flops"] / summary["dense_train_flops"]
        log.info(f"done: test acc {summary['final_acc']:.4f} (best {best_acc:.4f}) in {elapsed:.1f} s; training "
                 f"FLOPs {summary['train_flops']:.4g} ({100 * share:.1f}% of dense). Results in {run_dir}")
    except Stopped as stop:
        log.warning(f"stopped by {stop} after epoch {start_epoch}; resume with the same command")
        raise
    finally:
        restore_signals(stop_handlers)
        logger.finish(summary)
    return summary


def sparsity_target(cfg) -> float:
    """The run's target sparsity: dense training ignores sparsity.ratio (so a sweep over methods at
    one ratio can include it)."""
    return 0.0 if cfg.sparsity.name == "dense" else cfg.sparsity.ratio


def load_last_record(run_dir: Path) -> dict:
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])
