"""CUDA paths (bf16 autocast, channels_last, data on the GPU, measured peak memory). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from spfde.plan import build_plan
from tests.conftest import make_cfg, quick_overrides, read_metrics, run_training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_run_with_all_three_dimensions(tmp_path):
    overrides = quick_overrides("device=cuda", "epochs=6", "interval=1", "freeze=0.2", "sieve=0.2")
    plan = build_plan(make_cfg(overrides))
    summary = run_training(overrides, tmp_path)
    records = read_metrics(tmp_path)
    assert all(r["memory/cuda_peak"] > 0 for r in records)
    assert summary["train_flops"] == pytest.approx(plan["train_flops"], rel=1e-3)
    assert summary["final_acc"] > 0.3
    assert max(r["freeze/frozen_blocks"] for r in records) > 0


def test_cuda_masks_stay_exact_under_bf16(tmp_path):
    summary = run_training(quick_overrides("device=cuda", "epochs=3", "interval=1", "sparsity=rigl",
                                           "sparsity.rigl.delta_t=5"), tmp_path)
    assert summary["final_sparsity"] == pytest.approx(0.9, abs=1e-3)
    masks = torch.load(tmp_path / "last.pt", weights_only=False)["sparsity"]["masks"]["masks"]
    weights = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    for name, mask in masks.items():
        assert torch.all(weights[f"{name}.weight"][~mask] == 0)
