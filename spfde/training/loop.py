"""The training loop. It reads top to bottom; each technique is called by name."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from spfde.rundir.checkpoint import (
    CHECKPOINT,
    SUMMARY,
    finished_summary,
    load_checkpoint,
    restore_metrics,
    save_checkpoint,
    write_json,
)
from spfde.rundir.lifecycle import (
    Stopped,
    catch_stop_signals,
    check_fingerprint,
    check_finite,
    config_fingerprint,
    data_fingerprint,
    lock_run_dir,
    remove_stale_temp_files,
    restore_signals,
    start_fresh,
    stops_deferred,
)
from spfde.sparse import METHODS, target_sparsity
from spfde.training.build import Runtime, build_run
from spfde.training.distributed import World, check_world, setup_world
from spfde.training.log import RunLogger
from spfde.training.rounds import drives_rounds, run_rounds
from spfde.training.state import RunState, summary
from spfde.training.step import EvalBatches, TrainStep, graphs_status, use_cuda_graphs

log = logging.getLogger("spfde")


def train_one_epoch(train_step: TrainStep, loader, freezer, epoch: int, rt: Runtime, bar,
                    world: World | None = None) -> dict:
    """One epoch over the loader's partial set. The step (forward, backward, masks, SGD, the sieve's
    flags, the running sums) is `spfde.training.step.TrainStep`: eager, or replayed from a CUDA graph. With
    several ranks each trains on its part of every global batch; the returned numbers are global."""
    world = world or World()
    freezer.train_mode()  # model.train(), frozen blocks' BN in eval mode
    train_step.begin_epoch()
    sizes = loader.batch_sizes()  # global batch sizes: the cost meter counts the work of every rank
    steps = len(sizes)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        x, y = rt.batch(x, y)
        idx = rt.indices(idx)
        lr = train_step(x, y, idx, t=epoch + i / steps, samples=sizes[i])
        seen += len(y)
        bar.update(1)
    loss_sum, correct, seen = world.sum([train_step.loss_sum.item(), train_step.correct.item(), seen])
    return {"train/loss": loss_sum / seen, "train/acc": correct / seen, "samples": int(seen), "lr": lr}


@torch.no_grad()
def evaluate(model, loader, rt: Runtime, top5: bool, batches: EvalBatches | None = None,
             world: World | None = None) -> dict:
    """Test loss and accuracy; with several ranks each evaluates its part of every batch."""
    model.eval()
    batches = batches or EvalBatches(model, rt, loader.batch_size, top5, graphs=False)
    batches.begin()
    seen = 0
    for x, y, _idx in loader:
        if len(y) == 0:  # a rank's part of a last batch smaller than the world
            continue
        x, y = rt.batch(x, y)
        batches.add(x, y)
        seen += len(y)
    loss_sum, correct1, correct5, seen = (world or World()).sum([s.item() for s in batches.sums] + [seen])
    stats = {"test/loss": loss_sum / seen, "test/acc": correct1 / seen}
    if top5:
        stats["test/acc5"] = correct5 / seen
    return stats


def train(cfg) -> dict:
    """Train one run in cfg.run_dir: resume from its checkpoint if there is one, return the summary."""
    world = setup_world(cfg.device)  # several ranks under torchrun or a multi-task SLURM job
    check_world(cfg, world)
    if not world.is_main:
        log.setLevel(logging.WARNING)  # one rank reports
    run_dir = Path(cfg.run_dir)
    fresh = open_run_dir(cfg, run_dir, world)
    if drives_rounds(cfg):
        return run_rounds(cfg, train, write=world.is_main)  # LTH: one normal run per round, in sub-directories
    # the checkpoint first: a damaged or foreign one, or one made with other settings, stops here
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    fingerprint = config_fingerprint(cfg, METHODS[cfg.sparsity.name].uses_ratio)
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    if (done := already_finished(run_dir, ckpt, fresh, world)) is not None:
        return done
    if world.is_main:  # rank 0 alone writes to the run directory
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # --- the parts of a run, then its state: restored from the checkpoint, or a new start
    run = build_run(cfg, run_dir, world)
    model, optimizer, method, meter, freezer, sieve, data = (run.model, run.optimizer, run.method, run.meter,
                                                             run.freezer, run.sieve, run.data)
    fingerprint.update(data_fingerprint(data))
    if run.device.type == "cpu":  # CPU kernels split their sums by thread: the thread count changes the numbers
        fingerprint["threads"] = torch.get_num_threads()
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    state = resume_or_start(run, fingerprint, ckpt, ckpt_path, world)
    top5 = data.num_classes > 5
    train_step, eval_batches = steps_of(cfg, run, state, top5, world)
    log_start(cfg, run, run_dir, train_step.graphs is not None, world)
    logger = RunLogger(cfg, run_dir, state.run_id, state.records, write=world.is_main, runtime=run.rt)  # wandb
    logger.start(cfg, len(model.blocks), run.freeze_plan, data.train.dataset_size)  # freeze plan, sieve setting
    stop_handlers = catch_stop_signals()  # SIGTERM/SIGINT: one line, then stop (the checkpoint stays)
    result = None
    try:
        with logging_redirect_tqdm(), tqdm(total=method.schedule.total_steps, initial=state.steps, unit="step",
                                           disable=not (cfg.progress and sys.stderr.isatty()),
                                           dynamic_ncols=True) as bar:
            for epoch in range(state.epoch, cfg.epochs):
                t0 = time.perf_counter()
                sieve.start_epoch(epoch, data.train)  # every Δτ: easiest samples out, queued ones back in
                world.check_sieve(sieve, f"at the start of epoch {epoch + 1}")
                freezer.start_epoch(epoch, optimizer, method)  # freeze / release blocks as planned
                method.start_epoch(epoch)  # epoch-based structure updates (MEST, every Δτ epochs)
                world.check_masks(method.masks, f"at the start of epoch {epoch + 1}")
                meter.begin_epoch(epoch, frozen_blocks=freezer.frozen)
                train_stats = train_one_epoch(train_step, data.train, freezer, epoch, run.rt, bar, world)
                sieve.end_epoch(world)  # the epoch's forgetting events, combined over the ranks
                world.average_buffers(model)  # BN statistics
                t_train = time.perf_counter() - t0
                train_peak = train_step.peak_memory()  # the training steps' own peak, then evaluation's
                test_stats = evaluate(model, data.test, run.rt, top5, eval_batches, world)
                check_finite(epoch, {**train_stats, **test_stats}, run_dir, cfg)  # NaN/inf loss: stop, keep last.pt
                t_epoch = time.perf_counter() - t0
                state.elapsed += t_epoch
                state.best_acc = max(state.best_acc, test_stats["test/acc"])
                record = {"epoch": epoch + 1, **train_stats, **test_stats, "test/best_acc": state.best_acc,
                          **method.epoch_stats(), **meter.end_epoch(data.train.dataset_size),
                          "freeze/frozen_blocks": freezer.frozen, **sieve.epoch_stats(),
                          **run.analysis.end_epoch(epoch),
                          "time/epoch_s": t_epoch, "time/train_s": t_train, "time/elapsed_s": state.elapsed,
                          "time/samples_per_s": train_stats["samples"] / t_train}
                if run.device.type == "cuda":
                    record["memory/train_peak"] = train_peak
                    record["memory/eval_peak"] = eval_batches.peak_memory()
                bar.set_postfix(acc=f"{test_stats['test/acc']:.3f}")
                logger.log_epoch(record, cfg.epochs)  # metrics first: a resume drops lines past the checkpoint
                with stops_deferred():  # a stop lands after the checkpoint and the epoch it holds are both known
                    state.epoch, state.steps, state.records = epoch + 1, train_step.steps, logger.records
                    state.note_graphs(graphs_status(train_step, eval_batches))
                    if world.is_main:
                        save_checkpoint(ckpt_path, state.state_dict())
        result = summary(cfg, state, run_dir, world, train_step.capture_s + eval_batches.capture_s)
        if world.is_main:
            write_json(run_dir / SUMMARY, result)
        world.barrier()  # the run is finished for every rank once its summary exists (and every metrics line)
        if run.analysis.enabled:
            logger.log_analysis(run_dir, cfg.analysis.debiased)
        log.info(f"done: test acc {result['final_acc']:.4f} (best {state.best_acc:.4f}) in {state.elapsed:.1f} s; "
                 f"training FLOPs {result['train_flops']:.4g} "
                 f"({100 * result['train_flops'] / result['dense_train_flops']:.1f}% of dense). Results in {run_dir}")
    except Stopped as stop:
        log.warning(f"stopped by {stop} after epoch {state.epoch}; resume with the same command")
        raise
    finally:
        restore_signals(stop_handlers)
        logger.finish(result)
    return result


def resume_or_start(run, fingerprint: dict, ckpt: dict | None, ckpt_path: Path, world: World) -> RunState:
    """The run's state from its checkpoint, or a new start: the sparse method's initial masks (random, or from
    saliency: SNIP, GraSP), the same on every rank."""
    state = RunState(run, fingerprint, world.size)
    method = run.method
    if ckpt is not None:
        state.load_state_dict(ckpt, ckpt_path)
        if world.is_main:  # metrics.jsonl becomes the checkpoint's records
            state.records = restore_metrics(ckpt_path.parent, ckpt.get("records"), state.epoch)
        log.info(f"resuming {ckpt_path.parent} after epoch {state.epoch}")
    else:
        method.initialize(iter(run.data.train))
        run.meter.add_init(method.init_samples * world.size, method.init_passes)
        world.broadcast_([*run.model.state_dict().values(), *method.masks.masks.values()])  # rank 0's start
        method.masks.version += 1
    world.check_masks(method.masks, "at the start")
    return state


def steps_of(cfg, run, state: RunState, top5: bool, world: World) -> tuple[TrainStep, EvalBatches]:
    """The training step and the evaluation, eager or replayed from CUDA graphs (captured after a resume, so the
    graphs read the restored tensors). cuda_graphs=auto: a failed capture falls back to eager steps; on: it stops
    the run."""
    graphs = use_cuda_graphs(cfg.cuda_graphs, run.device) and not world.enabled
    fallback = cfg.cuda_graphs != "on"
    train_step = TrainStep(run.model, run.optimizer, run.method, run.freezer, run.sieve, run.analysis, run.meter,
                           run.rt, cfg.optim.label_smoothing, cfg.batch_size, graphs, world, fallback=fallback)
    train_step.steps = state.steps
    return train_step, EvalBatches(run.model, run.rt, cfg.eval_batch_size, top5, graphs, fallback=fallback)


def open_run_dir(cfg, run_dir: Path, world: World) -> bool:
    """Take the run directory for this job (its lock), tidy what a kill left; with fresh=true archive earlier
    results (once per launch). Returns whether the run starts afresh."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        lock_run_dir(run_dir)  # one job per run dir (its rank 0 holds the lock); a second fails at once
        remove_stale_temp_files(run_dir)  # left by writes that a kill interrupted
    if drives_rounds(cfg):
        return bool(cfg.fresh)  # the rounds archive their own sub-directories
    fresh = start_fresh(cfg, run_dir) if world.is_main else cfg.fresh
    world.barrier()
    return fresh


def already_finished(run_dir: Path, ckpt: dict | None, fresh: bool, world: World) -> dict | None:
    """The summary of a run that finished before (and is not to train again), else None."""
    done = finished_summary(run_dir)
    if done is None or fresh:
        return None
    if ckpt is not None and world.is_main:  # a finished run heals: metrics.jsonl is the checkpoint's records
        restore_metrics(run_dir, ckpt.get("records"), ckpt["epoch"])
    log.info(f"This run already finished: test acc {done['final_acc']:.4f} after {done.get('epochs')} epochs. "
             f"Results: {run_dir / SUMMARY} and metrics.jsonl. To train it again, add fresh=true "
             f"(the old results move to {run_dir}/previous-<time>/).")
    return done


def log_start(cfg, run, run_dir: Path, graphs: bool, world: World) -> None:
    n_params = sum(p.numel() for p in run.model.parameters())
    ranks = f" | {world.size} ranks, {cfg.batch_size // world.size} images each per step" if world.enabled else ""
    log.info(f"run dir {run_dir} | {cfg.model.name} ({n_params / 1e6:.2f}M params) on {cfg.dataset.name} "
             f"({run.data.train_size} train images) | {cfg.sparsity.name} at sparsity "
             f"{target_sparsity(cfg.sparsity):g} | {cfg.epochs} epochs x {len(run.data.train)} steps | device "
             f"{run.device}"
             f"{' with CUDA graphs' if graphs else ''}{ranks}")
