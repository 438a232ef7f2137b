"""What several benchmarks share: one training run from overrides (`run_once`) and a mean ± std cell; for the gpu
and data benchmarks, the `Report` (lines printed as they come, named values rewritten to `--json` after each one,
a failed measurement reported and skipped), the backend settings every case runs with (`apply_backend_settings`)
and their two measurements: the bare model's training img/s on a random batch (`bare_model_img_s`, the anchor of
their ratios) and the harness's own epoch loop at a fixed frozen prefix (`harness_epochs`: img/s, what ran,
evaluation time, training memory against the plan's, and optionally loader-only and step-only img/s)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import open_dict

from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.models import build_model
from spfde.rundir.checkpoint import METRICS, write_json
from spfde.training.build import Runtime, build_optimizer, build_run, resolve_device, resolve_threads
from spfde.training.cost import MemoryModel
from spfde.training.freeze import candidate_blocks
from spfde.training.loop import evaluate, train, train_one_epoch
from spfde.training.step import EvalBatches, TrainStep, use_cuda_graphs


def run_once(overrides: list[str], run_dir: Path) -> tuple[dict, list[dict]]:
    """Train one run; its per-epoch records (for LTH: those of every round, in order)."""
    cfg = compose_config(["logger=none", "progress=false", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    validate(cfg)
    summary = train(cfg)
    records = [json.loads(line) for path in sorted(run_dir.rglob(METRICS)) for line in path.read_text().splitlines()]
    return summary, records


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


class NoBar:
    def update(self, n: int = 1) -> None:
        pass


class Report:
    """What one benchmark measured: lines printed as they come and named values, rewritten to a JSON file
    (`--json`) after each one so that a run cut off by a timeout still leaves what it had measured. A
    measurement that raises is reported as not measured and the others go on: a short GPU window must
    not be lost to its first error."""

    def __init__(self, json_path: str | None = None):
        self.lines: list[str] = []
        self.values: dict = {}
        self.failures = 0
        self.json_path = Path(json_path) if json_path else None

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def record(self, **values) -> None:
        self.values.update(values)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.json_path, self.values)

    def attempt(self, what: str, fn, *args):
        """fn(*args), or None (with the traceback on stderr and one line in the report) if it raises."""
        try:
            return fn(*args)
        except Exception as e:
            traceback.print_exc()
            self.failures += 1
            reason = (str(e).splitlines() or [""])[0][:200]
            self.emit(f"| {what} | not measured: {type(e).__name__}: {reason} |")
            return None

    def text(self) -> str:
        return "\n".join(self.lines)


def times(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# torch's own TF32 switches, which a run (spfde.training.build) leaves as they are: read before any case sets them
TF32_DEFAULTS = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def apply_backend_settings(cfg) -> dict:
    """Set, and return, the backend settings of one case: every case (bare anchor or harness) calls this before it
    computes anything, so that none inherits another's (the anchors run before any `build_run` has set cuDNN's
    autotuning). The values are a run's own: cuDNN autotuning unless deterministic (build_run), torch's TF32
    defaults, the config's precision and channels_last, the run's CPU threads and flushed denormals."""
    device = resolve_device(cfg.device)
    rt = Runtime(device, cfg.precision, channels_last=cfg.channels_last and device.type == "cuda")
    settings = {"cudnn.benchmark": not cfg.deterministic, "cudnn.deterministic": bool(cfg.deterministic),
                **TF32_DEFAULTS, "precision": "bf16" if rt.bf16 else "fp32", "channels_last": rt.channels_last,
                "threads": resolve_threads(cfg)}
    torch.backends.cudnn.benchmark = settings["cudnn.benchmark"]
    torch.backends.cudnn.deterministic = settings["cudnn.deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = settings["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = settings["cudnn.allow_tf32"]
    torch.set_num_threads(settings["threads"])
    torch.set_flush_denormal(True)  # as build_run does (CPU only; it cannot be read back)
    return settings


def settings_in_effect(rt: Runtime) -> dict:
    """The settings a case is measured with, read back from torch and from the runtime it computes with."""
    return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "precision": "bf16" if rt.bf16 else "fp32",
            "channels_last": rt.channels_last, "threads": torch.get_num_threads()}


def settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def settings_line(settings: dict, cases: dict) -> str:
    """One line per table: the settings of its cases (`cases`: name -> the settings it was measured with), and any
    case measured with others (which apply_backend_settings should make impossible)."""
    differ = [f"{name} ({settings_text(s)})" for name, s in cases.items() if s != settings]
    return (f"backend settings of every case: {settings_text(settings)}"
            + (f"; DIFFERENT in: {'; '.join(differ)}" if differ else ""))


def what_ran(step: TrainStep) -> str:
    """How the plain steps of the epoch just run were executed, from the step's own state: "graphed" (replayed
    from a CUDA graph), "eager" (graphs off, or none replayed), or "fallback: <error>" (a capture failed and the
    step went eager, see spfde.training.step.Graphs)."""
    graphs = step.graphs
    if graphs is None:
        return "eager"
    if graphs.failed is not None:
        return f"fallback: {graphs.failed}"
    return "graphed" if any(key in graphs.graphs for key in graphs.used) else "eager"


def bare_model_img_s(cfg, batch_size: int, steps: int, graphed: bool) -> dict:
    """The anchor: the project's model trained by a minimal loop on one random batch already on the device
    (fused SGD, bf16 autocast and channels_last on CUDA), eager or as one captured CUDA graph. Returns img/s, what
    ran ("graphed" or "eager") and the settings it ran with."""
    settings = apply_backend_settings(cfg)
    device = resolve_device(cfg.device)
    d = cfg.dataset
    rt = Runtime(device, settings["precision"], channels_last=settings["channels_last"])
    model = build_model(cfg.model, d.num_classes, d.channels).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    x, y = rt.batch(torch.randn(batch_size, d.channels, d.image_size, d.image_size),
                    torch.randint(0, d.num_classes, (batch_size,)))

    def step():
        with rt.autocast(cache=not graphed):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    run = step
    if graphed:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    for _ in range(3):
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    img_s = steps * batch_size / (time.perf_counter() - start)
    return {"img_s": img_s, "ran": "graphed" if graphed else "eager", "settings": settings_in_effect(rt)}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def harness_epochs(overrides: list[str], frozen: str | int = 0, timed_eval: bool = False,
                   bound_steps: int = 0) -> dict:
    """The harness's own loop (spfde.training.loop.train_one_epoch with spfde.training.step.TrainStep) for two
    epochs at a fixed frozen prefix (0, "half" or "all" of the candidate blocks); the second epoch is timed, and
    what ran in it is read from the step (`what_ran`). Measures training memory against the plan's and, with
    timed_eval, times an evaluation of the test set. With bound_steps, also the loader alone (an epoch of batches
    moved to the device, no model) and the step alone (bound_steps steps on one batch already on the device)."""
    cfg = compose_config(["logger=none", "progress=false", *overrides])
    with open_dict(cfg):
        cfg.run_dir = tempfile.mkdtemp(prefix="spfde-bench-")
    validate(cfg)
    run = build_run(cfg, Path(cfg.run_dir))
    apply_backend_settings(cfg)  # after build_run, which sets some of them itself: the same values, from one place
    device, model, optimizer = run.device, run.model, run.optimizer
    run.method.initialize(iter(run.data.train))
    candidates = candidate_blocks(model, cfg.freeze_fraction)
    k = {"half": candidates // 2, "all": candidates}.get(frozen, frozen)
    if k:
        run.freezer.set_frozen(range(k), True, optimizer)
        run.freezer.frozen = k
    run.meter.begin_epoch(0, k)
    graphs = use_cuda_graphs(cfg.cuda_graphs, device)
    step = TrainStep(model, optimizer, run.method, run.freezer, run.sieve, run.analysis, run.meter, run.rt,
                     cfg.optim.label_smoothing, cfg.batch_size, graphs)
    eval_batches = None
    try:  # the case's graphs and their memory pool go before the next case starts, also when this one fails
        train_one_epoch(step, run.data.train, run.freezer, 0, run.rt, NoBar())  # warm-up and capture
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        settings = settings_in_effect(run.rt)
        start = time.perf_counter()
        stats = train_one_epoch(step, run.data.train, run.freezer, 1, run.rt, NoBar())
        sync(device)
        train_s = time.perf_counter() - start
        ran = what_ran(step)
        peak = step.peak_memory()
        eval_s, capture_s = None, step.capture_s
        if timed_eval:
            top5 = run.data.num_classes > 5
            eval_batches = EvalBatches(model, run.rt, cfg.eval_batch_size, top5, graphs)
            evaluate(model, run.data.test, run.rt, top5, eval_batches)  # warm-up and capture
            sync(device)
            start = time.perf_counter()
            evaluate(model, run.data.test, run.rt, top5, eval_batches)
            sync(device)
            eval_s = time.perf_counter() - start
            capture_s += eval_batches.capture_s
        loader_img_s = step_img_s = None
        if bound_steps:
            loader_img_s, batch = loader_only_img_s(run.data.train, run.rt)
            step_img_s = step_only_img_s(step, batch, bound_steps)
    finally:
        step.close()
        if eval_batches is not None:
            eval_batches.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next case starts from what it allocates itself
    input_shape = (run.data.channels, run.data.image_size, run.data.image_size)
    plan = MemoryModel(model, input_shape, cfg.batch_size,
                       torch.bfloat16 if run.rt.bf16 else torch.float32).breakdown(run.method.masks.densities(), k)
    return {"img_s": stats["samples"] / train_s, "samples": stats["samples"], "train_s": train_s, "eval_s": eval_s,
            "test_size": run.data.test.num_samples, "frozen": k, "candidates": candidates,
            "measured_above_baseline": None if peak is None else peak - baseline, "measured_peak": peak,
            "plan_total": plan["total"], "plan_non_weights": plan["total"] - plan["weights"],
            "capture_s": capture_s, "graphs": graphs, "ran": ran, "settings": settings,
            "loader_img_s": loader_img_s, "step_img_s": step_img_s}


def loader_only_img_s(loader, rt: Runtime) -> tuple[float, tuple]:
    """An epoch of the training loader, each batch moved to the device as the epoch loop moves it, no model: how
    fast the data arrives (worker start included, as in a timed epoch). Also returns a copy of its first batch."""
    sync(rt.device)
    start = time.perf_counter()
    seen, first = 0, None
    for x, y, idx in loader:
        x, y = rt.batch(x, y)
        idx = rt.indices(idx)
        if first is None:  # a copy: a loader may reuse its buffers for later batches
            first = (x.clone(), y.clone(), idx.clone())
        seen += len(y)
    sync(rt.device)
    return seen / (time.perf_counter() - start), first


def step_only_img_s(step: TrainStep, batch: tuple, steps: int) -> float:
    """The training step (as the timed epoch ran it: replayed when graphed) on one batch already on the device,
    repeated: how fast the model trains when data costs nothing."""
    x, y, idx = batch
    for _ in range(3):
        step(x, y, idx, t=1.0)
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y, idx, t=1.0)
    sync(x.device)
    return steps * len(y) / (time.perf_counter() - start)


def bound_by(loader_img_s: float | None, step_img_s: float | None) -> str | None:
    """"data-bound" when the loader alone delivers fewer images per second than the step alone trains, else
    "compute-bound"; None when either was not measured."""
    if not loader_img_s or not step_img_s:
        return None
    return "data-bound" if loader_img_s < step_img_s else "compute-bound"
