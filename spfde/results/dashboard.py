"""`python -m spfde.dashboard <sweep dir or sweep name> [--save] [--out FILE]`: a wandb dashboard for a sweep,
built in code with `wandb-workspaces`.

The dashboard is a wandb Workspace (and a Report with the same panels) over the sweep's training runs (its
wandb group, job type `train`), grouped by `config.freeze` and `config.sieve`, and by the freeze scheme, sieve
method, sparsity method and ratio where the sweep varies them, showing as many runs as the sweep has:
  trade-off      test accuracy against the training FLOPs spent so far (what a budget buys); training FLOPs x
                 final accuracy (scatter); parallel coordinates over x, y, ratio, accuracy
  over epochs    test accuracy, frozen blocks, partial data-set size
  memory         modelled training memory (total, min, avg) and the CUDA peak
  per_layer      sparsity, weights pruned and grown, and gradient norm of every layer (collapsed)
Without --save nothing goes online: the spec is serialised to JSON (`<sweep dir>/dashboard.json`). With --save
the workspace and the report are saved to the entity/project of the sweep's logger config (needs a wandb login).
"""

from __future__ import annotations

# Hydra, omegaconf and wandb-workspaces load inside the functions that need them: keeps start-up fast for
# --help
import argparse
import json
import math
import sys
import unicodedata
from pathlib import Path

from spfde.errors import SpfdeError

# config keys that split a sweep's runs into groups when the sweep varies them (freeze and sieve always do)
GROUP_KEYS = ("freeze_scheme.name", "sieve_method", "sparsity.name", "sparsity.ratio")
# per-epoch series (metrics.jsonl / wandb history keys, x = epoch)
EPOCH_PANELS = (("test accuracy", ["test/acc"]), ("frozen blocks", ["freeze/frozen_blocks"]),
                ("partial data-set size (samples)", ["sieve/partial_size"]))
MEMORY_PANELS = (("training memory, modelled (bytes)", ["memory/total", "memory/min", "memory/avg"]),
                 ("CUDA peak memory: training steps, evaluation (bytes)", ["memory/train_peak", "memory/eval_peak"]))
PER_LAYER_PREFIX = "per_layer"  # spfde.training.log logs per-layer series under this prefix
# one panel per per-layer series, every layer a line (spfde.training.log.PER_LAYER, logged as per_layer/<series><layer>)
PER_LAYER_PANELS = (("sparsity per layer", "sparsity/layer/"), ("weights pruned per layer", "sparsity/pruned/"),
                    ("weights grown per layer", "sparsity/grown/"),
                    ("gradient norm per layer (runs with analysis.every > 0)", "grad_norm/"))


class DashboardError(SpfdeError, ValueError):
    """A sweep that cannot be found or read (one line, for the user)."""


def sweep_values(overrides: list[str]) -> dict[str, list[str]]:
    """The config keys a list of Hydra overrides sweeps over, with their values (`key=a,b` or `choice(a,b)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spfde.config import is_group

    out = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element().lstrip("+~")
        if key == "sweep/row":  # a table row picks the method (and SpFDE's x, y)
            key = "sparsity.name"
        elif is_group(key):  # a config group: its choice is <group>.name
            key = f"{key}.name"
        if o.value_type.name == "INTERVAL_SWEEP":  # drawn by a search (+search=...): the ends of its interval
            out[key] = [str(o.value().start), str(o.value().end)]
        elif o.is_sweep_override():
            out[key] = [str(v) for v in o.sweep_string_iterator()]
        else:  # a later plain value (the command line after the preset's params) pins the key
            out.pop(key, None)
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
        try:
            cfg = OmegaConf.load(saved)
            task = list(cfg.hydra.overrides.task)
            cfg.logger.project  # noqa: B018 - what the spec reads: a multirun.yaml without it is no sweep's
        except Exception as e:  # noqa: BLE001 - unreadable YAML, or YAML of another shape
            raise DashboardError(f"{saved} cannot be read as Hydra's record of a sweep ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'empty'}); relaunch "
                                 "the sweep's command to rewrite it, or give the sweep's preset name") from None
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
    # the wandb group its runs log to (spfde.training.log.wandb_group): a preset's logger.group, else the sweep
    # directory's name
    group = cfg.logger.get("group") or directory.name
    runs = math.prod(len(values) for values in varies.values())  # Hydra's basic sweeper: every combination
    runs = OmegaConf.select(cfg, "hydra.sweeper.n_trials", default=runs)  # a search: its trials
    return {"name": directory.name, "dir": directory, "varies": varies, "group": str(group), "runs": runs,
            "project": cfg.logger.project, "entity": cfg.logger.get("entity")}


def sweep_names() -> list[str]:
    from spfde.config import group_options

    return group_options("sweep")  # the project's presets and those of the user's config directory


def compose_sweep(name: str):
    from spfde.config import compose_config

    return compose_config([f"+sweep={name}"], with_hydra=True)


def groupby_keys(info: dict) -> list[str]:
    return ["freeze", "sieve", *(k for k in GROUP_KEYS if k in info["varies"])]


def panels():
    """The dashboard's panels, by section."""
    import wandb_workspaces.reports.v2 as wr

    def lines(title, metrics):
        return wr.LinePlot(title=title, x="epoch", y=list(metrics), groupby_aggfunc="mean",
                           groupby_rangefunc="stddev", title_x="epoch")

    def per_layer(title, series):  # a line per layer: the layers' names depend on the model, so a pattern
        return wr.LinePlot(title=title, x="epoch", metric_regex=f"^{PER_LAYER_PREFIX}/{series}.*",
                           groupby_aggfunc="mean", title_x="epoch")

    return {
        "trade-off": [
            # flops/total: the training FLOPs spent up to the end of each epoch (spfde.training.cost, logged every
            # epoch)
            wr.LinePlot(title="test accuracy vs training FLOPs spent so far", x="flops/total", y=["test/acc"],
                        groupby_aggfunc="mean", groupby_rangefunc="stddev", title_x="training FLOPs so far",
                        title_y="test accuracy"),
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
        PER_LAYER_PREFIX: [per_layer(t, s) for t, s in PER_LAYER_PANELS],
    }


def filter_value(text: str) -> str:
    """`text` as a string literal of a wandb-workspaces filter expression. Its parser rewrites every '=' to '=='
    (and '<', '>' to '<=', '>=') before parsing, inside quotes too, so a group named `freeze=0,0.1` would match
    no run: such characters (and quotes) are written as \\x escapes, which Python's parser turns back."""
    return "'" + "".join(f"\\x{ord(c):02x}" if c in "=<>!'\\" else c for c in text) + "'"


def run_filter(info: dict) -> str:
    return f"Metric('Group') = {filter_value(info['group'])} and Metric('JobType') = 'train'"


def display_name(info: dict) -> str:
    """The sweep's name as wandb-workspaces accepts a workspace name: it refuses every symbol (Unicode S*, meant
    for emojis), and sweep names hold '=' and '+' (`epochs=3,experiment=quickstart`): '=' becomes ':', other
    symbols '_'."""
    name = "".join(":" if c == "=" else "_" if unicodedata.category(c)[0] == "S" or unicodedata.category(c) == "Cs"
                   else c for c in info["name"])
    return f"SpFDE sweep {name}"


def build_workspace(info: dict, entity: str):
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=name, panels=items, is_open=name != PER_LAYER_PREFIX)  # per layer: many lines
                for name, items in panels().items()]
    return ws.Workspace(
        entity=entity, project=info["project"], name=display_name(info), sections=sections,
        # every run of the sweep in every panel (wandb-workspaces' default shows 10)
        settings=ws.WorkspaceSettings(x_axis="epoch", group_by_prefix="first", max_runs=info["runs"]),
        runset_settings=ws.RunsetSettings(filters=run_filter(info),
                                          groupby=[ws.Config(k) for k in groupby_keys(info)],
                                          pinned_columns=["summary:final_acc", "summary:train_flops"]))


def build_report(info: dict, entity: str):
    """The same panels as a Report (only built for --save: serialising a report's run set asks the API)."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=entity, project=info["project"], name=info["name"], filters=run_filter(info),
                       groupby=[f"config.{k}" for k in groupby_keys(info)])
    blocks = [wr.H1(display_name(info)), wr.P(report_text(info))]
    for name, items in panels().items():
        blocks += [wr.H2(name), wr.PanelGrid(runsets=[runset], panels=items)]
    return wr.Report(project=info["project"], entity=entity, title=display_name(info),
                     description=report_text(info), blocks=blocks)


def report_text(info: dict) -> str:
    swept = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in info["varies"].items()) or "nothing"
    return (f"The {info['runs']} runs of wandb group '{info['group']}', grouped by {', '.join(groupby_keys(info))}; "
            f"the sweep varies {swept}.")


def spec(info: dict) -> dict:
    """The dashboard as JSON-ready data, built without any API call."""
    entity = info["entity"] or ""  # "" = the default entity of whoever saves it
    workspace = build_workspace(info, entity)._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "sweep": info["name"], "project": info["project"], "entity": info["entity"], "group": info["group"],
        "runs": info["runs"], "filter": run_filter(info), "groupby": groupby_keys(info), "varies": info["varies"],
        "workspace": workspace,
        "report": {"title": display_name(info), "description": report_text(info),
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
    info = sweep_info(args.sweep)
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

