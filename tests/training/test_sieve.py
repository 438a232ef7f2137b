"""Circular data sieving: the queue, forgetting counts, one-shot removal, and sieving inside runs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from spfde.checks.command_line import precheck_overrides
from spfde.config import ConfigError
from spfde.planning.plan import build_plan
from spfde.training.build import build_run
from spfde.training.distributed import World
from spfde.training.loop import evaluate, resume_or_start, steps_of, train
from spfde.training.sieve import Sieve
from tests.data.test_data import make_image_folder
from tests.helpers import crash_then_resume, make_cfg, quick_overrides, read_metrics, run_training, summary_core


class Loader:
    def set_indices(self, indices):
        self.indices = indices


def make_sieve(n=100, y=0.2, p=0.1, method="circular", interval=2, epochs=60, seed=0):
    cfg = make_cfg(quick_overrides(f"sieve={y}", f"sieve_update={p}", f"sieve_method={method}",
                                   f"interval={interval}", f"epochs={epochs}"))
    return Sieve(cfg, n, torch.device("cpu"), torch.Generator().manual_seed(seed))


def present_partial(sieve, seed):
    """One epoch over the partial set with random correctness."""
    g = torch.Generator().manual_seed(seed)
    sieve.observe(sieve.partial, torch.rand(len(sieve.partial), generator=g) < 0.7)
    sieve.end_epoch()


def test_partial_size_is_constant_and_queue_is_fifo_until_a_full_cycle():
    sieve = make_sieve()
    loader = Loader()
    n = sieve.size
    initial_queue = sieve.queue.tolist()
    assert len(sieve.partial) == 80 and len(sieve.queue) == 20
    came_back, cycle_done_at = [], None
    for epoch in range(40):
        queue_before = sieve.queue.tolist()
        partial_before = set(sieve.partial.tolist())
        sieve.start_epoch(epoch, loader)
        assert torch.equal(loader.indices, sieve.partial)
        assert len(sieve.partial) == 80 and len(sieve.queue) == 20
        assert set(sieve.partial.tolist()).isdisjoint(sieve.queue.tolist())
        assert set(sieve.partial.tolist()) | set(sieve.queue.tolist()) == set(range(n))
        if epoch > 0 and epoch % 2 == 0:
            back = [i for i in queue_before if i in set(sieve.partial.tolist())]
            left = [i for i in partial_before if i in set(sieve.queue.tolist())]
            assert back == queue_before[:len(back)]  # taken from the head
            came_back += back
            if set(initial_queue) <= set(came_back):
                if cycle_done_at is None:
                    cycle_done_at = epoch
                    assert bool(sieve.used.all())  # every sample used by the end of the first cycle
            else:  # before the first full cycle: plain FIFO
                assert set(sieve.queue.tolist()[-len(left):]) == set(left)  # appended at the tail
                assert sieve.queue.tolist()[:-len(left)] == queue_before[len(back):]  # the rest keeps its order
        present_partial(sieve, epoch)
    assert cycle_done_at is not None
    # after the first cycle the queue is shuffled after every update: no longer FIFO
    queue_before = sieve.queue.tolist()
    sieve.start_epoch(40, loader)
    survivors = [i for i in queue_before if i in set(sieve.queue.tolist())]
    assert [i for i in sieve.queue.tolist() if i in set(survivors)] != survivors


def test_forgetting_counts_on_a_scripted_sequence():
    sieve = make_sieve(n=5)
    idx = torch.tensor([0, 1, 2, 3])
    script = [[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [0, 1, 1, 0]]
    for row in script:  # sample 0: T F T F (2 events), 1: F T T T (0), 2: T T F T (1), 3: T F T F (2)
        sieve.observe(idx, torch.tensor(row, dtype=torch.bool))
        sieve.end_epoch()  # an epoch's observations are folded in at its end
    assert sieve.forgets.tolist() == [2, 0, 1, 2, 0]
    assert sieve.learned.tolist() == [True, True, True, True, False]
    hardness = sieve.hardness(torch.arange(5))
    assert hardness[:4].tolist() == [2, 0, 1, 2] and hardness[4] == float("inf")  # never learned: hardest
    sieve.new_window()  # counts restart every Δτ window; the first presentation cannot be an event
    sieve.observe(idx, torch.tensor([0, 0, 0, 0], dtype=torch.bool))
    sieve.end_epoch()
    assert sieve.forgets.tolist() == [0, 0, 0, 0, 0]


def test_circular_removes_the_easiest_and_random_does_not_look():
    sieve = make_sieve(n=50, y=0.2, p=0.25, interval=1)
    partial = sieve.partial.clone()
    counts = torch.zeros(50, dtype=torch.int32)
    counts[partial] = torch.arange(len(partial), dtype=torch.int32) % 7 + 1
    sieve.forgets.copy_(counts)
    sieve.learned[:] = True
    easiest_order = sorted(partial.tolist(), key=lambda i: int(counts[i]))
    sieve.start_epoch(1, Loader())
    left = set(partial.tolist()) - set(sieve.partial.tolist())
    assert len(left) == 10
    assert max(int(counts[i]) for i in left) <= min(int(counts[i]) for i in set(partial.tolist()) - left)
    assert left <= set(easiest_order[:20])


@pytest.mark.slow
def test_runs_are_deterministic_and_resume_exactly():
    a, b = make_sieve(seed=3), make_sieve(seed=3)
    loader = Loader()
    for epoch in range(12):
        for s in (a, b):
            s.start_epoch(epoch, loader)
            present_partial(s, epoch)
    assert torch.equal(a.partial, b.partial) and torch.equal(a.queue, b.queue)
    c = make_sieve(seed=99)
    c.load_state_dict(a.state_dict())
    for epoch in range(12, 30):
        for s in (a, c):
            s.start_epoch(epoch, loader)
            present_partial(s, epoch)
        assert torch.equal(a.partial, c.partial) and torch.equal(a.queue, c.queue)
        assert torch.equal(a.forgets, c.forgets)


def test_oneshot_removes_exactly_the_easiest_after_its_epoch():
    sieve = make_sieve(n=40, y=0.25, method="oneshot", epochs=16)  # removal at epoch int(0.4375 * 16) = 7
    assert len(sieve.partial) == 40 and len(sieve.queue) == 0  # the full set until then
    loader = Loader()
    counts = torch.randperm(40, generator=torch.Generator().manual_seed(1)).int()  # distinct counts
    for epoch in range(7):
        sieve.start_epoch(epoch, loader)
        assert len(loader.indices) == 40
    sieve.forgets.copy_(counts)
    sieve.learned[:] = True
    sieve.start_epoch(7, loader)
    assert set(sieve.queue.tolist()) == set(torch.argsort(counts)[:10].tolist())
    assert len(sieve.partial) == 30
    for epoch in range(8, 16):
        sieve.start_epoch(epoch, loader)
        assert len(sieve.partial) == 30 and set(sieve.queue.tolist()) == set(torch.argsort(counts)[:10].tolist())


def test_bad_sieve_values_fail_before_training():
    with pytest.raises(ConfigError, match="sieve must be in"):
        precheck_overrides(["sieve=1.0"])
    with pytest.raises(ConfigError, match="fewer than one batch"):
        precheck_overrides(["experiment=quickstart", "sieve=0.98"])
    with pytest.raises(ConfigError, match="sieve_method"):
        precheck_overrides(["sieve=0.2", "sieve_method=fifo"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["circular", "oneshot", "random"])
def test_sieved_runs_draw_from_the_partial_set_and_count_their_flops(method, tmp_path):
    overrides = quick_overrides("epochs=6", "interval=2", "sieve=0.3", f"sieve_method={method}", "freeze=0.05")
    plan = build_plan(make_cfg(overrides))
    summary = run_training(overrides, tmp_path)
    assert summary["train_flops"] == pytest.approx(plan["train_flops"], rel=1e-3)
    records = read_metrics(tmp_path)
    n = make_cfg(overrides).dataset.train_size
    partial = n - round(0.3 * n)
    samples = [r["samples"] for r in records]
    if method == "oneshot":  # removal at epoch int(0.4375 * 6) = 2
        assert samples == [n, n, partial, partial, partial, partial]
    else:
        assert samples == [partial] * 6
        assert records[2]["sieve/swapped"] == round(0.1 * partial)
    assert summary["flops_saved_sieving"] > 0 and summary["flops_saved_freezing"] > 0
    assert 0 < summary["sieve_seen_fraction"] <= 1


@pytest.mark.slow
def test_sieved_run_resumes_exactly(tmp_path, monkeypatch):
    overrides = quick_overrides("epochs=5", "interval=2", "sieve=0.2")
    straight = run_training(overrides, tmp_path / "straight")
    resumed = crash_then_resume(overrides, tmp_path / "resumed", 3, monkeypatch)
    assert summary_core(straight) == summary_core(resumed)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["sieve"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["sieve"]
    for key in ("partial", "queue", "forgets", "used"):
        assert torch.equal(a[key], b[key]), key
    strip = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(tmp_path / "straight")]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("time/")}
                     for r in read_metrics(tmp_path / "resumed")]


@pytest.mark.slow
def test_mission_command_builds_resnet50_on_an_image_folder_and_takes_a_step(tmp_path):
    """The mission command at scale, one step: ImageNet's setup (Table 3) composes on an image folder, the
    real ResNet-50 is built with MEST's masks at 80%, its freeze plan reaches 20%, and one training step and
    one evaluation (top-5 included) run on the folder's images. The whole pipeline on an image folder trains
    in the test below at a small depth; a ResNet-50 run end to end is `bench data`'s and the user's."""
    root = make_image_folder(tmp_path / "imagenet", classes=6, per_class=5, size=40)
    overrides = ["model=resnet50", "sieve=0.2", "freeze=0.2", f"dataset.root={root}", "dataset.num_classes=6",
                 "dataset.image_size=32", "dataset.workers=0", "batch_size=8", "epochs=11", "interval=1"]
    cfg = make_cfg(overrides, tmp_path / "run")
    assert (cfg.dataset.name, cfg.sparsity.name, cfg.sparsity.ratio) == ("imagenet", "mest", 0.8)  # Table 3 setup
    run = build_run(cfg, tmp_path / "run")
    assert run.freeze_plan.saving >= 0.2 and max(run.freeze_plan.frozen) > 0  # freeze=0.2 is reachable
    state = resume_or_start(run, {}, None, tmp_path / "run" / "last.pt", World())
    assert run.method.masks.overall_sparsity() == pytest.approx(0.8, abs=1e-3)
    train_step, eval_batches = steps_of(cfg, run, state, True, World())
    train_step.begin_epoch()
    x, y, idx = next(iter(run.data.train))
    x, y = run.rt.batch(x, y)
    train_step(x, y, run.rt.indices(idx), t=0.0, samples=len(y))
    assert train_step.steps == 1 and len(y) == 8 and train_step.loss_sum.item() > 0
    assert run.data.train.dataset_size == 30 and len(run.data.train.batch_sizes()) == 3  # 24 of 30 images
    assert run.method.masks.overall_sparsity() == pytest.approx(0.8, abs=1e-3)
    test_stats = evaluate(run.model, run.data.test, run.rt, True, eval_batches)
    assert 0 <= test_stats["test/acc"] <= test_stats["test/acc5"] <= 1


@pytest.mark.slow
def test_mission_command_trains_on_an_image_folder_at_a_small_depth(tmp_path):
    """The mission's three dimensions on an image folder (ImageNet's recipe and loader), end to end: every
    epoch draws the sieved 24 of 30 images, blocks freeze, top-5 is logged, the masks end at 80%."""
    root = make_image_folder(tmp_path / "imagenet", classes=6, per_class=5, size=40)
    overrides = ["model=resnet32", "model.depth=8", "dataset=imagenet", "sieve=0.2", "freeze=0.2",
                 f"dataset.root={root}", "dataset.num_classes=6", "dataset.image_size=32", "dataset.workers=0",
                 "batch_size=8", "epochs=11", "interval=1"]
    cfg = make_cfg(overrides, tmp_path / "run")
    assert (cfg.dataset.name, cfg.sparsity.name, cfg.sparsity.ratio) == ("imagenet", "mest", 0.8)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    summary = train(cfg)
    records = read_metrics(tmp_path / "run")
    assert [r["samples"] for r in records] == [24] * 11  # 30 images, 20% kept out
    assert max(r["freeze/frozen_blocks"] for r in records) > 0
    assert "test/acc5" in records[-1] and summary["final_sparsity"] == pytest.approx(0.8, abs=1e-3)
