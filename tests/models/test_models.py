"""Models: the registry, block lists, parameter counts, one training step each on FakeData."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spfde.data import build_data
from spfde.models import MODELS, build_model
from tests.helpers import make_cfg


def test_paper_resnet32_is_2x_wide_with_projection_shortcuts():
    model = build_model(make_cfg([]).model, num_classes=100, channels=3)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 1.87e6) < 0.01e6
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted({c.out_channels for c in convs}) == [32, 64, 128]
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2  # the two stage transitions
    assert model.block_names[0] == "stem" and model.block_names[-1] == "head" and len(model.blocks) == 17


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_a_training_step_on_fake_data(name):
    size = 64 if name == "resnet50" else 32
    cfg = make_cfg([f"model={name}", "dataset=fake", f"dataset.image_size={size}", "dataset.train_size=8",
                    "dataset.test_size=4", "batch_size=8"])
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    model = build_model(cfg.model, data.num_classes, data.channels)
    assert model.block_names[0] == "stem" and model.block_names[-1] == "head"
    assert isinstance(model.blocks[0].conv, torch.nn.Conv2d)  # the paper's dense first layer
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y, _ = next(iter(data.train))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if b.grad is not None)
    # running the blocks one by one is the model's forward
    model.eval()
    h = x
    for block in model.blocks:
        h = block(h)
    assert torch.allclose(h, model(x))


@pytest.mark.slow
def test_models_accept_small_grayscale_inputs():
    for name in sorted(MODELS):
        cfg = make_cfg([f"model={name}", "dataset=digits"])
        model = build_model(cfg.model, num_classes=10, channels=1).eval()
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
