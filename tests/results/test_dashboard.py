"""Dashboards in code: the wandb workspace spec of a sweep serialises offline (no API call), holds the
panels and groupings an ablation needs and passes wandb-workspaces' own validation, also for the ad-hoc sweep
names the project makes; runs log to the group the dashboard filters on, with a clean config."""

from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from spfde.config import compose_config, run_name
from spfde.dashboard import main
from spfde.results.dashboard import run_filter, sweep_info
from spfde.run import adhoc_sweep_dir
from spfde.training.build import Runtime
from spfde.training.log import RunLogger, run_tags, wandb_config, wandb_group, wandb_record
from tests.helpers import make_cfg, quick_overrides
from tests.sweeps.test_sweeps import SWEEPS


def dashboard(name: str, cwd, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")  # any API call would fail: the spec must not need one
    main([name])
    return json.loads((cwd / "outputs" / "sweeps" / name / "dashboard.json").read_text())


def panels_of(spec: dict) -> dict[str, list[dict]]:
    sections = spec["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: s.get("panels", []) for s in sections}


def validated(spec: dict):
    """The workspace of a spec through wandb-workspaces' own models (as loading a saved view does), back to JSON."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    workspace = ws.Workspace._from_model(internal.View.model_validate(spec["workspace"]))
    ws.Workspace(entity="e", project="p", name=workspace.name)  # the name check runs on construction
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


@pytest.mark.parametrize("name", ["smoke", "grid_xy"])
def test_sweep_dashboard_spec_names_the_panels_and_groupings(name, tmp_path, monkeypatch):
    spec = dashboard(name, tmp_path, monkeypatch)
    runset = spec["workspace"]["spec"]["section"]["runSets"][0]
    assert [g["name"] for g in runset["grouping"]] == ["freeze.value", "sieve.value"]
    filters = json.dumps(runset["filters"])
    assert f'"value": "{name}"' in filters and '"jobType"' in filters and '"train"' in filters
    # every run of the sweep shows (wandb-workspaces' default is 10: 15 of grid_xy's 25 cells hidden)
    assert spec["runs"] == SWEEPS[name] and spec["workspace"]["spec"]["section"]["settings"]["maxRuns"] == SWEEPS[name]
    sections = panels_of(spec)
    assert set(sections) == {"trade-off", "over epochs", "memory", "per_layer"}
    budget, scatter, parallel = sections["trade-off"]
    # what a budget buys: accuracy against the training FLOPs spent so far (flops/total, cumulative per epoch)
    assert (budget["config"]["xAxis"], budget["config"]["metrics"]) == ("flops/total", ["test/acc"])
    assert scatter["viewType"] == "Scatter Plot"
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == ("summary:train_flops", "summary:final_acc")
    assert parallel["viewType"] == "Parallel Coordinates Plot"
    assert [c["accessor"] for c in parallel["config"]["columns"]] == [  # a nested key as wandb stores it
        "config:freeze.value", "config:sieve.value", "config:sparsity.value.ratio", "summary:final_acc"]
    lines = {m for s in ("over epochs", "memory") for p in sections[s] for m in p["config"]["metrics"]}
    assert {"test/acc", "freeze/frozen_blocks", "sieve/partial_size", "memory/total", "memory/train_peak"} <= lines
    assert all(p["config"]["xAxis"] == "epoch" for s in ("over epochs", "memory", "per_layer") for p in sections[s])
    assert spec["workspace"]["spec"]["section"]["settings"]["xAxis"] == "epoch"
    assert spec["report"]["sections"].keys() == {"trade-off", "over epochs", "memory", "per_layer"}
    validated(spec)


@pytest.mark.slow
def test_per_layer_panels_draw_every_per_layer_series_of_a_run(tmp_path, monkeypatch):
    """One panel per per-layer series; each panel's pattern takes every layer's series as a run logs it to wandb
    (spfde.training.log.wandb_record) and no other series."""
    sections = panels_of(dashboard("smoke", tmp_path, monkeypatch))
    logged = wandb_record({"epoch": 1, "test/acc": 0.5, "sparsity/overall": 0.9, "sparsity/pruned": 3,
                           **{f"{series}blocks.{i}.conv1": 0.1 for i in (1, 2) for series in
                              ("sparsity/layer/", "sparsity/pruned/", "sparsity/grown/", "grad_norm/")}})
    drawn = []
    for panel in sections["per_layer"]:
        assert panel["viewType"] == "Run History Line Plot" and panel["config"]["useMetricRegex"]
        matched = sorted(k for k in logged if re.search(panel["config"]["metricRegex"], k))
        assert len(matched) == 2, (panel["config"]["metricRegex"], matched)  # both layers, nothing else
        drawn += matched
    assert sorted(drawn) == sorted(k for k in logged if k.startswith("per_layer/"))


def adhoc_sweep(args: list[str], cwd) -> str:
    """A directory as `python -m spfde.run -m <args>` makes it (its name from spfde.run.adhoc_sweep_dir, Hydra's
    multirun.yaml with the command line's overrides), without running it."""
    path = cwd / adhoc_sweep_dir(["-m", *args])
    cfg = compose_config([a for a in args if "," not in a], with_hydra=True)
    cfg.hydra.overrides.task = list(args)
    path.mkdir(parents=True)
    OmegaConf.save(cfg, path / "multirun.yaml")
    return str(path.relative_to(cwd))


ADHOC = {  # command line -> jobs
    "grid": (["experiment=quickstart", "freeze=0,0.1", "seed=0,1"], 4),
    "plus": (["experiment=quickstart", "+recipe=paper", "sparsity=rigl,set", "sparsity.ratio=0.9,0.95"], 4),
    "hashed": (["experiment=quickstart", "optim.lr=0.01,0.02,0.03", "optim.weight_decay=0.0001,0.0005",  # a name
                "sparsity.ratio=0.8,0.9", "model.depth=8,14", "sieve_update=0.1,0.2", "freeze_fraction=0.5,0.6"], 96),
}  # too long for a directory: shortened and hashed by run_name


@pytest.mark.parametrize("case", sorted(ADHOC))
def test_dashboards_of_adhoc_sweeps_pass_wandb_workspaces_validation(case, tmp_path, monkeypatch):
    """Ad-hoc sweep names hold '=' and '+', which wandb-workspaces refuses in a name ('Emojis are not allowed')
    and which its filter parser rewrites ('=' -> '=='): the spec is valid and filters on the exact group name."""
    args, jobs = ADHOC[case]
    monkeypatch.chdir(tmp_path)
    directory = adhoc_sweep(args, tmp_path)
    name = directory.rsplit("/", 1)[1]
    assert "=" in name and name == run_name(",".join(sorted(args)))
    main([directory])
    spec = json.loads((tmp_path / directory / "dashboard.json").read_text())
    assert spec["group"] == name  # the sweep directory's name: what its runs log as their wandb group
    model = validated(spec)
    assert model["spec"]["section"]["runSets"][0]["filters"]["filters"][0]["value"] == name
    assert model["displayName"].startswith("SpFDE sweep ") and "=" not in model["displayName"]
    assert spec["runs"] == jobs == spec["workspace"]["spec"]["section"]["settings"]["maxRuns"]


def test_the_filter_keeps_any_group_name_exact():
    """wandb-workspaces' own parser reads the filter back to the group name, whatever characters it holds."""
    from wandb_workspaces import expr

    for group in ("smoke", "epochs=3,freeze=0,0.1", "a<b>c!=d'e\\f", "+recipe=paper,x==y"):
        tree = expr.expr_to_filters(run_filter({"group": group}))
        assert [(f.key.name, f.value) for f in tree.filters] == [("group", group), ("jobType", "train")]


@pytest.mark.slow
def test_groupings_follow_what_the_sweep_varies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_info("freeze_schemes")["varies"].keys() >= {"freeze_scheme.name", "freeze"}
    assert dashboard("freeze_schemes", tmp_path, monkeypatch)["groupby"] == ["freeze", "sieve", "freeze_scheme.name"]
    assert dashboard("sieve_methods", tmp_path, monkeypatch)["groupby"] == ["freeze", "sieve", "sieve_method"]
    assert dashboard("table2", tmp_path, monkeypatch)["groupby"] == ["freeze", "sieve", "sparsity.name",
                                                                      "sparsity.ratio"]


def test_a_directory_that_is_no_sweep_is_a_one_line_error(tmp_path, capsys):
    for target in (str(tmp_path), "no_such_sweep"):
        with pytest.raises(SystemExit) as e:
            main([target])
        assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_wandb_runs_get_a_clean_config_tags_and_collapsed_per_layer_series():
    cfg = make_cfg(quick_overrides("logger=wandb", "freeze=0.1", "freeze_scheme=resume", "sieve=0.2"))
    config = wandb_config(cfg, Runtime(torch.device("cpu"), cfg.precision, channels_last=False))
    assert "???" not in json.dumps(config)
    assert {k for k in config["sparsity"] if isinstance(config["sparsity"][k], dict)} == {"mest"}
    assert config["freeze"] == 0.1 and config["sparsity"]["ratio"] == 0.9
    # what was used, not `auto`; nothing about how it was launched or logged
    assert (cfg.device, cfg.precision, config["device"], config["precision"]) == ("cpu", "auto", "cpu", "fp32")
    assert not {"run_dir", "logger", "progress", "plan", "threads", "fresh"} & set(config)
    assert {"scheme=resume", "sieve_method=circular", "x=0.1", "y=0.2"} <= set(run_tags(cfg))
    # a scheme or sieve method tag only where freezing or sieving is on
    plain = run_tags(make_cfg(quick_overrides("logger=wandb", "freeze_scheme=resume")))
    assert plain == ["method=mest", "ratio=0.9", "x=0", "y=0", "seed=0"]
    record = wandb_record({"epoch": 1, "test/acc": 0.5, "sparsity/overall": 0.9, "sparsity/pruned": 3,
                           "sparsity/layer/blocks.1.conv1": 0.9, "sparsity/pruned/blocks.1.conv1": 3,
                           "grad_norm/blocks.1.conv1": 0.1})
    assert sorted(record) == ["epoch", "per_layer/grad_norm/blocks.1.conv1", "per_layer/sparsity/layer/blocks.1.conv1",
                              "per_layer/sparsity/pruned/blocks.1.conv1", "sparsity/overall", "sparsity/pruned",
                              "test/acc"]


def test_the_readme_spec_of_the_smoke_sweep_is_current(tmp_path, monkeypatch):
    """docs/smoke/dashboard.json (shown in the README) is what spfde.results.dashboard builds today."""
    from tests.helpers import REPO

    def without_ids(node):
        if isinstance(node, dict):
            return {k: without_ids(v) for k, v in node.items() if k != "__id__"}  # random panel ids
        return [without_ids(v) for v in node] if isinstance(node, list) else node

    shown = json.loads((REPO / "docs" / "smoke" / "dashboard.json").read_text())
    assert without_ids(dashboard("smoke", tmp_path, monkeypatch)) == without_ids(shown)


class FakeWandb:
    """wandb.init's arguments, and a run that takes define_metric calls."""

    def __init__(self):
        self.kwargs = None

    def init(self, **kwargs):
        self.kwargs = kwargs
        return self

    def define_metric(self, *args, **kwargs):
        pass


@pytest.mark.slow
def test_runs_of_an_adhoc_sweep_log_to_its_own_group(tmp_path, monkeypatch):
    """A job of an ad-hoc -m sweep logs to the wandb group named after its sweep directory (not `quickstart`, which
    every single quickstart run shares), the group the sweep's dashboard filters on."""
    import wandb
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.chdir(tmp_path)
    args = ["experiment=quickstart", "freeze=0,0.1", "seed=0,1"]
    directory = adhoc_sweep(args, tmp_path)
    job = [*quick_overrides("logger=wandb"), "freeze=0.1", "seed=1"]
    fake = FakeWandb()
    monkeypatch.setattr(wandb, "init", fake.init)
    cfg = make_cfg(job, tmp_path / "run")
    assert wandb_group(cfg) == "quickstart"  # a single run: its experiment
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(compose_config([*job, "hydra.mode=MULTIRUN", f"hydra.sweep.dir='{directory}'"],
                                                     with_hydra=True))
    RunLogger(cfg, tmp_path / "run", "id", runtime=Runtime(torch.device("cpu"), "auto", channels_last=False))
    assert fake.kwargs["group"] == sweep_info(directory)["group"] == directory.rsplit("/", 1)[1]
    assert fake.kwargs["job_type"] == "train" and fake.kwargs["config"]["precision"] == "fp32"
    assert "scheme=single_shot" in fake.kwargs["tags"] and not any(t.startswith("sieve_method") for t in
                                                                    fake.kwargs["tags"])
    # a sweep preset names its group itself (logger.group), as its dashboard does
    smoke = compose_config(["+sweep=smoke"])  # it logs (offline), so that its dashboard has runs to show
    assert wandb_group(smoke) == sweep_info("smoke")["group"] == "smoke" and smoke.logger.name == "wandb"
