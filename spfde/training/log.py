"""Console, metrics.jsonl and (optionally) wandb logging for one run."""

from __future__ import annotations

import logging
import math
import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from spfde.analysis import series
from spfde.rundir.checkpoint import CHECKPOINT, SUMMARY, write_metrics
from spfde.sparse import METHODS
from spfde.training.sieve import oneshot_epoch, partial_size
from spfde.units import clock

log = logging.getLogger("spfde")


def new_run_id() -> str:
    return secrets.token_hex(4)  # not from the seeded RNGs: ids differ across seeds and reruns


class RunLogger:
    """`log_epoch` adds one line to metrics.jsonl, a console line and a wandb step. `records` holds every
    epoch's metrics (the checkpoint stores them, so metrics.jsonl can always be rebuilt).
    wandb is offline unless logger.mode=online and never waits on a network; `finish` always runs."""

    def __init__(self, cfg, run_dir: Path, run_id: str, records: list[dict] | None = None, write: bool = True,
                 runtime=None):
        self.run_dir, self.run_id, self.write = Path(run_dir), run_id, write  # write: rank 0 of several
        self.records = list(records or [])
        self.blocks, self.dataset_size = None, None  # for the epoch line; set by `start`
        self.wandb = None
        lcfg = cfg.logger
        if write and lcfg.name == "wandb" and lcfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=lcfg.project, entity=lcfg.entity, mode=lcfg.mode, dir=str(self.run_dir),
                id=run_id, resume="allow", name=self.run_dir.name, group=wandb_group(cfg),
                job_type="train", tags=[*lcfg.tags, *run_tags(cfg)], config=wandb_config(cfg, runtime),
            )
            self.wandb.define_metric("epoch")
            self.wandb.define_metric("*", step_metric="epoch")
            self.wandb.define_metric("test/acc", step_metric="epoch", summary="max")
            self.log_checkpoints = lcfg.log_checkpoints

    def log_epoch(self, record: dict, total_epochs: int) -> None:
        # plain Python values only (no numpy/tensor scalars): the checkpoint stores the records and
        # loads with weights_only=True
        record = {k: v.item() if hasattr(v, "item") and not isinstance(v, (bool, int, float, str)) else v
                  for k, v in record.items()}
        self.records.append(record)
        if not self.write:
            return
        write_metrics(self.run_dir, self.records)  # atomic: never half a line, even on a full disk
        log.info(format_epoch(record, total_epochs, self.blocks, self.dataset_size))
        if self.wandb is not None:
            self.wandb.log(wandb_record(record))

    def start(self, cfg, blocks: int, freeze_plan, dataset_size: int) -> None:
        """Say at the start what freezing and sieving will do (the plan is fixed before training)."""
        self.blocks, self.dataset_size = blocks, dataset_size
        if freeze_plan is None:
            log.info("layer freezing: off (freeze=0)")
        else:
            p = freeze_plan
            when = (f"frozen windows of {p.parameter} epochs" if p.scheme in ("periodic", "delayed")
                    else f"T_frz = epoch {p.parameter}")
            log.info(f"layer freezing: {p.scheme}, target x = {cfg.freeze:g}, {when}, up to {p.candidates} "
                     f"of {blocks} blocks; planned saving {p.saving:.4f} of the run's training FLOPs")
        if cfg.sieve <= 0:
            log.info("data sieving: off (sieve=0)")
        else:
            kept = partial_size(cfg, dataset_size)
            how = (f"the easiest {cfg.sieve:g} removed for good at epoch {oneshot_epoch(cfg)}"
                   if cfg.sieve_method == "oneshot" else
                   f"{cfg.sieve_update:g} of it swapped every {cfg.interval} epochs")
            log.info(f"data sieving: {cfg.sieve_method}, y = {cfg.sieve:g}: partial set of {kept} of {dataset_size} "
                     f"samples, {how}")

    def log_analysis(self, run_dir: Path, debiased: bool) -> None:
        """Structural similarity and CKA against the final model, per epoch, as wandb tables."""
        if self.wandb is None:
            return
        import wandb

        d = series(run_dir, debiased)
        for kind in ("structural_similarity", "cka"):
            rows = [[e, name, v] for name, values in d[kind].items() for e, v in zip(d["epochs"], values)]
            self.wandb.log({f"analysis/{kind}": wandb.Table(columns=["epoch", "name", kind], data=rows)})

    def finish(self, summary: dict | None = None) -> None:
        if self.wandb is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, (int, float, str)):
                        self.wandb.summary[k] = v
                self.log_results()
            self.wandb.finish()
            self.wandb = None


    def log_results(self) -> None:
        """summary.json (and with logger.log_checkpoints the last checkpoint) as a versioned wandb artifact."""
        import wandb

        artifact = wandb.Artifact(f"results-{self.run_id}", type="results")
        artifact.add_file(str(self.run_dir / SUMMARY))
        if self.log_checkpoints and (self.run_dir / CHECKPOINT).exists():
            artifact.add_file(str(self.run_dir / CHECKPOINT))
        self.wandb.log_artifact(artifact)


def run_tags(cfg) -> list[str]:
    """Tags that let a sweep's runs be filtered in wandb: method, ratio, x, y, seed, and the freeze scheme and sieve
    method only where freezing and sieving are on (a scheme tag on a run without freezing would say what it did not)."""
    return [f"method={cfg.sparsity.name}", f"ratio={cfg.sparsity.ratio:g}", f"x={cfg.freeze:g}", f"y={cfg.sieve:g}",
            *([f"scheme={cfg.freeze_scheme.name}"] if cfg.freeze > 0 else []),
            *([f"sieve_method={cfg.sieve_method}"] if cfg.sieve > 0 else []), f"seed={cfg.seed}"]


def wandb_group(cfg) -> str:
    """The run's wandb group: `logger.group` (the sweep presets set it to their name); else, for a job of a -m
    sweep, the sweep directory's name, so that an ad-hoc sweep is a group of its own and not mixed with single
    runs of the same experiment (spfde.results.dashboard filters on the same name); else the experiment's name."""
    if cfg.logger.group:
        return str(cfg.logger.group)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(str(HydraConfig.get().sweep.dir)).name
    return str(cfg.experiment_name)


# keys that say how a run was launched, shown or logged, not what it computed: left out of the wandb config, where
# they would be columns of no use (run_dir: the run's name says it; threads: its default 0 means "decided at start")
NOT_LOGGED = ("run_dir", "logger", "progress", "plan", "threads", "fresh")


def wandb_config(cfg, runtime=None) -> dict:
    """The run's resolved config for wandb, as used: with `runtime` (`Runtime` of spfde.training.build) the device and
    precision it resolved `auto` to; only the active method's options (the other methods' unset `???` values would make
    mixed-type columns that break parallel-coordinates plots); no launch or logging settings (NOT_LOGGED)."""
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    config["sparsity"] = {k: v for k, v in config["sparsity"].items() if k not in METHODS or k == cfg.sparsity.name}
    for key in NOT_LOGGED:
        config.pop(key, None)
    if runtime is not None:
        config["device"] = str(runtime.device)
        config["precision"] = "bf16" if runtime.bf16 else "fp32"
    return _drop_missing(config)


def _drop_missing(d: dict) -> dict:
    return {k: _drop_missing(v) if isinstance(v, dict) else v for k, v in d.items() if v != "???"}


PER_LAYER = ("sparsity/layer/", "sparsity/pruned/", "sparsity/grown/", "grad_norm/")


def wandb_record(record: dict) -> dict:
    """Per-layer series go under one prefix (`per_layer/...`) so that the workspace keeps them in one
    collapsed section instead of hundreds of panels next to the run-level curves."""
    return {f"per_layer/{k}" if k.startswith(PER_LAYER) else k: v for k, v in record.items()}


def _fmt(x: float) -> str:
    return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else str(x)


def format_epoch(r: dict, total_epochs: int, blocks: int | None = None, dataset_size: int | None = None) -> str:
    """One console line per epoch; it ends with an ETA so that logs without a progress bar (SLURM) show it."""
    frozen = f" | frozen {r.get('freeze/frozen_blocks', 0)}/{blocks} blocks" if blocks else ""
    partial = r.get("sieve/partial_size", dataset_size)
    data = f" | data {partial}/{dataset_size}" if dataset_size else ""
    eta = r["time/elapsed_s"] / r["epoch"] * (total_epochs - r["epoch"])
    return (f"epoch {r['epoch']}/{total_epochs}  train loss {_fmt(r['train/loss'])} acc {_fmt(r['train/acc'])}"
            f" | test loss {_fmt(r['test/loss'])} acc {_fmt(r['test/acc'])} (best {_fmt(r['test/best_acc'])})"
            f" | sparsity {r['sparsity/overall']:.3f}{frozen}{data} | {r['flops/epoch']:.3g} FLOPs | lr {r['lr']:.4g}"
            f" | {r['time/epoch_s']:.1f} s, {r['time/samples_per_s']:.0f} img/s | ETA {clock(eta)}")
