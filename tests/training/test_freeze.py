"""Progressive layer freezing: plan (Alg. 1), schemes, applying a freeze, per-block LR."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import spfde.training.loop
from spfde.checks.command_line import precheck_overrides
from spfde.config import ConfigError
from spfde.models import build_model
from spfde.planning.plan import build_plan
from spfde.training.freeze import FreezeError, FreezePlan, Freezer, candidate_blocks, frozen_prefix_forward
from spfde.training.schedule import lr_at
from tests.helpers import (
    crash_then_resume,
    make_cfg,
    quick_overrides,
    read_metrics,
    run_cli,
    run_training,
    summary_core,
)

SCHEMES = ["single_shot", "resume", "periodic", "delayed"]


def test_candidates_cover_two_thirds_of_the_layers():
    model = build_model(make_cfg([]).model, 100, 3)
    assert candidate_blocks(model, 2 / 3) == 11  # stem + stages 1 and 2: 22 of 35 conv/linear layers
    assert candidate_blocks(model, 1.0) == 16  # never the head
    vgg = build_model(make_cfg(["model=vgg19"]).model, 100, 3)
    assert candidate_blocks(vgg, 2 / 3) == 11  # 11 of the 17 layers (16 conv + fc)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("x", [0.1, 0.2])
def test_planned_saving_reaches_target_within_one_interval_step(scheme, x):
    plan = build_plan(make_cfg([f"freeze={x}", f"freeze_scheme={scheme}"]))
    saving = plan["freeze"]["planned_saving"]
    base = plan["train_flops_no_freeze_sieve"] - plan["init_flops"]
    # one Δτ step: Δτ epochs with every candidate frozen (the most any Δτ shift can change)
    per_epoch = max(e["flops"] for e in plan["schedule"])
    full = min(e["flops"] for e in plan["schedule"])
    one_step = 5 * (per_epoch - full) / base
    assert x <= saving < x + one_step
    # solved on back-propagation saved; the FLOPs total also has MEST's frozen blocks at their target density
    total = plan["freeze"]["planned_flops_saving"]
    assert total >= saving
    assert plan["train_flops"] == pytest.approx(plan["train_flops_no_freeze_sieve"] * (1 - total), rel=1e-6)
    events = plan["freeze"]["events"]
    frozen = set()
    for ev in events:  # strictly in forward order: only the next block freezes, only the last one releases
        if ev["action"] == "freeze":
            assert ev["index"] == len(frozen)
            frozen.add(ev["index"])
        else:
            assert ev["index"] == max(frozen)
            frozen.remove(ev["index"])


def test_single_shot_is_the_latest_start():
    cfg = make_cfg(["freeze=0.2"])
    plan = build_plan(cfg)
    start = plan["freeze"]["parameter"]
    later = build_plan(make_cfg(["freeze=0.2", "freeze_scheme=resume", "freeze_scheme.resume_fraction=0.01"]))
    # synced to MEST's updates (every 5 epochs): 59 reaches x = 0.2 by back-propagation saved, 60 does not
    assert start == 55 and [e["epoch"] for e in plan["freeze"]["events"]] == list(range(55, 110, 5))
    assert later["freeze"]["parameter"] <= start  # the resume variant must start earlier (or as early)


@pytest.mark.parametrize("x, synced, free", [(0.2, 55, 59), (0.25, 40, 42)])
def test_start_is_solved_on_back_propagation_saved(x, synced, free):
    """Paper Alg. 1: a frozen block saves its sparse back-propagation. Crediting also MEST's pruning of the
    frozen block to its target density (cheaper forwards) would give T_frz = 60 / 44 instead of 59 / 42."""
    plan = build_plan(make_cfg([f"freeze={x}", "freeze_sync=false"]))
    assert plan["freeze"]["parameter"] == free
    f = plan["freeze"]
    assert x <= f["planned_saving"] < f["planned_flops_saving"]
    assert build_plan(make_cfg([f"freeze={x}"]))["freeze"]["parameter"] == synced


@pytest.mark.slow
def test_freeze_events_fall_on_structure_update_epochs():
    plan = build_plan(make_cfg(["sieve=0.2", "freeze=0.2"]))
    epochs = [e["epoch"] for e in plan["freeze"]["events"]]
    assert epochs and all(e > 0 and e % 5 == 0 for e in epochs)
    assert plan["freeze"]["planned_saving"] >= 0.2  # the saving it reaches, above the target
    for scheme in ("resume", "periodic", "delayed"):
        events = build_plan(make_cfg(["freeze=0.2", f"freeze_scheme={scheme}"]))["freeze"]["events"]
        assert all(ev["epoch"] % 5 == 0 for ev in events if ev["action"] == "freeze"), scheme
    with pytest.raises(ConfigError, match="multiple of interval"):
        precheck_overrides(["freeze=0.2", "freeze_scheme=periodic", "freeze_scheme.period=3"])


@pytest.mark.slow
def test_unreachable_target_is_rejected_with_the_largest_reachable(tmp_path):
    with pytest.raises(FreezeError) as err:
        run_training(quick_overrides("freeze=0.9", "interval=1"), tmp_path)
    message = str(err.value)
    assert "use freeze <= 0." in message and "\n" not in message
    assert not (tmp_path / "metrics.jsonl").exists()
    proc = run_cli(["experiment=quickstart", "freeze=0.9"], cwd=tmp_path, module="spfde.plan")
    assert proc.returncode == 2 and "use freeze <=" in proc.stderr
    with pytest.raises(ConfigError, match="freeze must be in"):
        precheck_overrides(["freeze=1.5"])
    with pytest.raises(ConfigError, match="sparsity=lth"):
        precheck_overrides(["sparsity=lth", "freeze=0.1"])


def test_per_block_lr_follows_cosine_over_own_active_epochs():
    cfg = make_cfg(["epochs=20"])
    model = build_model(cfg.model, 100, 3)
    frozen = [0] * 8 + [1] * 4 + [2] * 8  # block 0 frozen from epoch 8, block 1 from epoch 12
    plan = FreezePlan("single_shot", 2, frozen, 8, 0.1, None, [])
    from spfde.training.freeze import scheme_options

    freezer = Freezer(model, None, plan, cfg.optim, 20, True, scheme_options(cfg))
    lr, lo = cfg.optim.lr, cfg.optim.min_lr
    for t in [0.0, 1.5, 4.0, 7.99]:
        assert freezer.block_lr(0, t) == pytest.approx(lo + (lr - lo) / 2 * (1 + math.cos(math.pi * t / 8)))
    for t in [0.0, 5.0, 11.5]:
        assert freezer.block_lr(1, t) == pytest.approx(lo + (lr - lo) / 2 * (1 + math.cos(math.pi * t / 12)))
    assert freezer.block_lr(0, 7.999) < 1e-4 * lr  # reaches the minimum as it freezes
    for t in [0.0, 3.3, 19.5]:  # never frozen: the global schedule
        assert freezer.block_lr(5, t) == pytest.approx(lr_at(t, cfg.optim, 20))


def test_frozen_prefix_forward_matches_and_skips_backward():
    model = build_model(make_cfg(quick_overrides()).model, 10, 1).eval()
    x = torch.randn(4, 1, 16, 16)
    full = model(x)
    out = frozen_prefix_forward(model, x, 3)
    assert torch.allclose(out, full)
    out.sum().backward()
    assert all(p.grad is None for p in model.blocks[:3].parameters())
    assert all(p.grad is not None for p in model.blocks[3].parameters())


def snapshots_per_epoch(monkeypatch):
    """Record the model state and masks after every epoch's checkpoint."""
    states = []
    real = spfde.training.loop.save_checkpoint

    def save(path, state):
        states.append({"epoch": state["epoch"], "model": copy.deepcopy(state["model"]),
                       "masks": copy.deepcopy(state["sparsity"]["masks"]["masks"])})
        return real(path, state)

    monkeypatch.setattr(spfde.training.loop, "save_checkpoint", save)
    return states


def block_state(state, block):
    prefix = f"blocks.{block}."
    return {k: v for k, v in state["model"].items() if k.startswith(prefix)} | \
           {k: v for k, v in state["masks"].items() if k.startswith(prefix)}


def assert_frozen_blocks_unchanged(states, frozen_per_epoch):
    for b in range(max(frozen_per_epoch)):
        first = frozen_per_epoch.index(next(k for k in frozen_per_epoch if k > b))  # epoch b gets frozen
        reference = block_state(states[first], b)
        assert any(k.endswith("running_mean") for k in reference)
        for later in states[first + 1:]:
            current = block_state(later, b)
            assert reference.keys() == current.keys()
            assert all(torch.equal(reference[k], current[k]) for k in reference), (b, later["epoch"])


@pytest.mark.slow
def test_frozen_blocks_stay_bit_identical_also_across_a_resume(tmp_path, monkeypatch):
    overrides = quick_overrides("epochs=6", "interval=1", "freeze=0.25")  # depth 8: all 3 candidates freeze
    plan = build_plan(make_cfg(overrides))
    frozen = [e["frozen_blocks"] for e in plan["schedule"]]
    assert frozen == [0, 1, 2, 3, 3, 3]
    states = snapshots_per_epoch(monkeypatch)
    summary = run_training(overrides, tmp_path / "straight")
    assert_frozen_blocks_unchanged(states, frozen)
    assert [r["freeze/frozen_blocks"] for r in read_metrics(tmp_path / "straight")] == frozen
    # the cost meter counts exactly the plan
    assert summary["train_flops"] == pytest.approx(plan["train_flops"], rel=1e-3)
    realised = read_metrics(tmp_path / "straight")[-1]["freeze/saved_share"]
    assert realised == pytest.approx(plan["freeze"]["planned_flops_saving"], rel=1e-3)

    states.clear()
    resumed = crash_then_resume(overrides, tmp_path / "resumed", 5, monkeypatch)  # resumes with 3 blocks frozen
    assert_frozen_blocks_unchanged(states, frozen)
    assert summary_core(resumed) == summary_core(summary)  # memory baseline included


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_runs_and_counts_its_plan(scheme, tmp_path):
    overrides = quick_overrides("epochs=10", "interval=1", "freeze=0.2", f"freeze_scheme={scheme}",
                                "freeze_scheme.period=2", "freeze_scheme.resume_fraction=0.2")
    plan = build_plan(make_cfg(overrides))
    summary = run_training(overrides, tmp_path)
    assert summary["train_flops"] == pytest.approx(plan["train_flops"], rel=1e-3)
    assert summary["final_acc"] > 0.5
    frozen = [r["freeze/frozen_blocks"] for r in read_metrics(tmp_path)]
    assert frozen == [e["frozen_blocks"] for e in plan["schedule"]]
    if scheme == "resume":
        assert frozen[-2:] == [0, 0] and max(frozen) > 0  # released for the fine-tune
    if scheme in ("periodic", "delayed"):
        assert any(a > 0 and b == 0 for a, b in zip(frozen, frozen[1:]))  # released between windows
