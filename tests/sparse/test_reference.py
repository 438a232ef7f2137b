"""Each method as its reference code runs it: which layers are masked, the step clock of step-based
schedules, the ITOP row, and the small details of each update. Every test names the reference it pins
(repository and file) in its docstring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.models import build_model
from spfde.sparse.grasp import fetch_per_class
from spfde.sparse.masks import Masks, weight_layers
from spfde.sparse.snfs import capped_growth
from spfde.training.cost import CostModel
from spfde.training.freeze import frozen_prefix_forward
from spfde.training.schedule import lr_at
from tests.helpers import crash_then_resume, make_cfg, quick_overrides, read_metrics, run_training, summary_core
from tests.sparse.test_sparse import make_method, tiny_net, two_layer_snfs

# ------------------------------------------------------------------------------------ which layers are masked


def model_of(name: str, classes: int = 100, channels: int = 3):
    cfg = make_cfg([f"model={name}"] + (["dataset=cifar100"] if name == "resnet50" else []))
    with torch.device("meta"):
        return build_model(cfg.model, classes, channels)


def masked_of(model, method: str) -> list[str]:
    cfg = make_cfg([f"sparsity={method}"])
    return list(Masks(model, cfg.sparsity.dense_layers, "uniform", cfg.sparsity.masked).layers)


@pytest.mark.slow
def test_mest_masks_what_its_resnet32_and_vgg19_profiles_list():
    """boone891214/MEST profiles/resnet32_cifar/irr/resnet32_0.9.yaml lists the 30 convs layer{1,2,3}.{0..4}.conv{1,2}
    (conv1 commented out; the 1x1 shortcuts and the linear classifier absent: prune_main.py prune_harden skips
    layers without a ratio); profiles/vgg19_cifar/irr/vgg_0.9.yaml lists 15 of VGG-19's 16 convs (features.0
    commented out, the classifier absent)."""
    resnet = model_of("resnet32")
    masked = masked_of(resnet, "mest")
    assert len(masked) == 30 and all(n.endswith(("conv1", "conv2")) and n != "blocks.0.conv" for n in masked)
    assert "blocks.0.conv" not in masked and "blocks.16.fc" not in masked
    assert not [n for n in masked if "shortcut" in n]
    vgg = model_of("vgg19")
    masked = masked_of(vgg, "mest")
    convs = [n for n in weight_layers(vgg) if n.endswith(".conv")]
    assert len(convs) == 16 and masked == convs[1:]  # every conv but the first; the classifier dense


@pytest.mark.slow
def test_rigl_masks_all_but_the_first_layer_and_itop_masks_every_layer():
    """google-research/rigl rigl/imagenet_resnet/imagenet_train_eval.py: first_layer_sparsity 0 (the first conv
    dense), last_layer_sparsity -1 (the classifier sparse), projection shortcuts sparse (resnet_model.py).
    Shiweiliuiiiiiii/In-Time-Over-Parameterization sparselearning/core.py add_module: removes biases and BN
    only, so every conv and linear is masked."""
    resnet50 = model_of("resnet50", classes=1000)
    layers = weight_layers(resnet50)
    assert masked_of(resnet50, "rigl") == layers[1:]
    assert [n for n in layers if "downsample" in n] and layers[-1] == "blocks.17.fc"
    assert masked_of(resnet50, "itop") == layers
    mest = masked_of(resnet50, "mest")  # MEST has no ResNet-50 profile: its CIFAR rule (our choice)
    assert not [n for n in mest if "downsample" in n] and layers[0] not in mest and layers[-1] not in mest


def test_the_earlier_masking_stays_a_named_option():
    """Runs made before masking followed the reference code (every conv and linear but the first) re-run with
    sparsity.masked=all_but_first; sparsity.dense_layers still adds patterns on top of any rule."""
    model = model_of("resnet32")
    cfg = make_cfg(["sparsity=mest", "sparsity.masked=all_but_first", "sparsity.dense_layers=[blocks.16.*]"])
    masked = list(Masks(model, cfg.sparsity.dense_layers, "uniform", cfg.sparsity.masked).layers)
    assert masked == weight_layers(model)[1:-1]


def test_a_bad_masking_rule_is_one_line():
    from spfde.checks.command_line import precheck_overrides
    from spfde.config import ConfigError

    with pytest.raises(ConfigError) as err:
        precheck_overrides(["sparsity.masked=first"])
    assert "sparsity.masked must be one of main_convs, all_but_first, all" in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ the FLOPs of a step


@pytest.mark.parametrize("frozen", [0, 1, 3])
def test_the_cost_of_a_step_is_what_autograd_computes(frozen):
    """torch.utils.flop_counter.FlopCounterMode on a real forward and backward (the paper's convention: conv and
    linear layers only): the first trainable layer's input gradient is never computed, and the cost model
    does not charge it."""
    cfg = make_cfg(quick_overrides())
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, 1).train()
    cost = CostModel(model, (1, 16, 16))
    for block in model.blocks[:frozen]:
        block.requires_grad_(False)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(frozen_prefix_forward(model, x, frozen), y).backward()
    assert counter.get_total_flops() == pytest.approx(4 * cost.step({}, frozen), rel=1e-9)
    assert cost.step({}, frozen) < 3 * cost.dense_forward - 2 * sum(cost.block_forward()[:frozen])


# ------------------------------------------------------------------------------------ one step counter


ONESHOT_RIGL = quick_overrides("sparsity=rigl", "sparsity.rigl.delta_t=5", "epochs=8", "sieve=0.3",
                               "sieve_method=oneshot")


@pytest.mark.slow
def test_rigl_with_a_one_shot_removal_stops_at_three_quarters_of_the_steps_taken(tmp_path, monkeypatch):
    """google-research/rigl rigl/sparse_optimizers_base.py: updates every delta_t steps of the global step until
    end_step, with the drop fraction's cosine over the same steps. The steps are the ones the run takes: a
    one-shot removal shortens the later epochs, and the clock must not jump back. A resume continues it, also
    from a checkpoint written before the count was stored (it holds the steps its epochs were planned to take)."""
    from spfde.training.cost import epoch_batches
    from spfde.training.sieve import sieve_epochs

    summary = run_training(ONESHOT_RIGL, tmp_path / "straight")
    records = read_metrics(tmp_path / "straight")
    cfg = make_cfg(ONESHOT_RIGL)
    batches = [epoch_batches(n, cfg.batch_size) for n in sieve_epochs(cfg, cfg.dataset.train_size)]
    steps = [len(b) for b in batches]
    assert steps[0] > steps[-1] and [r["samples"] for r in records] == [sum(b) for b in batches]
    end = int(0.75 * sum(steps))
    expected = [s for s in range(1, end) if s % 5 == 0]  # step counts at which an update happens
    ends = [sum(steps[:e + 1]) for e in range(len(steps))]
    per_epoch = [sum(1 for s in expected if (ends[e - 1] if e else 0) < s <= ends[e]) for e in range(len(steps))]
    assert [r.get("sparsity/updates", 0) for r in records] == per_epoch
    assert per_epoch[-1] == 0 and per_epoch[-2] == 0  # the last quarter of the steps taken has no update
    resumed = crash_then_resume(ONESHOT_RIGL, tmp_path / "resumed", 5, monkeypatch)
    assert summary_core(resumed) == summary_core(summary)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["steps"] == sum(steps)

    import spfde.rundir.checkpoint

    def without_steps(path, state):
        spfde.rundir.checkpoint.save_checkpoint(path, {k: v for k, v in state.items() if k != "steps"})

    monkeypatch.setattr("spfde.training.loop.save_checkpoint", without_steps)
    older = crash_then_resume(ONESHOT_RIGL, tmp_path / "older", 5, monkeypatch)
    assert "steps" not in torch.load(tmp_path / "older" / "last.pt", weights_only=False)
    assert summary_core(older) == summary_core(summary)


# ------------------------------------------------------------------------------------ the ITOP row


def test_itop_decays_its_death_rate_to_0005_and_updates_to_the_last_step():
    """Shiweiliuiiiiiii/In-Time-Over-Parameterization main.py and sparselearning/core.py: CosineDecay(0.5,
    len(train_loader) * epochs, eta_min=0.005), stepped every iteration; `if self.steps % prune_every_k_steps == 0:
    truncate_weights()` with no end fraction."""
    method, *_ = make_method("itop", "sparsity.itop.delta_t=10", epochs=10, steps_per_epoch=10)
    assert [s for s in range(100) if method.is_update(s)] == [9, 19, 29, 39, 49, 59, 69, 79, 89]
    assert method.fraction(-1) == pytest.approx(0.5)
    assert method.fraction(99) == pytest.approx(0.005)
    assert method.fraction(49) == pytest.approx(0.005 + 0.495 / 2)


def test_the_itop_row_is_what_itops_imagenet_command_ran():
    """Shiweiliuiiiiiii/In-Time-Over-Parameterization README.md (ImageNet, RigL-ITOP): --nproc_per_node 2 -b 64
    (a global batch of 128) --lr 0.1 --warmup 5 --epochs 100 --label-smoothing 0.1 --update_frequency 4000
    --density 0.2; ImageNet/main.py adjust_learning_rate: lr x 0.1 at epochs 30/60/90; ImageNet/core.py
    sparse_init 'ER' = epsilon x sum(weight.shape): the ERK formula."""
    cfg = compose_config(["+sweep=table3", "+sweep/row=itop"])
    validate(cfg)
    assert (cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.warmup_epochs) == (100, 128, 0.1, 5)
    assert cfg.optim.label_smoothing == 0.1 and cfg.sparsity.ratio == 0.8
    assert (cfg.sparsity.name, cfg.sparsity.itop.delta_t, cfg.sparsity.distribution) == ("itop", 4000, "erk")
    assert cfg.sparsity.masked == "all" and cfg.sparsity.itop.end_fraction == 1.0
    lrs = [lr_at(t, cfg.optim, 100) for t in (10, 29.9, 30, 59.9, 60, 90, 99)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.0001, 0.0001])


# ------------------------------------------------------------------------------------ update details


def _one_update(method_name: str, *extra):
    """A layer of 8 weights, 4 active; the update keeps the 2 largest and grows 2 where we say: the position just
    dropped (index 1, value 0.5) and an inactive one (index 5). Momentum is non-zero everywhere before."""
    weight = torch.tensor([[3.0, 0.5, 0.0, 2.0, 0.1, 0.0, 0.0, 0.0]])
    method, model, optimizer = make_method(method_name, "sparsity.ratio=0.5", "sparsity.masked=all", *extra,
                                           model=tiny_net(weight))
    name = "blocks.1.fc"
    method.masks.set_mask(name, weight != 0, optimizer)
    weight_param = model.blocks[1].fc.weight
    optimizer.state[weight_param]["momentum_buffer"] = torch.full_like(weight_param, 0.7)
    grow = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0]])
    method.prune_and_grow(name, keep=2, final=4, prune_score=weight.abs(), grow_score=grow)
    return weight_param.detach(), optimizer.state[weight_param]["momentum_buffer"], method.masks.masks[name]


def test_rigl_keeps_the_value_of_a_weight_dropped_and_grown_back():
    """google-research/rigl rigl/sparse_optimizers_base.py _get_update_op: reinit_when_same=False by default, so
    new_connections excludes positions that were active; only new connections get grow_init (zeros) and a reset
    momentum (reset_momentum)."""
    weight, momentum, mask = _one_update("rigl")
    assert mask.flatten().tolist() == [True, True, False, True, False, True, False, False]
    assert weight[0, 1] == 0.5 and momentum[0, 1] == 0.7  # dropped and grown back: untouched
    assert weight[0, 5] == 0 and momentum[0, 5] == 0  # new: zero, no momentum
    assert momentum[0, 4] == 0  # pruned: no momentum left behind


def test_set_restarts_a_weight_dropped_and_grown_back():
    """dcmocanu/sparse-evolutionary-artificial-neural-networks SET-MLP-Keras-Weights-Mask/set_mlp_keras_cifar10.py
    rewireMask/weightsEvolution: the weights are multiplied by the core mask (the survivors), so a removed position
    added again starts at zero like any new one."""
    weight, momentum, mask = _one_update("set")
    assert weight[0, 1] == 0 and momentum[0, 1] == 0
    assert weight[0, 5] == 0 and momentum[0, 5] == 0


def test_mest_restarts_a_weight_dropped_and_grown_back_and_leaves_momentum_alone():
    """boone891214/MEST prune_utils/retrain.py update_mask: W.mul_(pruned_mask) before weight_growing, which picks
    among np.where(weight == 0) (utils_pr.py), so a just-pruned weight picked again restarts at zero; nothing in
    prune_utils/ or main_sparse_train.py touches the optimizer's momentum_buffer."""
    weight, momentum, mask = _one_update("mest")
    assert weight[0, 1] == 0 and weight[0, 5] == 0
    assert torch.all(momentum == 0.7)  # pruned, grown and restarted positions keep their momentum


def test_grasp_scores_exactly_its_samples_per_class_in_class_order():
    """alecwangcq/GraSP pruner/GraSP.py GraSP_fetch_data: take samples from the loader's batches until every class
    has exactly samples_per_class, concatenated class by class; GraSP then scores the first and second half."""
    y = torch.tensor([2, 0, 0, 1, 2, 0, 2, 1, 1, 0])
    x = torch.arange(10.0).view(10, 1)
    batches = iter([(x[:4], y[:4], None), (x[4:], y[4:], None), (x, y, None)])
    xs, ys = fetch_per_class(batches, num_classes=3, per_class=2)
    assert ys.tolist() == [0, 0, 1, 1, 2, 2]
    assert xs.flatten().tolist() == [1.0, 2.0, 3.0, 7.0, 0.0, 4.0]
    assert next(batches)[0] is x  # stopped as soon as every class was full


def test_grasp_ranks_minus_w_hg_over_its_class_ordered_halves():
    """alecwangcq/GraSP pruner/GraSP.py: g is the sum of the two halves' gradients of CE(f(x)/T), Hg the sum of the
    halves' Hessian-vector products with g; the weights with the highest -w⊙Hg are removed."""
    torch.manual_seed(0)
    weight, x = torch.randn(3, 8), torch.randn(16, 8)
    y = torch.tensor([0, 1, 2] * 5 + [0])
    method, model, _ = make_method("grasp", "sparsity.ratio=0.75", "sparsity.masked=all",
                                   "sparsity.grasp.samples_per_class=2", model=tiny_net(weight))
    method.initialize(iter([(x, y, None)]))
    assert method.init_samples == 6
    t = method.cfg.grasp.temperature
    xs, ys = fetch_per_class(iter([(x, y, None)]), 3, 2)
    halves = [(xs[:3], ys[:3]), (xs[3:], ys[3:])]

    def loss(w, xh, yh):
        return F.cross_entropy(xh @ w.view(3, 8).T / t, yh)

    w = weight.flatten()
    g = sum(torch.autograd.functional.jacobian(lambda v, xh=xh, yh=yh: loss(v, xh, yh), w) for xh, yh in halves)
    hg = sum(torch.autograd.functional.hessian(lambda v, xh=xh, yh=yh: loss(v, xh, yh), w) @ g
             for xh, yh in halves)
    expected = torch.zeros(24, dtype=torch.bool)
    expected[(-w * hg).argsort()[:6]] = True
    assert torch.equal(method.masks.masks["blocks.1.fc"].flatten(), expected)


def test_snfs_caps_growth_at_99_percent_and_spreads_the_rest_equally():
    """TimDettmers/sparse_learning sparselearning/core.py calc_growth_redistribution: regrowth = share x removed,
    capped at 0.99 x (zeros + removed); the residual over the caps is spread equally (mean_residual) over every
    layer, repeatedly. The total stays exact here (sparse_learning floors and evens it out later)."""
    # 100 to regrow; shares 0.5/0.3/0.2; layer 0 has 40 free positions: it takes floor(0.99 x 40) = 39, and its
    # 11 over are spread equally over all three (layer 0 capped again) until nothing is left
    assert capped_growth(100, [0.5, 0.3, 0.2], [40, 200, 200]) == [39, 36, 25]
    assert capped_growth(7, [1 / 3] * 3, [100, 100, 100]) == [3, 2, 2]
    assert sum(capped_growth(10, [0.9, 0.1], [10, 1])) == 10  # past the caps only when nothing else can hold it


def test_snfs_lowers_the_prune_rate_of_a_nearly_dense_growing_layer():
    """TimDettmers/sparse_learning sparselearning/core.py adjust_prune_rate: a layer under 20% sparsity whose
    momentum share is above an equal share drops at most its own sparsity."""
    method, net, optimizer = two_layer_snfs(0.5, outputs_b=20)
    a, b = "blocks.0", "blocks.1"
    method.masks.set_mask(a, torch.rand(10, 10) < 2, optimizer)  # a: dense (sparsity 0 < 0.2)
    keep_b = torch.zeros(200, dtype=torch.bool)
    keep_b[:50] = True
    method.masks.set_mask(b, keep_b.view(20, 10), optimizer)  # b: 75% sparse
    method.momentum[a], method.momentum[b] = torch.ones(10, 10), torch.full((20, 10), 0.01)
    with torch.no_grad():
        for n in (a, b):
            method.masks.layers[n].weight.copy_(torch.rand_like(method.masks.layers[n].weight) + 0.1)
    method.epoch_stats()
    method.start_epoch(1)
    stats = method.epoch_stats()
    # a's prune rate: min(its sparsity 0, p) = 0 -> nothing pruned there; b drops ceil(p x 50)
    assert stats["sparsity/pruned/blocks.0"] == 0
    assert stats["sparsity/pruned/blocks.1"] == math.ceil(method.rate(1) * 50)


@pytest.mark.slow
def test_step_schedule_is_validated_in_one_line():
    from spfde.checks.command_line import precheck_overrides
    from spfde.config import ConfigError

    for override, message in (("optim.step_at=[0.6,0.3]", "optim.step_at must be increasing fractions"),
                              ("optim.step_gamma=0", "optim.step_gamma must be in (0, 1]"),
                              ("sparsity=itop sparsity.itop.final_drop_fraction=0.9", "final_drop_fraction")):
        with pytest.raises(ConfigError) as err:
            precheck_overrides(override.split())
        assert message in str(err.value) and "\n" not in str(err.value)
    assert OmegaConf.select(make_cfg(["optim.schedule=step"]), "optim.step_at") == [0.3, 0.6, 0.9]


@pytest.mark.slow
def test_a_run_made_before_the_masking_rule_is_refused_with_the_way_to_resume_it(tmp_path, monkeypatch):
    """A checkpoint from before `sparsity.masked` (its fingerprint has no such key; every conv and linear but
    `sparsity.dense_layers`, default the first conv, was masked) is refused in one line naming the overrides that
    resume it, and resumes with them."""
    from spfde.rundir.lifecycle import RunDirError

    old = quick_overrides("sparsity.masked=all", "sparsity.dense_layers=[blocks.0.conv]", "epochs=2")
    with monkeypatch.context() as m:
        from tests.helpers import crash_at_epoch

        crash_at_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_training(old, tmp_path)
    from spfde.rundir.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["fingerprint"]["sparsity.masked"], ckpt["steps"]
    save_checkpoint(tmp_path / "last.pt", ckpt)
    with pytest.raises(RunDirError) as err:
        run_training(quick_overrides("epochs=2"), tmp_path)
    message = str(err.value)
    assert "\n" not in message and "sparsity.masked=all 'sparsity.dense_layers=[blocks.0.conv]'" in message
    assert run_training(old, tmp_path)["epochs"] == 2
