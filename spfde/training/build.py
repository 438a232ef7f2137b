"""How a run is assembled from its config: the runtime (device, precision), data, model, optimizer, sparse
method, cost models, sieve, freeze plan and analysis. `train`, the planner and the benchmarks all build
through here (the plan through `build_core`, on the meta device)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from spfde.analysis import Analysis
from spfde.data import Data, build_data
from spfde.data.loaders import to_device
from spfde.models import build_model
from spfde.sparse import SparseMethod, build_method
from spfde.training.cost import CostMeter, CostModel, MemoryModel, epoch_batches, memory_model
from spfde.training.distributed import World
from spfde.training.freeze import FreezePlan, Freezer, block_param_groups, make_freeze_plan, scheme_options
from spfde.training.rounds import attach_round_files
from spfde.training.sieve import Sieve, check_sieve, sieve_epochs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


MACHINE_THREADS = torch.get_num_threads()  # torch's default for this machine, before any run sets its own


def resolve_threads(cfg) -> int:
    """CPU threads of a run: `threads`, else SLURM's CPUs per task (jobs sharing a node should not each use every
    core), else the machine's default. Set on every run, so runs sharing one process (a basic-launcher sweep)
    do not inherit each other's."""
    return cfg.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or MACHINE_THREADS


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """SGD with one parameter group per block (each block may follow its own learning rate). On CUDA the
    fused SGD: one kernel per step, and it reads a learning rate kept on the device (CUDA graphs)."""
    fused = next(model.parameters()).device.type == "cuda" or None
    return torch.optim.SGD(block_param_groups(model), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, nesterov=optim.nesterov, fused=fused)


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    precision: str
    channels_last: bool

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda")

    def autocast(self, cache: bool = True):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def indices(self, idx: torch.Tensor) -> torch.Tensor:
        """A batch's sample indices on the device (the sieve's flags live there), before the step: inside it a
        host-to-device copy would make the host wait, and cannot be captured in a CUDA graph."""
        return to_device(idx, self.device) if self.device.type == "cuda" and not idx.is_cuda else idx


@dataclass
class Core:
    """The model and what is built on it from the config alone: the same for a run and for its plan."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: SparseMethod
    cost_model: CostModel
    memory_model: MemoryModel


# meta-device models with their cost and memory models, by shape: the jobs of a sweep plan share one build, its
# FLOP counts and its measured activations (a meta model holds no values, and a sparse method does not change it)
_META_MODELS: dict[tuple, tuple] = {}


def build_core(cfg, num_classes: int, channels: int, image_size: int, epoch_steps: list[int], device,
               channels_last: bool = False, sync_bn: bool = False) -> Core:
    """Model, optimizer, sparse method and cost models, for a run whose epochs take `epoch_steps` optimizer steps
    (step-based methods schedule on them). `device="meta"` builds them without memory or data
    (how `spfde.planning.plan` sizes even ResNet-50 in seconds), once per model and input shape (see meta_model)."""
    input_shape = (channels, image_size, image_size)
    if str(device) == "meta":
        model, cost_model, memory = meta_model(cfg, num_classes, input_shape)
    else:
        model = build_model(cfg.model, num_classes, channels).to(device)
        if sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        cost_model = CostModel(model, input_shape)
        memory = memory_model(cfg.cost.memory, model, input_shape, cfg.cost.memory_batch)
    optimizer = build_optimizer(model, cfg.optim)
    method = build_method(cfg, model, optimizer, epoch_steps)
    return Core(model, optimizer, method, cost_model, memory)


def meta_model(cfg, num_classes: int, input_shape: tuple, convention: str | None = None):
    """The model on the meta device with its cost model and the memory model of `convention` (default
    cfg.cost.memory), built once per model config, classes, input shape and memory batch in this process: the
    FLOP counts and the measured activations are shared by every plan of that shape."""
    from omegaconf import OmegaConf

    key = (repr(OmegaConf.to_container(cfg.model)), num_classes, tuple(input_shape), cfg.cost.memory_batch)
    if key not in _META_MODELS:
        with torch.device("meta"):
            model = build_model(cfg.model, num_classes, input_shape[0])
        _META_MODELS[key] = (model, CostModel(model, input_shape), {})
    model, cost_model, memories = _META_MODELS[key]
    convention = convention or cfg.cost.memory
    if convention not in memories:
        memories[convention] = memory_model(convention, model, input_shape, cfg.cost.memory_batch)
    return model, cost_model, memories[convention]


@dataclass
class Run:
    """The parts of a run, built from its config (by `train` and by `python -m spfde.bench gpu`)."""

    device: torch.device
    rt: Runtime
    generator: torch.Generator  # data order and augmentation
    data: Data
    sieve: Sieve
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: SparseMethod
    cost_model: CostModel
    meter: CostMeter
    freeze_plan: FreezePlan | None
    freezer: Freezer
    analysis: Analysis


def build_run(cfg, run_dir: Path, world: World | None = None) -> Run:
    world = world or World()
    torch.set_num_threads(resolve_threads(cfg))
    seed_everything(cfg.seed)  # the same seed on every rank: same initial weights, masks and data order
    device = resolve_device(cfg.device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)  # streams, graphs and memory statistics follow the current device
    # denormal floats make CPU kernels several times slower (seen with GraSP masks on digits); flushing
    # them to zero changes nothing measurable in accuracy
    torch.set_flush_denormal(True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    generator = torch.Generator().manual_seed(cfg.seed)
    data = build_data(cfg, device, generator, world)
    check_sieve(cfg, data.train.dataset_size)
    sieve = Sieve(cfg, data.train.dataset_size, device, torch.Generator().manual_seed(cfg.seed + 2))
    sieve.start_epoch(0, data.train)  # the loader draws from the partial set only
    rt = Runtime(device, cfg.precision, channels_last=cfg.channels_last and device.type == "cuda")
    # each epoch's global batches, known before the run (fewer once a one-shot removal shrinks the set)
    batches = [epoch_batches(n, cfg.batch_size, world.size) for n in sieve_epochs(cfg, data.train.dataset_size)]
    core = build_core(cfg, data.num_classes, data.channels, data.image_size, [len(b) for b in batches], device,
                      channels_last=rt.channels_last, sync_bn=world.enabled and cfg.distributed.sync_bn)
    model, optimizer, method, cost_model = core.model, core.optimizer, core.method, core.cost_model
    meter = CostMeter(cost_model, core.memory_model, method)
    attach_round_files(cfg, method, write=world.is_main)
    freeze_plan = make_freeze_plan(cfg, model, method, cost_model, batches)
    freezer = Freezer(model, method.masks, freeze_plan, cfg.optim, cfg.epochs, cfg.per_block_lr,
                      scheme_options(cfg))
    analysis = Analysis(cfg, run_dir, model, method.masks, data.test, device, enabled=world.is_main)
    return Run(device, rt, generator, data, sieve, model, optimizer, method, cost_model, meter, freeze_plan, freezer,
               analysis)
