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
    rng_state,
    save_checkpoint,
    set_rng_state,
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
from spfde.training.log import RunLogger, new_run_id
from spfde.training.rounds import drives_rounds, run_rounds
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
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        lock_run_dir(run_dir)  # one job per run dir (its rank 0 holds the lock); a second fails at once
        remove_stale_temp_files(run_dir)  # left by writes that a kill interrupted
    if drives_rounds(cfg):
        return run_rounds(cfg, train, write=world.is_main)  # LTH: one normal run per round, in sub-directories
    fresh = start_fresh(cfg, run_dir) if world.is_main else cfg.fresh  # archives earlier results, once per launch
    world.barrier()
    # the checkpoint first: a damaged or foreign one, or one made with other settings, stops here
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    fingerprint = config_fingerprint(cfg, METHODS[cfg.sparsity.name].uses_ratio)
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    done = finished_summary(run_dir)
    if done is not None and not fresh:
        if ckpt is not None and world.is_main:  # a finished run heals: metrics.jsonl is the checkpoint's records
            restore_metrics(run_dir, ckpt.get("records"), ckpt["epoch"])
        log.info(f"This run already finished: test acc {done['final_acc']:.4f} after {done.get('epochs')} epochs. "
                 f"Results: {run_dir / SUMMARY} and metrics.jsonl. To train it again, add fresh=true "
                 f"(the old results move to {run_dir}/previous-<time>/).")
        return done
    if world.is_main:  # rank 0 alone writes to the run directory
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # --- the parts of a run
    run = build_run(cfg, run_dir, world)
    device, rt, generator, data, sieve, model = run.device, run.rt, run.generator, run.data, run.sieve, run.model
    optimizer, method, meter, freeze_plan, freezer, analysis = (run.optimizer, run.method, run.meter,
                                                                 run.freeze_plan, run.freezer, run.analysis)
    fingerprint.update(data_fingerprint(data))
    if device.type == "cpu":  # CPU kernels split their sums by thread: the thread count changes the numbers
        fingerprint["threads"] = torch.get_num_threads()
    check_fingerprint(ckpt and ckpt.get("fingerprint"), fingerprint, run_dir)
    top5 = data.num_classes > 5

    # --- resume from the run directory's checkpoint, if any
    start_epoch, best_acc, elapsed, run_id, records, steps_done = 0, 0.0, 0.0, new_run_id(), [], 0
    graphs_note = None  # a CUDA-graph fallback before a resume stays in the summary
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt["sparsity"])  # masks bit-exact, never re-randomised
        meter.load_state_dict(ckpt["cost"])
        freezer.load_state_dict(ckpt["freezer"], optimizer)
        sieve.load_state_dict(ckpt["sieve"])
        set_rng_state(ckpt["rng"], generator)
        start_epoch, best_acc, elapsed, run_id = ckpt["epoch"], ckpt["best_acc"], ckpt["elapsed_s"], ckpt["run_id"]
        # optimizer steps so far (a checkpoint without the count: the steps its epochs were planned to take)
        steps_done = ckpt.get("steps", sum(method.schedule.epoch_steps[:start_epoch]))
        if str(ckpt.get("cuda_graphs", "")).startswith("fallback"):
            graphs_note = ckpt["cuda_graphs"]
        if world.is_main:
            records = restore_metrics(run_dir, ckpt.get("records"), start_epoch)  # metrics.jsonl = the checkpoint's
        else:
            records = list(ckpt.get("records") or [])[:start_epoch]
        log.info(f"resuming {run_dir} after epoch {start_epoch}")
    else:
        method.initialize(iter(data.train))  # initial masks: random, or from saliency (SNIP, GraSP)
        meter.add_init(method.init_samples * world.size, method.init_passes)
        world.broadcast_([*model.state_dict().values(), *method.masks.masks.values()])  # rank 0's start
        method.masks.version += 1
    world.check_masks(method.masks, "at the start")

    # the step and evaluation run eagerly, or from CUDA graphs (after resume: graphs read the restored tensors)
    # (cuda_graphs=auto: a failed capture falls back to eager steps; on: it stops the run)
    graphs = use_cuda_graphs(cfg.cuda_graphs, device) and not world.enabled
    fallback = cfg.cuda_graphs != "on"
    train_step = TrainStep(model, optimizer, method, freezer, sieve, analysis, meter, rt, cfg.optim.label_smoothing,
                           cfg.batch_size, graphs, world, fallback=fallback)
    train_step.steps = steps_done
    eval_batches = EvalBatches(model, rt, cfg.eval_batch_size, top5, graphs, fallback=fallback)

    n_params = sum(p.numel() for p in model.parameters())
    ranks = f" | {world.size} ranks, {cfg.batch_size // world.size} images each per step" if world.enabled else ""
    log.info(f"run dir {run_dir} | {cfg.model.name} ({n_params / 1e6:.2f}M params) on {cfg.dataset.name} "
             f"({data.train_size} train images) | {cfg.sparsity.name} at sparsity {target_sparsity(cfg.sparsity):g} | "
             f"{cfg.epochs} epochs x {len(data.train)} steps | device {device}"
             f"{' with CUDA graphs' if graphs else ''}{ranks}")
    logger = RunLogger(cfg, run_dir, run_id, records, write=world.is_main, runtime=rt)  # wandb: device as used
    logger.start(cfg, len(model.blocks), freeze_plan, data.train.dataset_size)  # freeze plan, sieve setting
    stop_handlers = catch_stop_signals()  # SIGTERM/SIGINT: one line, then stop (the checkpoint stays)
    summary = None
    show_bar = cfg.progress and sys.stderr.isatty()
    try:
        with logging_redirect_tqdm(), tqdm(total=method.schedule.total_steps, initial=steps_done,
                                           disable=not show_bar, unit="step", dynamic_ncols=True) as bar:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                sieve.start_epoch(epoch, data.train)  # every Δτ: easiest samples out, queued ones back in
                world.check_sieve(sieve, f"at the start of epoch {epoch + 1}")
                freezer.start_epoch(epoch, optimizer, method)  # freeze / release blocks as planned
                method.start_epoch(epoch)  # epoch-based structure updates (MEST, every Δτ epochs)
                world.check_masks(method.masks, f"at the start of epoch {epoch + 1}")
                meter.begin_epoch(epoch, frozen_blocks=freezer.frozen)
                train_stats = train_one_epoch(train_step, data.train, freezer, epoch, rt, bar, world)
                sieve.end_epoch(world)  # the epoch's forgetting events, combined over the ranks
                world.average_buffers(model)  # BN statistics
                t_train = time.perf_counter() - t0
                train_peak = train_step.peak_memory()  # the training steps' own peak, then evaluation's
                test_stats = evaluate(model, data.test, rt, top5, eval_batches, world)
                check_finite(epoch, {**train_stats, **test_stats}, run_dir, cfg)  # NaN/inf loss: stop, keep last.pt
                t_epoch = time.perf_counter() - t0
                elapsed += t_epoch
                best_acc = max(best_acc, test_stats["test/acc"])
                record = {"epoch": epoch + 1, **train_stats, **test_stats, "test/best_acc": best_acc,
                          **method.epoch_stats(), **meter.end_epoch(data.train.dataset_size),
                          "freeze/frozen_blocks": freezer.frozen, **sieve.epoch_stats(),
                          **analysis.end_epoch(epoch),
                          "time/epoch_s": t_epoch, "time/train_s": t_train, "time/elapsed_s": elapsed,
                          "time/samples_per_s": train_stats["samples"] / t_train}
                if device.type == "cuda":
                    record["memory/train_peak"] = train_peak
                    record["memory/eval_peak"] = eval_batches.peak_memory()
                bar.set_postfix(acc=f"{test_stats['test/acc']:.3f}")
                logger.log_epoch(record, cfg.epochs)  # metrics first: a resume drops lines past the checkpoint
                with stops_deferred():  # a stop lands after the checkpoint and the epoch it holds are both known
                    if world.is_main:
                        save_checkpoint(ckpt_path, {
                            "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "sparsity": method.state_dict(), "cost": meter.state_dict(),
                            "freezer": freezer.state_dict(), "sieve": sieve.state_dict(),
                            "rng": rng_state(generator), "steps": train_step.steps,
                            "best_acc": best_acc, "elapsed_s": elapsed, "run_id": run_id,
                            "fingerprint": fingerprint, "records": logger.records, "world_size": world.size,
                            "cuda_graphs": graphs_note or graphs_status(train_step, eval_batches),
                        })
                    start_epoch = epoch + 1  # where a resume would start (for the stop message)
        records = logger.records  # every epoch of the run, resumed ones included
        last = records[-1]
        summary = {"final_acc": last["test/acc"], "best_acc": best_acc, "epochs": cfg.epochs,
                   "final_loss": last["test/loss"], "train_time_s": elapsed, "run_id": run_id,
                   "run_dir": str(run_dir), "model": cfg.model.name, "dataset": cfg.dataset.name,
                   "params": n_params, "seed": cfg.seed, "sparsity_method": cfg.sparsity.name,
                   "sparsity_ratio": target_sparsity(cfg.sparsity), "final_sparsity": last["sparsity/overall"],
                   **meter.summary(), "freeze": cfg.freeze, "freeze_scheme": cfg.freeze_scheme.name,
                   "freeze_planned_saving": freeze_plan.saving if freeze_plan else 0.0,
                   "sieve": cfg.sieve, "sieve_method": cfg.sieve_method, "sieve_seen_fraction": sieve.seen_fraction()}
        if "test/acc5" in last:
            summary["final_acc5"] = last["test/acc5"]
        if world.enabled:
            summary["world_size"] = world.size
        summary["cuda_graphs"] = graphs_note or graphs_status(train_step, eval_batches)
        if device.type == "cuda":  # measured GPU memory (of rank 0), the largest epoch of the run
            summary["memory_train_peak_bytes"] = max(r.get("memory/train_peak", 0) for r in records)
            summary["memory_eval_peak_bytes"] = max(r.get("memory/eval_peak", 0) for r in records)
            summary["cuda_graphs_capture_s"] = train_step.capture_s + eval_batches.capture_s
        if world.is_main:
            write_json(run_dir / SUMMARY, summary)
        world.barrier()  # the run is finished for every rank once its summary exists (and every metrics line)
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
