"""Dashboards in code: the wandb workspace spec of a sweep serialises offline (no API call) and holds the
panels and groupings an ablation needs; runs log a clean config for it."""

from __future__ import annotations

import json

import pytest

from spfde.dashboard import main, sweep_info
from spfde.log import run_tags, wandb_config, wandb_record
from tests.helpers import make_cfg, quick_overrides


def dashboard(name: str, cwd, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")  # any API call would fail: the spec must not need one
    main([name])
    return json.loads((cwd / "outputs" / "sweeps" / name / "dashboard.json").read_text())


def panels_of(spec: dict) -> dict[str, list[dict]]:
    sections = spec["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: s.get("panels", []) for s in sections}


@pytest.mark.parametrize("name", ["smoke", "grid_xy"])
def test_sweep_dashboard_spec_names_the_panels_and_groupings(name, tmp_path, monkeypatch):
    spec = dashboard(name, tmp_path, monkeypatch)
    runset = spec["workspace"]["spec"]["section"]["runSets"][0]
    assert [g["name"] for g in runset["grouping"]] == ["freeze.value", "sieve.value"]
    filters = json.dumps(runset["filters"])
    assert f'"value": "{name}"' in filters and '"jobType"' in filters and '"train"' in filters
    sections = panels_of(spec)
    assert set(sections) == {"trade-off", "over epochs", "memory", "per_layer"}
    scatter, parallel = sections["trade-off"]
    assert scatter["viewType"] == "Scatter Plot"
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == ("summary:train_flops", "summary:final_acc")
    assert parallel["viewType"] == "Parallel Coordinates Plot"
    assert [c["accessor"] for c in parallel["config"]["columns"]] == [  # a nested key as wandb stores it
        "config:freeze.value", "config:sieve.value", "config:sparsity.value.ratio", "summary:final_acc"]
    lines = {m for s in ("over epochs", "memory") for p in sections[s] for m in p["config"]["metrics"]}
    assert {"test/acc", "freeze/frozen_blocks", "sieve/partial_size", "memory/total", "memory/train_peak"} <= lines
    assert all(p["config"]["xAxis"] == "epoch" for s in ("over epochs", "memory") for p in sections[s])
    assert sections["per_layer"] == [] and spec["workspace"]["spec"]["section"]["settings"]["xAxis"] == "epoch"
    assert spec["report"]["sections"].keys() == {"trade-off", "over epochs", "memory"}


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
    config = wandb_config(cfg)
    assert "???" not in json.dumps(config)
    assert {k for k in config["sparsity"] if isinstance(config["sparsity"][k], dict)} == {"mest"}
    assert config["freeze"] == 0.1 and config["sparsity"]["ratio"] == 0.9
    assert {"scheme=resume", "sieve_method=circular", "x=0.1", "y=0.2"} <= set(run_tags(cfg))
    record = wandb_record({"epoch": 1, "test/acc": 0.5, "sparsity/overall": 0.9, "sparsity/pruned": 3,
                           "sparsity/layer/blocks.1.conv1": 0.9, "sparsity/pruned/blocks.1.conv1": 3,
                           "grad_norm/blocks.1.conv1": 0.1})
    assert sorted(record) == ["epoch", "per_layer/grad_norm/blocks.1.conv1", "per_layer/sparsity/layer/blocks.1.conv1",
                              "per_layer/sparsity/pruned/blocks.1.conv1", "sparsity/overall", "sparsity/pruned",
                              "test/acc"]


def test_the_readme_spec_of_the_smoke_sweep_is_current(tmp_path, monkeypatch):
    """docs/smoke/dashboard.json (shown in the README) is what spfde.dashboard builds today."""
    from tests.helpers import REPO

    def without_ids(node):
        if isinstance(node, dict):
            return {k: without_ids(v) for k, v in node.items() if k != "__id__"}  # random panel ids
        return [without_ids(v) for v in node] if isinstance(node, list) else node

    shown = json.loads((REPO / "docs" / "smoke" / "dashboard.json").read_text())
    assert without_ids(dashboard("smoke", tmp_path, monkeypatch)) == without_ids(shown)
