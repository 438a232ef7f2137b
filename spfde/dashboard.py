"""`python -m spfde.dashboard <sweep dir or sweep name> [--save] [--out FILE]`: a wandb dashboard for a sweep,
built in code with `wandb-workspaces`.

The dashboard is a wandb Workspace (and a Report with the same panels) over the sweep's training runs (its
wandb group, job type `train`), grouped by `config.freeze` and `config.sieve`, and by the freeze scheme, sieve
method, sparsity method and ratio where the sweep varies them:
  trade-off      training FLOPs x final accuracy (scatter); parallel coordinates over x, y, ratio, accuracy
  over epochs    test accuracy, frozen blocks, partial data-set size
  memory         modelled training memory (total, min, avg) and the CUDA peak
  per layer      per-layer series (sparsity, pruned/grown, gradient norms), collapsed
Without --save nothing goes online: the spec is serialised to JSON (`<sweep dir>/dashboard.json`). With --save
the workspace and the report are saved to the entity/project of the sweep's logger config (needs a wandb login).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# config keys that split a sweep's runs into groups when the sweep varies them (freeze and sieve always do)
GROUP_KEYS = ("freeze_scheme.name", "sieve_method", "sparsity.name", "sparsity.ratio")
# per-epoch series (metrics.jsonl / wandb history keys, x = epoch)
EPOCH_PANELS = (("test accuracy", ["test/acc"]), ("frozen blocks", ["freeze/frozen_blocks"]),
                ("partial data-set size (samples)", ["sieve/partial_size"]))
MEMORY_PANELS = (("training memory, modelled (bytes)", ["memory/total", "memory/min", "memory/avg"]),
                 ("CUDA peak memory: training steps, evaluation (bytes)", ["memory/train_peak", "memory/eval_peak"]))
PER_LAYER_PREFIX = "per_layer"  # spfde.log logs per-layer series under this prefix


class DashboardError(ValueError):
    """A sweep that cannot be found or read (one line, for the user)."""


def sweep_values(overrides: list[str]) -> dict[str, list[str]]:
    """The config keys a list of Hydra overrides sweeps over, with their values (`key=a,b` or `choice(a,b)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spfde.config import CONF_DIR

    out = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            key = o.get_key_element().lstrip("+~")
            if key == "sweep/row":  # a table row picks the method (and SpFDE's x, y)
                key = "sparsity.name"
            elif (CONF_DIR / key).is_dir():  # a config group: its choice is <group>.name
                key = f"{key}.name"
            out[key] = [str(v) for v in o.sweep_string_iterator()]
    return out


def sweep_info(target: str) -> dict:
    """Name, directory, swept keys and logger settings of a sweep given as a directory (where Hydra saved
    `multirun.yaml`) or as the name of a preset in sweeps/."""
    from omegaconf import OmegaConf

    path = Path(target)
    if path.is_dir():
        saved = path / "multirun.yaml"
        if not saved.exists():
            raise DashboardError(f"{path} is not a sweep directory (no multirun.yaml from `spfde.run -m`)")
        cfg = OmegaConf.load(saved)
        task = list(cfg.hydra.overrides.task)
        directory = path
    else:
        from spfde.config import ConfigError

        if target not in sweep_names():
            raise DashboardError(f"{target!r} is neither a directory nor a sweep preset; choose one of: "
                                 f"{', '.join(sweep_names())}")
        try:
            cfg = compose_sweep(target)
        except ConfigError as e:
            raise DashboardError(str(e)) from None
        task = [f"+sweep={target}"]
        directory = Path(cfg.hydra.sweep.dir)
    params = {k: str(v) for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()}
    varies = sweep_values([f"{k}={v}" for k, v in params.items()] + task)
    group = cfg.logger.get("group") or cfg.get("experiment_name") or directory.name
    return {"name": directory.name, "dir": directory, "varies": varies, "group": str(group),
            "project": cfg.logger.project, "entity": cfg.logger.get("entity")}


def sweep_names() -> list[str]:
    from spfde.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def compose_sweep(name: str):
    from hydra import compose, initialize_config_dir

    from spfde.config import CONF_DIR, register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)


def groupby_keys(info: dict) -> list[str]:
    return ["freeze", "sieve", *(k for k in GROUP_KEYS if k in info["varies"])]


def panels():
    """The dashboard's panels, by section."""
    import wandb_workspaces.reports.v2 as wr

    def lines(title, metrics):
        return wr.LinePlot(title=title, x="epoch", y=list(metrics), groupby_aggfunc="mean",
                           groupby_rangefunc="stddev", title_x="epoch")

    return {
        "trade-off": [
            wr.ScatterPlot(title="final test accuracy vs training FLOPs", x=wr.SummaryMetric("train_flops"),
                           y=wr.SummaryMetric("final_acc"), log_x=True),
            wr.ParallelCoordinatesPlot(title="x, y, ratio -> accuracy", columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("freeze"), display_name="x (freeze)"),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("sieve"), display_name="y (sieve)"),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("sparsity.ratio"), display_name="ratio"),
                wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("final_acc"), display_name="accuracy")]),
        ],
        "over epochs": [lines(t, m) for t, m in EPOCH_PANELS],
        "memory": [lines(t, m) for t, m in MEMORY_PANELS],
    }


def run_filter(info: dict) -> str:
    return f"Metric('Group') = '{info['group']}' and Metric('JobType') = 'train'"


def build_workspace(info: dict, entity: str):
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=name, panels=items, is_open=True) for name, items in panels().items()]
    sections.append(ws.Section(name=PER_LAYER_PREFIX, is_open=False))
    return ws.Workspace(
        entity=entity, project=info["project"], name=f"SpFDE sweep {info['name']}", sections=sections,
        settings=ws.WorkspaceSettings(x_axis="epoch", group_by_prefix="first"),
        runset_settings=ws.RunsetSettings(filters=run_filter(info),
                                          groupby=[ws.Config(k) for k in groupby_keys(info)],
                                          pinned_columns=["summary:final_acc", "summary:train_flops"]))


def build_report(info: dict, entity: str):
    """The same panels as a Report (only built for --save: serialising a report's run set asks the API)."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=entity, project=info["project"], name=info["name"], filters=run_filter(info),
                       groupby=[f"config.{k}" for k in groupby_keys(info)])
    blocks = [wr.H1(f"SpFDE sweep {info['name']}"), wr.P(report_text(info))]
    for name, items in panels().items():
        blocks += [wr.H2(name), wr.PanelGrid(runsets=[runset], panels=items)]
    return wr.Report(project=info["project"], entity=entity, title=f"SpFDE sweep {info['name']}",
                     description=report_text(info), blocks=blocks)


def report_text(info: dict) -> str:
    swept = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in info["varies"].items()) or "nothing"
    return (f"Runs of wandb group '{info['group']}', grouped by {', '.join(groupby_keys(info))}; "
            f"the sweep varies {swept}.")


def spec(info: dict) -> dict:
    """The dashboard as JSON-ready data, built without any API call."""
    entity = info["entity"] or ""  # "" = the default entity of whoever saves it
    workspace = build_workspace(info, entity)._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "sweep": info["name"], "project": info["project"], "entity": info["entity"], "group": info["group"],
        "filter": run_filter(info), "groupby": groupby_keys(info), "varies": info["varies"],
        "workspace": workspace,
        "report": {"title": f"SpFDE sweep {info['name']}", "description": report_text(info),
                   "sections": {name: [p._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
                                       for p in items] for name, items in panels().items()}},
    }


def save(info: dict) -> list[str]:
    """Save the workspace and the report to W&B (online); returns their URLs."""
    import wandb

    entity = info["entity"] or wandb.Api().default_entity
    workspace = build_workspace(info, entity).save()
    report = build_report(info, entity).save()
    return [workspace.url, report.url]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spfde.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep directory (outputs/sweeps/<name>) or a sweep preset name")
    parser.add_argument("--out", type=Path, help="where to write the JSON spec (default: <sweep dir>/dashboard.json)")
    parser.add_argument("--save", action="store_true", help="also save the workspace and report to W&B (online)")
    args = parser.parse_args(argv)
    try:
        info = sweep_info(args.sweep)
    except DashboardError as e:
        print(f"spfde: error: {e}", file=sys.stderr)
        sys.exit(2)
    out = args.out or info["dir"] / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec(info), indent=1) + "\n")
    print(f"dashboard spec for sweep '{info['name']}' (runs grouped by {', '.join(groupby_keys(info))}) -> {out}")
    if args.save:
        try:
            urls = save(info)
        except Exception as e:  # no login, no network, no such entity: say so in one line
            print(f"spfde: error: could not save the dashboard to W&B: {str(e).splitlines()[0]}", file=sys.stderr)
            sys.exit(1)
        print("saved to W&B:", *urls, sep="\n  ")


if __name__ == "__main__":
    main()
