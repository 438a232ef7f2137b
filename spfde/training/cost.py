"""Training cost: FLOPs and memory, planned before a run (`spfde.planning.plan`) and counted during it.

FLOPs follow the paper's convention: 2 x multiply-accumulates of conv and linear layers (BN, ReLU and
additions are not counted). The dense forward FLOPs of every layer come from
`torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the model at the dataset's input
size (no data, no compute). A training step costs, per sample and layer with density d (1 for dense
layers): forward F·d, input gradient F·d and weight gradient F·d; a frozen layer costs its forward
only; on dense-gradient steps (RigL/ITOP updates, SNFS always) the weight gradient is dense, F. A layer
whose input needs no gradient — the first layer, and the layers that read the input of the first
trainable block after a frozen prefix — has no input gradient: autograd never computes it.

Memory follows the paper's Fig. 4: fp32 bytes at a batch size (64) of weights (non-zeros), activations
saved for backward, weight gradients (non-zeros of trainable layers) and activation gradients. The two
activation terms are *measured* on a real training step on the meta device (saved-tensor hooks and
gradient hooks on every block's output); weights and weight gradients are *counted* from the masks
(a masked dense tensor holds its zeros, so there is nothing to measure). That is `cost.memory=autograd`.
The default, `cost.memory=paper` (PaperMemoryModel), reproduces Fig. 4's numbers: one output activation
per conv/linear layer kept for every layer, frozen or not, and activation gradients only for trainable
layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spfde.data.loaders import epoch_batches  # noqa: F401 - the planner's batch sizes are the loader's
from spfde.models.base import block_of
from spfde.sparse.base import SparseMethod

BYTES_FP32 = 4


@dataclass
class Layer:
    name: str
    block: int  # index in model.blocks
    flops: float  # dense forward FLOPs per sample
    numel: int  # weights
    reads_block_input: bool  # its input is its block's input: no input gradient when the block comes first


def meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


class CostModel:
    """Per-sample training FLOPs of one configuration of a model (densities, frozen prefix)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int]):
        self.input_shape = tuple(input_shape)
        meta = meta_copy(model).eval()  # eval: BN accepts a single sample at any spatial size
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.empty(1, *self.input_shape, device="meta"))
        counts = counter.get_flop_counts()
        root = type(model).__name__
        first_readers = block_input_readers(model, self.input_shape)
        self.layers = [Layer(name, block_of(name), float(sum(counts.get(f"{root}.{name}", {}).values())),
                             m.weight.numel(), name in first_readers)
                       for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.num_blocks = len(model.blocks)
        self.block_names = list(model.block_names)

    @property
    def dense_forward(self) -> float:
        return sum(layer.flops for layer in self.layers)

    def block_forward(self) -> list[float]:
        flops = [0.0] * self.num_blocks
        for layer in self.layers:
            flops[layer.block] += layer.flops
        return flops

    def step(self, densities: dict[str, float], frozen_blocks: int = 0, dense_grad: bool = False) -> float:
        """Training FLOPs per sample. `densities` maps masked layers to their density (others: 1)."""
        total = 0.0
        for layer in self.layers:
            fwd = layer.flops * densities.get(layer.name, 1.0)
            if layer.block < frozen_blocks:
                total += fwd
                continue
            input_grad = 0.0 if layer.block == frozen_blocks and layer.reads_block_input else fwd
            total += fwd + input_grad + (layer.flops if dense_grad else fwd)
        return total

    def inference(self, densities: dict[str, float]) -> float:
        return sum(layer.flops * densities.get(layer.name, 1.0) for layer in self.layers)


def block_input_readers(model: nn.Module, input_shape) -> set[str]:
    """The conv/linear layers that read their block's input unchanged (a block's first conv, a projection
    shortcut): when the block is the first that trains, their input needs no gradient. Found on a meta forward
    in which every block's input is detached, as a frozen prefix (or the image) leaves it."""
    meta = meta_copy(model).eval()
    readers: set[str] = set()

    def note(name: str):
        return lambda module, inputs: readers.add(name) if not inputs[0].requires_grad else None

    meta.requires_grad_(True)  # the live model may have frozen blocks
    for name, m in meta.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_pre_hook(note(name))
    x = torch.empty(1, *input_shape, device="meta")
    with torch.enable_grad():
        for block in meta.blocks:
            x = block(x.detach())
    return readers


def flops_table(cost_model: CostModel, method, batches_per_epoch: list[list[int]], max_frozen: int,
                frozen_densities: bool = True) -> list[list[float]]:
    """table[e][k]: planned training FLOPs of epoch e with the first k blocks frozen, at the method's
    planned densities (frozen layers at theirs), with its dense-gradient steps and the epoch's batches
    (fewer under sieving). With frozen_densities=False frozen layers keep the density they would train
    at, so table[e][0] - table[e][k] is exactly the back-propagation the frozen prefix skips (the saving
    the paper's Alg. 1 solves on; MEST's pruning of a frozen block to its target is not credited)."""
    # most methods never take a dense-gradient step: no need to ask at each of the run's steps
    asks = type(method).dense_grad_step is not SparseMethod.dense_grad_step
    frozen_of = [frozenset(method.masks.in_blocks(range(k))) if frozen_densities else frozenset()
                 for k in range(max_frozen + 1)]
    table, steps_of = [], {}
    first_step = 0  # the run's optimizer steps are counted from its first, across epochs of any length
    for e, batches in enumerate(batches_per_epoch):
        dense_grad_samples = asks and sum(n for i, n in enumerate(batches) if method.dense_grad_step(first_step + i))
        first_step += len(batches)
        row = []
        for k in range(max_frozen + 1):
            frozen = frozen_of[k]
            densities = method.planned_densities(e, frozen)
            key = (tuple(densities.items()), k)
            if key not in steps_of:  # densities change a few times a run: count each configuration once
                steps_of[key] = (cost_model.step(densities, k, False), cost_model.step(densities, k, True))
            per_sample, dense_grad = steps_of[key]
            extra = dense_grad - per_sample if dense_grad_samples else 0.0
            row.append(sum(batches) * per_sample + dense_grad_samples * extra)
        table.append(row)
    return table


class MemoryModel:
    """Training memory (bytes) of one configuration; activation terms measured once per frozen prefix."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], batch: int,
                 activation_dtype: torch.dtype = torch.float32):
        # activation_dtype: float32 is the paper's convention; bfloat16 is what a bf16-autocast GPU run
        # keeps (its weights, gradients and momentum stay fp32)
        self.model, self.input_shape, self.batch = model, tuple(input_shape), batch
        self.activation_dtype = activation_dtype
        self.params = [(name, p.numel(), block_of(name)) for name, p in model.named_parameters()]
        self._activations: dict[int, tuple[int, int]] = {}
        self._breakdowns: dict[tuple, dict[str, int]] = {}  # a plan asks for the same few many times

    def activations(self, frozen_blocks: int) -> tuple[int, int]:
        """(bytes saved for backward, bytes of activation gradients), measured on a meta-device step
        whose first `frozen_blocks` blocks run under no_grad, as a frozen prefix does."""
        if frozen_blocks not in self._activations:
            self._activations[frozen_blocks] = measure_activations(self.model, self.input_shape, self.batch,
                                                                   frozen_blocks, self.activation_dtype)
        return self._activations[frozen_blocks]

    def breakdown(self, densities: dict[str, float], frozen_blocks: int = 0) -> dict[str, int]:
        key = (tuple(densities.items()), frozen_blocks)
        if key not in self._breakdowns:
            self._breakdowns[key] = self._breakdown(densities, frozen_blocks)
        return dict(self._breakdowns[key])

    def _breakdown(self, densities: dict[str, float], frozen_blocks: int) -> dict[str, int]:
        weights = grads = 0
        for name, numel, block in self.params:
            layer = name.rsplit(".", 1)[0]
            count = int(round(numel * densities.get(layer, 1.0))) if name.endswith("weight") else numel
            weights += count
            if block >= frozen_blocks:
                grads += count
        saved, act_grads = self.activations(frozen_blocks)
        parts = {"weights": weights * BYTES_FP32, "activations": saved, "weight_grads": grads * BYTES_FP32,
                 "activation_grads": act_grads}
        return {**parts, "total": sum(parts.values())}


class PaperMemoryModel(MemoryModel):
    """The paper's Fig. 4 convention (`cost.memory=paper`): one output activation per conv/linear layer
    is kept for every layer, frozen or not (a frozen prefix still runs forward), and activation
    gradients (one per conv/linear output) exist only for trainable layers. Weights and weight
    gradients are counted as in MemoryModel."""

    _outputs: list[tuple[int, int]] | None = None  # (block, bytes) of every conv/linear output

    def activations(self, frozen_blocks: int) -> tuple[int, int]:
        if frozen_blocks not in self._activations:
            if self._outputs is None:  # the same outputs at every frozen depth: one meta forward
                self._outputs = layer_outputs(self.model, self.input_shape, self.batch)
            outputs = self._outputs
            saved = sum(nbytes for _, nbytes in outputs)
            grads = sum(nbytes for block, nbytes in outputs if block >= frozen_blocks)
            self._activations[frozen_blocks] = (saved, grads)
        return self._activations[frozen_blocks]


MEMORY_CONVENTIONS = {"paper": PaperMemoryModel, "autograd": MemoryModel}


def memory_model(convention: str, model: nn.Module, input_shape, batch: int) -> MemoryModel:
    """The memory model of a convention: `paper` (Fig. 4) or `autograd` (what autograd keeps, measured)."""
    return MEMORY_CONVENTIONS[convention](model, input_shape, batch)


def layer_outputs(model: nn.Module, input_shape, batch: int) -> list[tuple[int, int]]:
    """(block, fp32 bytes) of the output of every conv/linear layer at `batch`, from a meta forward."""
    meta = meta_copy(model).eval()
    outputs = []

    def keep(block: int):
        return lambda module, inputs, out: outputs.append((block, out.numel() * BYTES_FP32))

    for name, m in meta.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(keep(block_of(name)))
    with torch.no_grad():
        meta(torch.zeros(batch, *input_shape, device="meta"))
    return outputs


def measure_activations(model: nn.Module, input_shape, batch: int, frozen_blocks: int,
                        dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    meta = meta_copy(model).to(dtype).train()
    for p in meta.parameters():  # the live model may have frozen blocks (e.g. after a resume): the
        p.requires_grad_(True)   # measurement must depend on `frozen_blocks` only
    # storages are told apart by their StorageImpl (`_cdata`): views of one tensor share it, and weights
    # saved as views (a Linear keeps weight.t()) are recognised as parameters, not activations
    param_storages = {p.untyped_storage()._cdata for p in meta.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            saved[storage._cdata] = storage.nbytes()
        return t

    grad_bytes = []
    x = torch.zeros(batch, *input_shape, device="meta", dtype=dtype)
    with torch.no_grad():
        for block in meta.blocks[:frozen_blocks]:
            x = block(x)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for block in meta.blocks[frozen_blocks:]:
            x = block(x)
            if x.requires_grad:
                x.register_hook(lambda g: grad_bytes.append(g.numel() * g.element_size()))
    if x.requires_grad:
        x.sum().backward()
    return sum(saved.values()), sum(grad_bytes)


class CostMeter:
    """Counts what a run actually costs, step by step, with a breakdown of what each dimension saved.

    Per epoch: the FLOPs of the steps run; what dense training of the whole training set would have
    cost; and the savings taken in order: sparsity (dense -> this run's densities, no freezing, whole
    set), freezing (-> with the frozen prefix), sieving (-> only the samples actually used)."""

    def __init__(self, cost_model: CostModel, memory: MemoryModel, method):
        self.cost_model, self.memory, self.method = cost_model, memory, method
        self.totals = {"flops": 0.0, "dense": 0.0, "saved_sparsity": 0.0, "saved_freezing": 0.0,
                       "saved_sieving": 0.0, "init": 0.0}
        self.memory_seen: list[int] = []
        self.begin_epoch(0, 0)

    # ----------------------------------------------------------------- per step (hot path: no syncs)
    def begin_epoch(self, epoch: int, frozen_blocks: int = 0) -> None:
        self.epoch_index, self.frozen_blocks = epoch, frozen_blocks
        self.epoch = {"flops": 0.0, "unfrozen": 0.0, "samples": 0}
        self._version = None

    def _refresh(self) -> None:
        densities = self.method.masks.densities()  # reads the masks: only when they changed
        unfrozen = self.method.densities_without_freezing(densities, self.epoch_index)
        self._per_sample = {dg: (self.cost_model.step(densities, self.frozen_blocks, dg),
                                 self.cost_model.step(unfrozen, 0, dg))
                            for dg in (False, True)}
        self._densities = densities
        self._version = self.method.masks.version

    def step(self, samples: int, dense_grad: bool) -> None:
        if self._version != self.method.masks.version:
            self._refresh()
        actual, unfrozen = self._per_sample[dense_grad]
        self.epoch["flops"] += samples * actual
        self.epoch["unfrozen"] += samples * unfrozen
        self.epoch["samples"] += samples

    def add_init(self, samples: int, dense_passes: float) -> None:
        """One-off dense passes before training (SNIP/GraSP saliency): dense_passes x a dense step."""
        flops = samples * dense_passes * self.cost_model.step({}, 0, False)
        self.totals["init"] += flops
        self.totals["flops"] += flops

    # ----------------------------------------------------------------- per epoch
    def end_epoch(self, dataset_size: int) -> dict:
        e = self.epoch
        if self._version != self.method.masks.version:
            self._refresh()
        seen = max(e["samples"], 1)
        dense = dataset_size * self.cost_model.step({}, 0, False)
        after_sparsity = dataset_size * e["unfrozen"] / seen
        after_freezing = dataset_size * e["flops"] / seen
        saved = {"saved_sparsity": dense - after_sparsity, "saved_freezing": after_sparsity - after_freezing,
                 "saved_sieving": after_freezing - e["flops"]}
        self.totals["flops"] += e["flops"]
        self.totals["dense"] += dense
        for k, v in saved.items():
            self.totals[k] += v
        mem = self.memory.breakdown(self._densities, self.frozen_blocks)
        self.memory_seen.append(mem["total"])
        without_freezing = self.totals["flops"] + self.totals["saved_freezing"] - self.totals["init"]
        record = {"flops/epoch": e["flops"], "flops/total": self.totals["flops"],
                  "freeze/saved_share": self.totals["saved_freezing"] / without_freezing if without_freezing else 0.0,
                  "flops/dense_total": self.totals["dense"],
                  **{f"flops/{k}": self.totals[k] for k in saved},
                  **{f"memory/{k}": v for k, v in mem.items()},
                  "memory/min": min(self.memory_seen),
                  "memory/avg": sum(self.memory_seen) / len(self.memory_seen)}
        return record

    def summary(self) -> dict:
        targets = {n: c / self.method.masks.masks[n].numel() for n, c in self.method.targets.items()}
        return {"train_flops": self.totals["flops"], "dense_train_flops": self.totals["dense"],
                "flops_saved_sparsity": self.totals["saved_sparsity"],
                "flops_saved_freezing": self.totals["saved_freezing"],
                "flops_saved_sieving": self.totals["saved_sieving"],
                "inference_flops": self.cost_model.inference(self.method.masks.densities()),
                "memory_min_bytes": min(self.memory_seen) if self.memory_seen else 0,
                "memory_avg_bytes": sum(self.memory_seen) / len(self.memory_seen) if self.memory_seen else 0,
                "memory_dst_min_bytes": self.memory.breakdown(targets, 0)["total"]}

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"totals": dict(self.totals), "memory_seen": list(self.memory_seen)}

    def load_state_dict(self, state: dict) -> None:
        self.totals = dict(state["totals"])
        self.memory_seen = list(state["memory_seen"])
