"""`Masks`: the one object that owns every mask of a model.

Which conv and linear weights are masked is a *masking rule* (`sparsity.masked`, set by each method's
file to what its reference code does) plus the user's `sparsity.dense_layers` (fnmatch patterns on module
names, kept dense as well); BN and biases are never masked. The rules, by the role a layer plays:

  main_convs     the first conv, the 1x1 projection shortcuts and the classifier stay dense (MEST's code:
                 its ResNet-32 and VGG-19 profiles list only the other convs)
  all_but_first  only the first conv stays dense (RigL's code: first_layer_sparsity 0, last layer sparse)
  all            every conv and linear is masked (ITOP's, sparse_learning's and GraSP's code)
 Layer densities come from a distribution:
`uniform` (every masked layer at the same density) or `erk` (RigL's Erdős–Rényi-kernel). Masked
weights are exactly zero after every optimizer step; their gradients are zeroed before it; a
position that changes state (pruned or grown) gets zero weight and — unless the method's code leaves
its optimizer buffers alone (MEST) — zero momentum.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from spfde.errors import SpfdeError
from spfde.models.base import block_of


class SparsityError(SpfdeError, ValueError):
    """A sparsity target that cannot be realised on this model (one line, for the user)."""


# masking rule -> the roles of the layers it keeps dense (see the module docstring for the sources)
MASKING_RULES: dict[str, tuple[str, ...]] = {
    "main_convs": ("first", "shortcut", "classifier"),
    "all_but_first": ("first",),
    "all": (),
}


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, in forward-definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_roles(model: nn.Module) -> dict[str, set[str]]:
    """The conv/linear layers that play each role a masking rule names: the first layer (the stem conv), the
    classifier (the last layer), and the 1x1 projection convs of residual shortcuts (`shortcut`/`downsample`)."""
    names = weight_layers(model)
    modules = dict(model.named_modules())
    shortcut = {n for n in names if {"shortcut", "downsample"} & set(n.split("."))
                and isinstance(modules[n], nn.Conv2d) and modules[n].kernel_size == (1, 1)}
    return {"first": set(names[:1]), "classifier": set(names[-1:]), "shortcut": shortcut}


def dense_by_rule(model: nn.Module, rule: str) -> list[str]:
    """The layers the masking rule keeps dense, in forward order."""
    if rule not in MASKING_RULES:
        raise SparsityError(f"sparsity.masked must be one of {', '.join(MASKING_RULES)}, got {rule!r}")
    roles = layer_roles(model)
    dense = set().union(*(roles[r] for r in MASKING_RULES[rule]))
    return [n for n in weight_layers(model) if n in dense]


def masked_layers(model: nn.Module, dense_patterns) -> dict[str, nn.Module]:
    """Conv and linear layers in forward-definition order, minus the ones kept dense."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(fnmatch(name, p) for p in dense_patterns)}


def erk_densities(shapes: dict[str, tuple], density: float) -> dict[str, float]:
    """RigL's Erdős–Rényi-kernel densities: layer density ∝ sum(shape)/prod(shape), scaled so the
    masked layers hold `density` of their weights in total. A layer that would exceed density 1 is made
    dense and the rest re-solved without it (RigL's `get_sparsities_erdos_renyi`)."""
    numel = {n: float(torch.Size(s).numel()) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        rest = [n for n in shapes if n not in dense]
        if not rest:
            break
        eps = budget / sum(raw[n] * numel[n] for n in rest)
        too_dense = [n for n in rest if eps * raw[n] > 1]
        if not too_dense:
            break
        dense.add(max(too_dense, key=lambda n: raw[n]))  # one at a time, the densest first (as RigL)
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def layer_densities(shapes: dict[str, tuple], sparsity: float, distribution: str) -> dict[str, float]:
    density = 1.0 - sparsity
    if distribution == "uniform":
        return {n: density for n in shapes}
    if distribution == "erk":
        return erk_densities(shapes, density)
    raise SparsityError(f"sparsity.distribution must be uniform or erk, got {distribution!r}")


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k highest scores (exactly k, ties broken by position order of topk)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.view_as(scores)


class Masks:
    def __init__(self, model: nn.Module, dense_patterns, distribution: str, rule: str = "all",
                 reset_momentum: bool = True):
        """Masks on the layers that neither the masking `rule` nor the `dense_patterns` keep dense.
        `reset_momentum`: positions that change state lose their momentum (see set_mask)."""
        self.rule, self.dense_patterns, self.reset_momentum = rule, list(dense_patterns), reset_momentum
        self.layers = masked_layers(model, [*dense_by_rule(model, rule), *self.dense_patterns])
        self.distribution = distribution
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()}
        self.frozen: set[str] = set()  # layers whose masks must not change (frozen blocks)
        self.version = 0  # bumped on every change, so readers (the cost meter) know when to recount

    # ----------------------------------------------------------------- targets
    @property
    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(m.weight.shape) for n, m in self.layers.items()}

    def target_counts(self, sparsity: float) -> dict[str, int]:
        """Active weights per layer for an overall sparsity of the masked layers."""
        densities = layer_densities(self.shapes, sparsity, self.distribution)
        counts = {n: int(round(densities[n] * m.weight.numel())) for n, m in self.layers.items()}
        empty = [n for n, c in counts.items() if c < 1]
        if empty:  # the fix names the user's own patterns and these layers (the rule's stay as they are)
            dense = ",".join([*self.dense_patterns, *empty])
            raise SparsityError(f"sparsity {sparsity:g} leaves layer {empty[0]} with no weights; lower sparsity.ratio "
                                f"or keep {'it' if len(empty) == 1 else f'the {len(empty)} such layers'} dense: "
                                f"sparsity.dense_layers=[{dense}]")
        return counts

    def in_blocks(self, blocks: range) -> list[str]:
        """Masked layers that belong to the given blocks (e.g. a frozen prefix)."""
        return [n for n in self.layers if block_of(n) in blocks]

    # ----------------------------------------------------------------- applying
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights (after every optimizer step)."""
        for n, m in self.layers.items():
            m.weight.mul_(self.masks[n])

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of masked weights (before the optimizer step)."""
        for n, m in self.layers.items():
            if m.weight.grad is not None:
                m.weight.grad.mul_(self.masks[n])

    @torch.no_grad()
    def set_mask(self, name: str, new: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                 restart: torch.Tensor | None = None) -> tuple[int, int]:
        """Replace a layer's mask. Positions that change get zero weight — grown weights start at zero — and,
        with `reset_momentum`, zero momentum (pruned weights leave none behind). `restart`: active positions
        that a method dropped and grew back in the same update and restarts like grown ones (MEST, SET).
        Returns (pruned, grown), not counting restarted positions."""
        old = self.masks[name]
        new = new.to(device=old.device, dtype=torch.bool).view_as(old)
        pruned, grown = old & ~new, new & ~old
        changed = pruned | grown
        if restart is not None:
            changed = changed | (restart.to(old.device).view_as(old) & new)
        weight = self.layers[name].weight
        weight.masked_fill_(changed, 0.0)
        if optimizer is not None and self.reset_momentum:
            buf = optimizer.state.get(weight, {}).get("momentum_buffer")
            if buf is not None:
                buf.masked_fill_(changed, 0.0)
        old.copy_(new)  # in place: a captured CUDA graph keeps reading this tensor
        self.version += 1
        weight.mul_(old)
        return int(pruned.sum()), int(grown.sum())

    def random_init(self, counts: dict[str, int], generator: torch.Generator, optimizer=None) -> None:
        """Uniformly random masks with exactly counts[name] active weights per layer."""
        for n, m in self.layers.items():
            scores = torch.rand(m.weight.shape, generator=generator).to(m.weight.device)
            self.set_mask(n, top_k_mask(scores, counts[n]), optimizer)

    # ----------------------------------------------------------------- reporting
    def active(self, name: str) -> int:
        return int(self.masks[name].sum())

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - self.active(n) / mask.numel() for n, mask in self.masks.items()}

    def overall_sparsity(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        return 1.0 - sum(self.active(n) for n in self.masks) / total if total else 0.0

    def densities(self) -> dict[str, float]:
        return {n: self.active(n) / mask.numel() for n, mask in self.masks.items()}

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"masks": {n: m.cpu().clone() for n, m in self.masks.items()}, "frozen": sorted(self.frozen)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["masks"]) != set(self.masks):
            raise SparsityError("the checkpoint's masks do not match this model's masked layers")
        for n, mask in state["masks"].items():
            self.masks[n].copy_(mask.to(self.masks[n].device, dtype=torch.bool))
        self.frozen = set(state.get("frozen", []))
        self.version += 1
        self.apply()
