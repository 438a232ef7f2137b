"""`python -m spfde.bench freeze-step`: the wall-clock of one training step on the configured model and batch (the
quickstart's unless overridden) with 0, half and all of its candidate blocks frozen (the frozen prefix runs under
no_grad), after warm-up steps. Prints a table of ms/step per frozen depth and its ratio to the unfrozen step."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from spfde.config import compose_config
from spfde.models import build_model
from spfde.training.build import build_optimizer, resolve_device
from spfde.training.freeze import candidate_blocks, frozen_prefix_forward


def freeze_step(steps: int, extra: list[str]) -> str:
    """Time training steps with a growing frozen prefix on the configured model and batch."""
    cfg = compose_config(["experiment=quickstart", "logger=none", *extra])
    device = resolve_device(cfg.device)
    d = cfg.dataset
    model = build_model(cfg.model, d.num_classes, d.channels).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    x = torch.randn(cfg.batch_size, d.channels, d.image_size, d.image_size, device=device)
    y = torch.randint(0, d.num_classes, (cfg.batch_size,), device=device)
    candidates = candidate_blocks(model, cfg.freeze_fraction)

    def timed(k: int) -> float:
        for i, block in enumerate(model.blocks):
            block.requires_grad_(i >= k)
        for n in range(steps + 3):
            if n == 3:  # warm-up steps are not timed
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(frozen_prefix_forward(model, x, k), y).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    rows = [(k, timed(k)) for k in (0, candidates // 2, candidates)]
    base = rows[0][1]
    lines = [f"| frozen blocks (of {len(model.blocks)}) | ms/step | vs unfrozen |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * t:.2f} | {t / base:.2f}× ({base / t:.2f}× faster) |" for k, t in rows]
    return (f"# training step, {cfg.model.name} (depth {cfg.model.depth}, width {cfg.model.width}), batch "
            f"{cfg.batch_size} at {d.channels}x{d.image_size}x{d.image_size}, device {device}\n" + "\n".join(lines))
