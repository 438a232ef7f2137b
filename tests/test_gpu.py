"""CUDA paths (bf16 autocast, channels_last, data on the GPU, CUDA graphs, measured peak memory).
Skipped without CUDA."""

from __future__ import annotations

import hashlib

import pytest
import torch

from spfde.planning.plan import build_plan
from spfde.sparse.base import SparseMethod
from tests.helpers import make_cfg, quick_overrides, read_metrics, run_training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_run_with_all_three_dimensions(tmp_path):
    overrides = quick_overrides("device=cuda", "epochs=6", "interval=1", "freeze=0.2", "sieve=0.2")
    plan = build_plan(make_cfg(overrides))
    summary = run_training(overrides, tmp_path)
    records = read_metrics(tmp_path)
    assert all(r["memory/train_peak"] > 0 and r["memory/eval_peak"] > 0 for r in records)
    assert summary["memory_train_peak_bytes"] == max(r["memory/train_peak"] for r in records)
    assert summary["train_flops"] == pytest.approx(plan["train_flops"], rel=1e-3)
    assert summary["final_acc"] > 0.3
    assert max(r["freeze/frozen_blocks"] for r in records) > 0
    assert 0 < summary["cuda_graphs_capture_s"] < 60


def test_cuda_masks_stay_exact_under_bf16(tmp_path):
    summary = run_training(quick_overrides("device=cuda", "epochs=3", "interval=1", "sparsity=rigl",
                                           "sparsity.rigl.delta_t=5"), tmp_path)
    assert summary["final_sparsity"] == pytest.approx(0.9, abs=1e-3)
    masks = torch.load(tmp_path / "last.pt", weights_only=False)["sparsity"]["masks"]["masks"]
    weights = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    for name, mask in masks.items():
        assert torch.all(weights[f"{name}.weight"][~mask] == 0)


def mask_history(monkeypatch, overrides, run_dir) -> tuple[list[str], dict]:
    """Train, recording a hash of every mask after each structure update."""
    history = []
    real = SparseMethod.end_update

    def end_update(self):
        real(self)
        data = b"".join(self.masks.masks[n].cpu().numpy().tobytes() for n in sorted(self.masks.masks))
        history.append(hashlib.sha256(data).hexdigest())

    with monkeypatch.context() as m:
        m.setattr(SparseMethod, "end_update", end_update)
        summary = run_training(overrides, run_dir)
    return history, summary


@pytest.mark.parametrize("extra", [["sparsity=mest"], ["sparsity=rigl", "sparsity.rigl.delta_t=5"],
                                   ["sparsity=mest", "freeze=0.15", "sieve=0.2"]])
def test_cuda_graphs_on_and_off_give_the_same_masks(tmp_path, monkeypatch, extra):
    overrides = quick_overrides("device=cuda", "deterministic=true", "epochs=4", "interval=1", *extra)
    off, s_off = mask_history(monkeypatch, [*overrides, "cuda_graphs=off"], tmp_path / "off")
    on, s_on = mask_history(monkeypatch, [*overrides, "cuda_graphs=on"], tmp_path / "on")
    assert len(off) >= 3 and on == off
    assert s_on["cuda_graphs_capture_s"] > 0 and s_off["cuda_graphs_capture_s"] == 0
    assert s_on["cuda_graphs"] == "on" and s_off["cuda_graphs"] == "off"  # "fallback: ..." if a capture failed
    assert abs(s_on["final_acc"] - s_off["final_acc"]) < 0.05
    assert s_on["train_flops"] == s_off["train_flops"]


def test_cuda_train_peak_memory_falls_with_freezing(tmp_path):
    overrides = quick_overrides("device=cuda", "epochs=8", "interval=1", "freeze=0.12", "model.depth=20")
    run_training(overrides, tmp_path)
    records = read_metrics(tmp_path)
    unfrozen = [r["memory/train_peak"] for r in records if r["freeze/frozen_blocks"] == 0]
    deepest = max(r["freeze/frozen_blocks"] for r in records)
    frozen = [r["memory/train_peak"] for r in records if r["freeze/frozen_blocks"] == deepest]
    assert deepest > 0 and max(frozen) < min(unfrozen)
