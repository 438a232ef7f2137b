"""Console, metrics.jsonl and (optionally) wandb logging for one run."""

from __future__ import annotations

import logging
import math
import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from spfde.checkpoint import write_metrics

log = logging.getLogger("spfde")


def new_run_id() -> str:
    return secrets.token_hex(4)  # not from the seeded RNGs: ids differ across seeds and reruns


class RunLogger:
    """`log_epoch` adds one line to metrics.jsonl, a console line and a wandb step. `records` holds every
    epoch's metrics (the checkpoint stores them, so metrics.jsonl can always be rebuilt).
    wandb is offline unless logger.mode=online and never waits on a network; `finish` always runs."""

    def __init__(self, cfg, run_dir: Path, run_id: str, records: list[dict] | None = None):
        self.run_dir, self.run_id = Path(run_dir), run_id
        self.records = list(records or [])
        self.wandb = None
        lcfg = cfg.logger
        if lcfg.name == "wandb" and lcfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=lcfg.project, entity=lcfg.entity, mode=lcfg.mode, dir=str(self.run_dir),
                id=run_id, resume="allow", name=self.run_dir.name, group=lcfg.group or cfg.experiment_name,
                tags=[*lcfg.tags, *run_tags(cfg)], config=OmegaConf.to_container(cfg, resolve=True),
            )
            self.wandb.define_metric("epoch")
            self.wandb.define_metric("*", step_metric="epoch")

    def log_epoch(self, record: dict, total_epochs: int) -> None:
        # plain Python values only (no numpy/tensor scalars): the checkpoint stores the records and
        # loads with weights_only=True
        record = {k: v.item() if hasattr(v, "item") and not isinstance(v, (bool, int, float, str)) else v
                  for k, v in record.items()}
        self.records.append(record)
        write_metrics(self.run_dir, self.records)  # atomic: never half a line, even on a full disk
        log.info(format_epoch(record, total_epochs))
        if self.wandb is not None:
            self.wandb.log(record)

    def log_analysis(self, run_dir: Path, debiased: bool) -> None:
        """Structural similarity and CKA against the final model, per epoch, as wandb tables."""
        if self.wandb is None:
            return
        import wandb

        from spfde.analysis import series

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
            self.wandb.finish()
            self.wandb = None


def run_tags(cfg) -> list[str]:
    """Tags that let a sweep's runs be filtered in wandb: method, ratio, x, y, seed."""
    return [f"method={cfg.sparsity.name}", f"ratio={cfg.sparsity.ratio:g}", f"x={cfg.freeze:g}",
            f"y={cfg.sieve:g}", f"seed={cfg.seed}"]


def _fmt(x: float) -> str:
    return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else str(x)


def format_epoch(r: dict, total_epochs: int) -> str:
    return (f"epoch {r['epoch']}/{total_epochs}  train loss {_fmt(r['train/loss'])} acc {_fmt(r['train/acc'])}"
            f" | test loss {_fmt(r['test/loss'])} acc {_fmt(r['test/acc'])} (best {_fmt(r['test/best_acc'])})"
            f" | sparsity {r['sparsity/overall']:.3f} | {r['flops/epoch']:.3g} FLOPs | lr {r['lr']:.4g}"
            f" | {r['time/epoch_s']:.1f} s, {r['time/samples_per_s']:.0f} img/s")
