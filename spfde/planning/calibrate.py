"""Calibrated wall-clock estimates for `spfde.planning.plan plan.calibrate=true`.

The plan's FLOPs say how much work a run is; how long it takes depends on the device, the precision, the
frozen depth (a frozen prefix runs under no_grad) and everything around the step. So we time the run's own
parts, built the way the run builds them (`spfde.training.build.build_core`, the `Freezer`, the `Sieve`, the cost
meter, the in-memory loader over random images of the data's shape) and driven by the run's own loop
(`train_one_epoch` with `TrainStep` from `spfde.training`, eager or replayed from CUDA graphs as the run would, and
`evaluate`) on the configured device and precision:

- one training step at every frozen depth the plan uses (a warm-up epoch, then a timed one; on CUDA the warm-up
  also captures the depth's graph, which the run does once per depth too),
- evaluation (per test image), the per-epoch work around them (the sparse method's epoch update, the sieve's
  update, the checkpoint the run saves every epoch) and start-up (building the parts, the initial masks).

The estimate adds these up along the plan's schedule: each epoch's batches (fewer under sieving) at its frozen
depth, an evaluation and the epoch's other work, plus start-up. Not timed: decoding a streamed image folder
(PIL/DALI workers) and Python's imports before the run starts.

Measurements are cached in a small JSON file (plan.calibration_file, default outputs/plan-calibration.json) per
(device, model, classes, input size, batch, precision, CUDA graphs, sparse method, depth), so a sweep times each
distinct shape once. A damaged cache file is ignored with a warning and rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

import torch

from spfde.analysis import Analysis
from spfde.data import in_memory_data
from spfde.data.sources import Arrays
from spfde.errors import SpfdeError
from spfde.rundir.checkpoint import RunDirError, save_checkpoint, write_json
from spfde.training.build import Runtime, build_core, resolve_device, resolve_threads
from spfde.training.cost import CostMeter
from spfde.training.freeze import Freezer, scheme_options
from spfde.training.loop import evaluate, train_one_epoch
from spfde.training.sieve import Sieve, sieve_epochs
from spfde.training.step import WARMUP_STEPS, EvalBatches, TrainStep, use_cuda_graphs

log = logging.getLogger("spfde")

CACHE_VERSION = 1


class CalibrationError(SpfdeError, ValueError):
    """A calibration that cannot be made as asked (one line, for the user)."""


def device_name(device: torch.device, threads: int) -> str:
    """What the cache keys on and the estimate is labelled with: the GPU's name, or the CPU with its threads
    (a CPU step's time scales with them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({threads} threads)"


def hours_label(device_kind: str) -> str:
    return {"cpu": "CPU-hours", "cuda": "GPU-hours"}.get(device_kind, f"{device_kind}-hours")


MAX_ENTRY_S = 86_400.0  # no step, image, epoch's extra work or start-up takes a day: a larger entry is damage


class Cache:
    """The calibration file: {"version": 1, "entries": {key: seconds}}. Written atomically; a damaged or
    foreign file (or one with an impossible time: negative, not finite, over a day) is ignored (one warning) and
    replaced at the next write; a write that fails (a full or read-only disk) costs the next plan a measurement,
    never this plan."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, float] = {}
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"] if data.get("version") == CACHE_VERSION else None
            if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) for v in entries.values()):
                raise ValueError("not a calibration file of this version")
            bad = next((k for k, v in entries.items() if not (math.isfinite(v) and 0 <= v <= MAX_ENTRY_S)), None)
            if bad is not None:
                raise ValueError(f"an impossible time, {entries[bad]!r} s for {bad}")
            self.entries = {str(k): float(v) for k, v in entries.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning(f"ignoring the calibration cache {self.path} ({type(e).__name__}: {e}); it is measured again "
                        "and rewritten")

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, values: dict[str, float]) -> None:
        self.entries.update(values)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"version": CACHE_VERSION, "entries": self.entries})
        except (OSError, RunDirError) as e:
            log.warning(f"the calibration was measured but not saved in {self.path} ({e}); this plan uses it, the "
                        "next one measures again")


def shape_key(cfg, device: str, classes: int, input_shape: tuple, graphs: bool) -> str:
    """The part of a cache key that every measurement of one run shape shares."""
    from omegaconf import OmegaConf

    model = ",".join(f"{k}={v}" for k, v in OmegaConf.to_container(cfg.model).items())
    c, h, w = input_shape
    return (f"{device}|{model}|classes={classes}|input={c}x{h}x{w}|batch={cfg.batch_size}|precision={cfg.precision}"
            f"|graphs={graphs}|method={cfg.sparsity.name}")


def run_device(cfg) -> tuple[torch.device, bool, int]:
    """The device, CUDA graphs on or off, and the CPU threads of a run of cfg (as the run's own build and loop
    choose them)."""
    device = resolve_device(cfg.device)
    return device, use_cuda_graphs(cfg.cuda_graphs, device), resolve_threads(cfg)


def calibration_keys(cfg, classes: int, input_shape: tuple, depths: list[int]) -> dict[str, str]:
    device, graphs, threads = run_device(cfg)
    base = shape_key(cfg, device_name(device, threads), classes, input_shape, graphs)
    keys = {f"step@{k}": f"{base}|depth={k}" for k in depths}
    keys["eval_image"] = f"{base}|eval_batch={cfg.eval_batch_size}|eval"
    keys["epoch_update"] = f"{base}|interval={cfg.interval}|epoch_update"  # the method's and sieve's update
    keys["epoch_other"] = f"{base}|epoch_other"  # checkpoint and bookkeeping of every epoch
    keys["startup"] = f"{base}|startup"
    return keys


def calibrate(cfg, classes: int, input_shape: tuple, depths: list[int]) -> tuple[dict[str, float], int]:
    """Seconds per training step at each depth (`step@k`), per evaluated image, per update epoch's extra work,
    per epoch's other work and for start-up, from the cache where it has them; returns them and how many were
    measured now."""
    keys = calibration_keys(cfg, classes, input_shape, depths)
    cache = Cache(cfg.plan.calibration_file)
    found = {name: cache.get(key) for name, key in keys.items()}
    missing = [name for name, v in found.items() if v is None]
    if not missing:
        return found, 0
    todo = sorted(int(n.split("@")[1]) for n in missing if n.startswith("step@"))
    measured = measure(cfg, classes, input_shape, todo or depths[:1])
    cache.put({keys[name]: measured[name] for name in measured if name in keys and found.get(name) is None})
    return {name: found[name] if found[name] is not None else measured[name] for name in keys}, len(missing)


def measure(cfg, classes: int, input_shape: tuple, depths: list[int]) -> dict[str, float]:
    """Time the run's parts on random images of the run's shape; see the module doc."""
    device, graphs, threads = run_device(cfg)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as build_run
    torch.backends.cudnn.benchmark = not cfg.deterministic
    c, h, w = input_shape
    steps = max(cfg.plan.calibration_steps, 1)
    warm = WARMUP_STEPS + 2 if graphs else 2  # graphs: warm-up steps, the capture, one replay
    # the sieve keeps (1 - sieve) of the images in each epoch: enough for `steps` batches after it
    n_train = cfg.batch_size * math.ceil(max(steps, warm) / (1 - cfg.sieve))
    n_test = min(cfg.dataset.test_size, 2 * cfg.eval_batch_size)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    arrays = Arrays(torch.randint(0, 256, (n_train, c, h, w), dtype=torch.uint8, generator=g),
                    torch.randint(0, classes, (n_train,), generator=g),
                    torch.randint(0, 256, (n_test, c, h, w), dtype=torch.uint8, generator=g),
                    torch.randint(0, classes, (n_test,), generator=g))
    data = in_memory_data(arrays, cfg, device, g, None, num_classes=classes,
                          crop_padding=cfg.dataset.crop_padding, hflip=cfg.dataset.hflip)
    rt = Runtime(device, cfg.precision, channels_last=cfg.channels_last and device.type == "cuda")
    core = build_core(cfg, classes, c, h, [len(data.train)] * cfg.epochs, device, channels_last=rt.channels_last)
    model, optimizer, method = core.model, core.optimizer, core.method
    sieve = Sieve(cfg, n_train, device, torch.Generator().manual_seed(2))
    sieve.start_epoch(0, data.train)
    meter = CostMeter(core.cost_model, core.memory_model, method)
    freezer = Freezer(model, method.masks, None, cfg.optim, cfg.epochs, cfg.per_block_lr, scheme_options(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        analysis = Analysis(cfg, Path(tmp), model, method.masks, data.test, device, enabled=False)
        method.initialize(iter(data.train))
        meter.add_init(method.init_samples, method.init_passes)
        out = {"startup": time.perf_counter() - start}
        top5 = classes > 5
        train_step = TrainStep(model, optimizer, method, freezer, sieve, analysis, meter, rt,
                               cfg.optim.label_smoothing, cfg.batch_size, graphs)
        eval_batches = EvalBatches(model, rt, cfg.eval_batch_size, top5, graphs)
        bar = _NoBar()
        for k in depths:  # frozen depths grow as in a single-shot run (released blocks train as at depth 0)
            if k != freezer.frozen:
                if k > freezer.frozen:
                    freezer.set_frozen(range(freezer.frozen, k), True, optimizer)
                else:
                    freezer.set_frozen(range(k, freezer.frozen), False, optimizer)
                freezer.frozen = k
            meter.begin_epoch(1, k)
            train_one_epoch(train_step, data.train, freezer, 1, rt, bar)  # warm-up (and capture)
            _sync(device)
            t0 = time.perf_counter()
            train_one_epoch(train_step, data.train, freezer, 2, rt, bar)
            _sync(device)
            out[f"step@{k}"] = (time.perf_counter() - t0) / len(data.train)
        evaluate(model, data.test, rt, top5, eval_batches)  # warm-up (and capture)
        _sync(device)
        t0 = time.perf_counter()
        evaluate(model, data.test, rt, top5, eval_batches)
        _sync(device)
        out["eval_image"] = (time.perf_counter() - t0) / n_test
        # an update epoch: the method's structure update (MEST, every interval) and the sieve's swap
        t0 = time.perf_counter()
        sieve.end_epoch()
        sieve.start_epoch(cfg.interval, data.train)
        method.start_epoch(cfg.interval)
        _sync(device)
        out["epoch_update"] = time.perf_counter() - t0
        # every epoch: the cost meter's record and the checkpoint the run saves
        t0 = time.perf_counter()
        meter.end_epoch(n_train)
        save_checkpoint(Path(tmp) / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                "sparsity": method.state_dict(), "sieve": sieve.state_dict()})
        out["epoch_other"] = time.perf_counter() - t0
    return out


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate(cfg, plan: dict, times: dict[str, float]) -> dict:
    """The run's wall-clock from calibrated times along the plan's schedule (see the module doc)."""
    samples = sieve_epochs(cfg, plan["train_size"])
    train = 0.0
    for e, row in enumerate(plan["schedule"]):
        n = samples[e % cfg.epochs]  # LTH: each round repeats the epochs
        full, last = divmod(n, cfg.batch_size)
        # a partial last batch costs its share of a step (the run drops none)
        train += (full + last / cfg.batch_size) * times[f"step@{row['frozen_blocks']}"]
    epochs = len(plan["schedule"])
    updates = sum(1 for e in range(epochs) if (e % cfg.epochs) % cfg.interval == 0)
    parts = {"startup_s": times["startup"], "train_s": train,
             "eval_s": epochs * cfg.dataset.test_size * times["eval_image"],
             "epoch_work_s": epochs * times["epoch_other"] + updates * times["epoch_update"]}
    device, graphs, threads = run_device(cfg)
    return {"total_s": sum(parts.values()), "parts": parts, "device": device_name(device, threads),
            "device_kind": device.type, "unit": hours_label(device.type), "cuda_graphs": graphs,
            "step_s": {int(k.split("@")[1]): v for k, v in times.items() if k.startswith("step@")},
            "eval_image_s": times["eval_image"]}


def used_depths(plan: dict) -> list[int]:
    return sorted({row["frozen_blocks"] for row in plan["schedule"]})


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def timeout_minutes(seconds: float) -> int:
    """A SLURM time limit for a job of this estimate: 20% headroom, rounded up to 10 minutes."""
    return int(math.ceil(seconds * 1.2 / 600) * 10)
