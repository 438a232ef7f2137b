"""Config composition and validation: every preset composes, bad values fail with one line."""

from __future__ import annotations

import pytest

from spfde.config import ConfigError, precheck_overrides, run_name
from tests.conftest import experiment_names, group_options, make_cfg, run_cli


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_composes_and_validates(name):
    cfg = make_cfg([f"experiment={name}"])
    assert cfg.experiment_name == name


@pytest.mark.parametrize("group", ["model", "dataset", "optim", "logger", "sparsity"])
def test_every_group_option_composes(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if option == "imagefolder":
            overrides.append("dataset.root=/somewhere")
        cfg = make_cfg(overrides)
        assert cfg[group].name == option


def test_default_is_paper_cifar100_setup():
    cfg = make_cfg([])
    assert (cfg.dataset.name, cfg.model.name, cfg.model.width) == ("cifar100", "resnet32", 2)
    assert (cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (160, 64, 0.1, 1e-4)
    assert (cfg.sparsity.name, cfg.sparsity.ratio, cfg.sparsity.mest.mode, cfg.interval) == ("mest", 0.9, "ems", 5)


def test_model_picks_its_paper_dataset_unless_told_otherwise():
    cfg = make_cfg(["model=resnet50"])
    assert (cfg.dataset.name, cfg.epochs, cfg.dataset.image_size) == ("imagenet", 150, 224)
    assert (cfg.optim.warmup_epochs, cfg.optim.label_smoothing, cfg.batch_size) == (5, 0.1, 256)
    assert (cfg.sparsity.name, cfg.sparsity.ratio) == ("mest", 0.8)  # paper Table 3
    assert make_cfg(["model=resnet50", "sparsity=rigl"]).sparsity.ratio == 0.8
    assert make_cfg(["model=resnet50", "dataset=fake"]).dataset.name == "fake"
    assert make_cfg(["experiment=quickstart", "model=resnet50"]).dataset.name == "digits"


BAD = {
    "optim.lr=-1": "optim.lr must be > 0",
    "batch_size=0": "batch_size must be >= 1",
    "epochs=0": "epochs must be >= 1",
    "model.name=foo": "model.name='foo' is unknown",
    "model=foo": "model=foo is not an option",
    "dataset=nope": "dataset=nope is not an option",
    "epochs=abc": "could not be converted to Integer",
    "nokey=1": "Could not override 'nokey'",
    "optim.momentum=1.5": "optim.momentum must be in [0, 1)",
    "model.depth=33": "not a CIFAR ResNet depth",
    "device=gpu": "device='gpu' is not one of",
    "precision=fp8": "precision must be auto, fp32 or bf16",
    "optim.warmup_epochs=500": "optim.warmup_epochs must be in",
}


@pytest.mark.parametrize("override", sorted(BAD))
def test_bad_override_is_one_clear_line(override):
    with pytest.raises(ConfigError) as err:
        precheck_overrides([override])
    message = str(err.value)
    assert BAD[override] in message
    assert "\n" not in message


@pytest.mark.slow
def test_cli_rejects_bad_values_before_any_work(tmp_path):
    for override, expected in [("optim.lr=-1", "optim.lr must be > 0"), ("model=foo", "model=foo")]:
        proc = run_cli([override], cwd=tmp_path)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spfde: error:") and expected in lines[0]
    assert not (tmp_path / "outputs").exists()  # no run directory, no data, no model


def test_run_name_is_deterministic_and_safe():
    assert run_name("") == "default"
    assert run_name("dataset.root=/a/b,epochs=3") == "dataset.root=_a_b,epochs=3"
    long = ",".join(f"k{i}=v{i}" for i in range(60))
    assert run_name(long) == run_name(long) and len(run_name(long)) <= 111
    assert run_name(long) != run_name(long + ",x=1")
