"""`python -m spfde.bench plan`: `spfde.plan plan.calibrate=true`'s wall-clock estimate against the real run, on the
CPU, for three configs (PLAN_CONFIGS: the quickstart; the quickstart with freeze=0.2 sieve=0.2; ResNet-32 width 1
on FakeData for 3 epochs). Each is planned with calibration (its own calibration file, measured afresh), then
trained (spfde.training.loop.train, start-up included, Python's imports not). Prints a table: estimated and measured
wall-clock of each run and their ratio, the estimated against the measured time of the training steps, and the
estimate's parts. Extra overrides apply to all three (e.g. model.depth=8 epochs=6 to shorten it on a busy
machine)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from omegaconf import open_dict

from spfde.bench.common import run_once
from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.planning.plan import add_estimate, build_plan

PLAN_CONFIGS = {  # the three configs of `bench plan`
    "quickstart": ["experiment=quickstart"],
    "quickstart freeze=0.2 sieve=0.2": ["experiment=quickstart", "freeze=0.2", "sieve=0.2"],
    "resnet32-w1 fake, 3 epochs": ["experiment=quickstart", "dataset=fake", "epochs=3"],
}


def plan_estimates(extra: list[str]) -> str:
    """Estimated (spfde.plan, calibrated) vs measured (spfde.training.loop) wall-clock of the PLAN_CONFIGS on the
    CPU."""
    lines = ["| config | estimated | measured | estimated / measured | training steps: estimated / measured | "
             "estimate's parts: start-up, training, evaluation, other per-epoch work |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(PLAN_CONFIGS.items()):
            overrides = [*overrides, "device=cpu", *extra, f"plan.calibration_file={tmp}/calibration-{i}.json"]
            cfg = compose_config(["logger=none", "progress=false", *overrides])
            with open_dict(cfg):
                cfg.run_dir = str(Path(tmp) / f"run-{i}")
            validate(cfg)
            plan = add_estimate(cfg, build_plan(cfg))
            est = plan["estimated_s"]
            print(f"  {name}: estimated {est['total']:.1f} s; training it ...", flush=True)
            start = time.perf_counter()
            _, records = run_once(overrides, Path(tmp) / f"run-{i}")
            measured = time.perf_counter() - start
            trained = sum(r["time/train_s"] for r in records)  # the epochs' training loops, as the run times them
            parts = ", ".join(f"{est[k]:.1f}" for k in ("startup", "train", "eval", "epoch_work"))
            lines.append(f"| {name} | {est['total']:.1f} s | {measured:.1f} s | {est['total'] / measured:.2f} | "
                         f"{est['train']:.1f} / {trained:.1f} s | {parts} s |")
            print(lines[-1], flush=True)
    return (f"# spfde.plan plan.calibrate=true vs the real run, {plan['estimate']['device']}, overrides {extra}\n"
            + "\n".join(lines))
