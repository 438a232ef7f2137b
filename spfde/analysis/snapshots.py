"""Taking the measurements of the paper's Sec. 3 (Fig. 1a, 1b, 3b), taken during training and analysed after.

During a run (`analysis.every=N`, off by default), every N epochs and at the last one, a snapshot goes
to `<run_dir>/analysis/epoch_NNNN.pt`:
  - per masked layer, its mask and the positions of its top-`top_fraction` (50%) magnitude non-zero
    weights, both bit-packed;
  - per block, the Gram matrix X·Xᵀ of its output on a fixed probe batch from the test split (the first
    `probe_size` test images). Linear CKA needs only these Gram matrices, so they stand in, exactly,
    for the activations themselves at a fraction of the size.
Every epoch (when on) the mean gradient norm of each conv/linear layer goes to the metrics
(`grad_norm/<layer>`). `python -m spfde.analyze` turns all of this into the paper's figures.
"""

from __future__ import annotations

import torch
from torch import nn

from spfde.analysis.measures import (
    gram,
    linear_cka,
    pack,
    pack_gram,
    structural_similarity,
    top_positions,
    unpack,
    unpack_gram,
)
from spfde.rundir.checkpoint import load_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------- during training


class Analysis:
    """Snapshots and gradient norms of one run (nothing to checkpoint: snapshots are files, and the
    gradient norms restart with each epoch)."""

    def __init__(self, cfg, run_dir, model: nn.Module, masks, test_loader, device, enabled: bool = True):
        self.every, self.epochs = cfg.analysis.every, cfg.epochs
        self.top_fraction = cfg.analysis.top_fraction
        self.enabled = self.every > 0 and enabled  # (with several ranks, rank 0 alone takes snapshots)
        self.model, self.masks, self.device = model, masks, device
        self.dir = run_dir / "analysis"
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.norms = {n: torch.zeros((), device=device) for n in self.layers}
        self.steps = 0
        self.probe = None
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            xs, seen = [], 0
            for x, _y, _idx in test_loader:  # the first probe_size test images, always the same
                xs.append(x[: cfg.analysis.probe_size - seen])
                seen += len(xs[-1])
                if seen >= cfg.analysis.probe_size:
                    break
            self.probe = torch.cat(xs).to(device)

    def after_backward(self) -> None:
        """Accumulate each layer's gradient norm (the masked gradient, as the optimizer sees it)."""
        if not self.enabled:
            return
        for name, layer in self.layers.items():
            if layer.weight.grad is not None:
                self.norms[name] += layer.weight.grad.detach().float().norm()
        self.steps += 1

    def end_epoch(self, epoch: int) -> dict:
        """Gradient norms of the epoch for the metrics; a snapshot when one is due."""
        if not self.enabled:
            return {}
        stats = {f"grad_norm/{n}": float(v) / max(self.steps, 1) for n, v in self.norms.items()}
        for v in self.norms.values():
            v.zero_()
        self.steps = 0
        done = epoch + 1
        if done % self.every == 0 or done == self.epochs:
            self.snapshot(done)
        return stats

    @torch.no_grad()
    def snapshot(self, epoch: int) -> None:
        layers = {}
        for name, layer in self.layers.items():
            weight = layer.weight.detach()
            mask = self.masks.masks[name] if name in self.masks.masks else torch.ones_like(weight, dtype=torch.bool)
            layers[name] = {"mask": pack(mask), "top": pack(top_positions(weight, mask, self.top_fraction))}
        grams = []
        was_training = self.model.training
        self.model.eval()
        x = self.probe
        for block in self.model.blocks:
            x = block(x)
            grams.append(pack_gram(gram(x.float()).cpu()))
        self.model.train(was_training)
        state = {"epoch": epoch, "layers": layers, "grams": grams, "block_names": list(self.model.block_names)}
        save_checkpoint(self.dir / f"epoch_{epoch:04d}.pt", state)


# ----------------------------------------------------------------------------- after training


def load_snapshots(run_dir) -> list[dict]:
    from pathlib import Path

    paths = sorted((Path(run_dir) / "analysis").glob("epoch_*.pt"))
    return [load_checkpoint(p) for p in paths]  # weights_only: a crafted snapshot is refused, not run


def series(run_dir, debiased: bool = False) -> dict:
    """Structural similarity per layer and CKA per block against the final snapshot, per epoch."""
    snaps = load_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"{run_dir} has no analysis snapshots: run it with analysis.every=1 (or N)")
    final = snaps[-1]
    final_masks = {n: unpack(v["mask"]) for n, v in final["layers"].items()}
    ss = {n: [] for n in final["layers"]}
    cka = {b: [] for b in final["block_names"]}
    for snap in snaps:
        for n, v in snap["layers"].items():
            ss[n].append(structural_similarity(unpack(v["top"]), final_masks[n]))
        for b, k, k_final in zip(final["block_names"], snap["grams"], final["grams"]):
            cka[b].append(linear_cka(unpack_gram(k), unpack_gram(k_final), debiased))
    return {"epochs": [s["epoch"] for s in snaps], "structural_similarity": ss, "cka": cka}
