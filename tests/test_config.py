"""Config composition and validation: every preset composes, bad values fail with one line."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from spfde.checks.command_line import precheck_overrides
from spfde.config import USER_CONFIG_ENV, ConfigError, compose_config, run_name
from tests.helpers import experiment_names, group_options, make_cfg, run_cli


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_composes_and_validates(name):
    cfg = make_cfg([f"experiment={name}"])
    assert cfg.experiment_name == name


@pytest.mark.slow
@pytest.mark.parametrize("group", ["model", "dataset", "optim", "logger", "sparsity"])
def test_every_group_option_composes(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if option == "imagefolder":
            overrides.append("dataset.root=/somewhere")
        cfg = make_cfg(overrides)
        assert cfg[group].name == option


def test_a_kept_composition_is_a_copy_that_follows_the_config_files_and_the_working_directory(tmp_path, monkeypatch):
    user = tmp_path / "user"
    (user / "experiment").mkdir(parents=True)
    mine = user / "experiment" / "mine.yaml"
    mine.write_text("# @package _global_\nepochs: 3\n")
    monkeypatch.setenv(USER_CONFIG_ENV, str(user))
    first = compose_config(["experiment=mine"], with_hydra=True)
    first.epochs = 99  # the caller's copy
    again = compose_config(["experiment=mine"], with_hydra=True)
    plain = compose_config(["experiment=mine"])
    assert again.epochs == 3 and "hydra" not in plain
    assert OmegaConf.to_container(plain) == {k: v for k, v in OmegaConf.to_container(again).items() if k != "hydra"}
    mine.write_text("# @package _global_\nepochs: 4\n")  # the same size, maybe the same modification time
    assert compose_config(["experiment=mine"]).epochs == 4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert compose_config(["experiment=mine"], with_hydra=True).hydra.runtime.cwd == str(elsewhere)
    monkeypatch.delenv(USER_CONFIG_ENV)
    with pytest.raises(Exception, match="Could not find 'experiment/mine'"):  # gone with its directory
        compose_config(["experiment=mine"])


@pytest.mark.slow
def test_a_sweeps_jobs_made_from_one_kept_composition_equal_their_own_compositions(monkeypatch):
    """A job that differs from a kept composition only in plain values is that composition with those values set:
    the same config as Hydra composes for it, for jobs of every preset and of a command-line sweep. Where the
    order of the values could matter, or a value does not fit, it is composed (and Hydra's error is raised)."""
    import spfde.config
    from spfde.checks.validation import sweep_jobs

    def full(job):
        with monkeypatch.context() as m:
            m.setattr(spfde.config, "COMPOSED_KEPT", 0)
            return compose_config(job)

    made = 0
    for sweep in [*(f"+sweep={name}" for name in group_options("sweep")),
                  "experiment=quickstart optim.lr=0.1,1e-2 sparsity.ratio=0.8,0.95 freeze=0,0.25 seed=0,1",
                  "experiment=quickstart sparsity=rigl,set sparsity.rigl.delta_t=10,20 optim.lr=${optim.momentum},0.5"]:
        jobs, _ = sweep_jobs(sweep.split())
        spfde.config.COMPOSED.clear()
        first = compose_config(jobs[0])
        for job in jobs[1::max(1, len(jobs) // 2)]:
            derived = spfde.config.with_values_set(spfde.config.compose_key(job))
            made += derived is not None
            assert OmegaConf.to_yaml(compose_config(job)) == OmegaConf.to_yaml(full(job)), job
            assert compose_config(job) == full(job) and compose_config(job) is not compose_config(job), job
        assert OmegaConf.to_yaml(compose_config(jobs[0])) == OmegaConf.to_yaml(first)  # the kept one is untouched
    assert made >= 10
    # an order that decides the value: the last optim.lr wins, as in Hydra
    compose_config(["experiment=quickstart", "optim.lr=0.3", "optim.lr=0.2"])
    assert compose_config(["experiment=quickstart", "optim.lr=0.1", "optim.lr=0.2"]).optim.lr == 0.2
    # a section, a value given to a section's key, a group: composed
    kept = ["experiment=quickstart", "optim.lr=0.1", "model.depth=8"]
    compose_config(kept)
    for other in (["experiment=quickstart", "optim={lr:0.2}", "model.depth=8"],
                  ["experiment=quickstart", "optim.lr=0.1", "model=resnet50"],
                  ["experiment=quickstart", "optim.lr=0.1", "model.depth=[8]"],
                  ["experiment=quickstart", "optim.lr=0.1", "sparsity.mest={lambda_grad:0.5}"],
                  ["experiment=quickstart", "optim.lr=0.1", "freeze=0.1"]):  # where the kept one set model.depth
        assert spfde.config.with_values_set(spfde.config.compose_key(other)) is None, other
    compose_config(["experiment=quickstart", "sparsity.mest={mode:em}"])  # a section: merged into, not replaced
    assert compose_config(["experiment=quickstart", "sparsity.mest={lambda_grad:0.5}"]).sparsity.mest.mode == "ems"
    compose_config(["experiment=quickstart", "model=resnet50"])
    assert compose_config(["experiment=quickstart", "epochs=3"]).model.name == "resnet32"
    with pytest.raises(Exception, match="Error merging override freeze=abc"):
        compose_config(["experiment=quickstart", "freeze=abc", "model.depth=8"])


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


# ----------------------------------------------------------------------------- one home for each default

def _flat(node, prefix=""):
    from omegaconf import DictConfig

    for key, value in node.items():
        if isinstance(value, (dict, DictConfig)):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _option_files():
    """(group, file, is_global) of every config-group option under conf/, sweeps and launchers aside
    (those set Hydra's own keys and whole table rows)."""
    from spfde.config import CONF_DIR

    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        group = path.parent.name
        if group in ("sweep", "launcher"):
            continue
        yield group, path, "@package _global_" in path.read_text().split("\n", 3)[0]


def test_no_option_file_repeats_a_schema_default():
    """A default lives in the schema or in a group's option file, never both: a YAML value equal to the
    schema's default would silently win over a later change of the schema."""
    from omegaconf import OmegaConf

    from spfde.config import Config

    schema = OmegaConf.structured(Config)
    repeats = []
    for group, path, is_global in _option_files():
        data = OmegaConf.to_container(OmegaConf.load(path))
        data.pop("defaults", None)
        for key, value in _flat(data, "" if is_global else f"{group}."):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(schema, parent) if parent else schema
            if node is None or leaf not in node or OmegaConf.is_missing(node, leaf):
                continue
            if node[leaf] == value:
                repeats.append(f"{path.relative_to(path.parent.parent)}: {key}={value}")
    assert not repeats, "option files repeat schema defaults: " + "; ".join(repeats)


@pytest.mark.slow
@pytest.mark.parametrize("group", ["dataset", "model", "optim", "logger", "freeze_scheme", "sparsity"])
def test_every_option_sets_its_groups_own_keys(group):
    """The keys the schema leaves to a group (`???`) are set by every option of the group (a method's
    options only by that method)."""
    from omegaconf import OmegaConf

    for option in group_options(group):
        overrides = [f"{group}={option}"] + (["dataset.root=/x"] if option == "imagefolder" else [])
        cfg = make_cfg(overrides)
        node = cfg[group]
        missing = [k for k in node if OmegaConf.is_missing(node, k)]
        if group == "sparsity":
            missing += [f"{option}.{k}" for k in node[option] if OmegaConf.is_missing(node[option], k)] \
                if option in node else []
        assert not missing, f"{group}={option} leaves {missing} unset"


def test_configuration_reference_table_agrees_with_the_defaults():
    """Every default the hand-written table of docs/configuration.md states (`key` (value), `key` value, or a row's
    own default) is the composed default's value."""
    import re
    from pathlib import Path

    from omegaconf import OmegaConf

    from spfde.config import compose_config

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    table = page.split("## Every key", 1)[0]  # the generated table below it is checked in tests/test_docs.py
    cfg = compose_config([])  # as a user gets it (the tests' make_cfg sets a few keys of its own)
    literal = r"(-?[0-9][0-9.e+-]*|true|false)"

    def same(key, text):
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        assert value is not None, f"docs/configuration.md names `{key}`, which the config does not have"
        expected = str(value).lower() if isinstance(value, bool) else value
        stated = text.strip("`").lower() if text.strip("`") in ("true", "false") else type(value)(text.strip("`"))
        assert stated == expected, f"docs/configuration.md says {key} = {text}, the default is {value}"

    checked = 0
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([a-z_.]+)`", cells[0])
        group = keys[0].split(".")[0]
        values = [v.strip() for v in cells[1].split(",")]
        if len(keys) == len(values) and all(re.fullmatch(r"`?" + literal + r"`?|`[a-z_]+`", v) for v in values):
            for key, value in zip(keys, values):
                if OmegaConf.select(cfg, key) is not None and not isinstance(OmegaConf.select(cfg, key), dict):
                    same(key, value)
                    checked += 1
        for cell in cells[1:]:
            for key, value in re.findall(r"`([a-z_.]+)` \(?" + literal + r"\)?(?![\w/])", cell):
                full = key if "." in key else f"{group}.{key}"
                if OmegaConf.select(cfg, full, throw_on_missing=False) is not None:
                    same(full, value)
                    checked += 1
    assert checked >= 30, f"only {checked} stated defaults found: has the table's format changed?"
