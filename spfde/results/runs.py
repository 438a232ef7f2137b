"""Finished runs as rows: finding run directories, reading their results, grouping seeds, the markdown tables."""

from __future__ import annotations

# omegaconf and the config load inside the functions that read a run's config: keeps start-up fast for
# status on a large sweep
import ast
import csv
import functools
import importlib.util
import json
import math
import re
import statistics
from pathlib import Path
from typing import NamedTuple

from spfde.errors import SpfdeError
from spfde.rundir.checkpoint import not_regular

# the columns of the grouped table; the grouping itself uses the whole resolved config (see config_key)
KEYS = ("model", "dataset", "method", "ratio", "freeze", "freeze_scheme", "sieve", "sieve_method", "epochs")
# keys that do not change a run's results besides those left out of run directory names (conf/config.yaml):
# the seed (what a group averages over), where the run lives, labels, and the LTH driver's bookkeeping
NOT_RESULT_KEYS = ("seed", "run_dir", "experiment_name", "search", "sparsity.lth.round", "sparsity.lth.workdir")


class ReportError(SpfdeError, ValueError):
    """Runs that cannot be reported as asked (one line, for the user)."""


def find_runs(paths: list[Path]) -> list[Path]:
    runs = set()
    for path in paths:
        for summary in Path(path).rglob("summary.json"):
            run = summary.parent
            if any(part.startswith(("round-", "previous-")) for part in run.relative_to(path).parts):
                continue  # LTH rounds and archived results belong to another run
            runs.add(run)
    return sorted(runs)


def not_result_keys() -> tuple[str, ...]:
    """Keys whose values do not change results: those Hydra leaves out of run directory names, plus
    NOT_RESULT_KEYS."""
    from omegaconf import OmegaConf

    from spfde.config import CONF_DIR

    hydra_cfg = OmegaConf.load(CONF_DIR / "config.yaml").hydra
    return (*hydra_cfg.job.config.override_dirname.exclude_keys, *NOT_RESULT_KEYS)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@functools.cache
def method_file_settings(method: str) -> dict:
    """The shared sparsity keys a method's own file sets (conf/sparsity/<method>.yaml: its masking rule, ITOP's
    ERK), flat: part of what the method's name means."""
    from omegaconf import OmegaConf

    from spfde.config import CONF_DIR

    path = CONF_DIR / "sparsity" / f"{method}.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    return {f"sparsity.{k}": v for k, v in data.items() if k != "name" and not isinstance(v, (dict, list))}


class MethodFacts(NamedTuple):
    """What reports need to know of a sparse-training method (attributes of its class in spfde.sparse)."""

    name: str
    label: str  # how reports and the paper's tables name it
    uses_ratio: bool  # trains to sparsity.ratio (dense ignores it)
    spfde_base: bool  # SpFDE's own base method (MEST): its rows with freezing/sieving are "SpFDE x%+y%"


@functools.cache
def method_facts() -> dict[str, MethodFacts]:
    """Every method of spfde.sparse.METHODS by name, with the class attributes that reports use, read from the
    package's source (`ast`) rather than imported: importing it loads torch, and `spfde.report` reads finished runs
    without torch. The classes stay the one place these facts are written. Source that does not read as expected
    (METHODS not a literal list of classes, an attribute that is not a literal) falls back to importing them;
    tests/test_startup.py checks that both give the same."""
    try:
        return methods_from_source()
    except (LookupError, AttributeError, SyntaxError, ValueError, TypeError, OSError):
        from spfde.sparse import METHODS

        return {name: MethodFacts(name, m.label, m.uses_ratio, m.spfde_base) for name, m in METHODS.items()}


def methods_from_source() -> dict[str, MethodFacts]:
    """method_facts() from spfde/sparse/*.py without running them: each class's own literal attributes and its
    bases' (by name: class names are unique in the package), for the classes listed in `METHODS = {m.name: m for m
    in (Dense, ...)}` of its __init__.py."""
    spec = importlib.util.find_spec("spfde.sparse")  # loads no module of spfde.sparse
    folder = Path(spec.origin).parent
    classes: dict[str, tuple[list[str], dict]] = {}
    registered: list[str] = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef):
                if node.name in classes:
                    raise ValueError(f"two classes named {node.name} in {folder}")
                own = {stmt.targets[0].id: stmt.value for stmt in node.body if isinstance(stmt, ast.Assign)
                       and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)}
                classes[node.name] = ([base.id for base in node.bases if isinstance(base, ast.Name)], own)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and path.name == "__init__.py":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "METHODS" for t in targets):
                    registered = [elt.id for elt in node.value.generators[0].iter.elts]

    def attribute(cls: str, key: str):
        bases, own = classes[cls]
        if key in own:
            return ast.literal_eval(own[key])
        for base in bases:
            try:
                return attribute(base, key)
            except KeyError:
                continue
        raise KeyError(f"{cls}.{key}")

    if not registered:
        raise LookupError(f"no METHODS in {folder / '__init__.py'}")
    facts = [MethodFacts(*(attribute(cls, key) for key in MethodFacts._fields)) for cls in registered]
    return {f.name: f for f in facts}


def printable(text: str) -> str:
    """A path as text files and pages can hold it: bytes of a file name that are not UTF-8 (kept by Python as
    surrogates, which no UTF-8 file takes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def result_config(cfg) -> dict:
    """The run's resolved config as flat `dotted.key: value` pairs, without the keys that cannot change
    its results: seed, non-result keys, other methods' options, and options of a dimension that is off."""
    from omegaconf import OmegaConf

    methods = method_facts()
    flat = flatten(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False))
    skip = not_result_keys()
    method = flat.get("sparsity.name")
    off = [f"sparsity.{m}." for m in methods if m != method]
    if method in methods and not methods[method].uses_ratio:
        off.append("sparsity.ratio")  # e.g. dense ignores the ratio
    if not flat.get("freeze"):
        off += ["freeze_scheme.", "freeze_fraction"]
    if not flat.get("sieve"):
        off += ["sieve_update", "sieve_method", "sieve_oneshot_at"]
    return {k: v for k, v in flat.items()
            if not any(k == s or k.startswith(s + ".") for s in skip) and not k.startswith(tuple(off))}


def run_ratio(cfg) -> float | None:
    """The run's target sparsity (0 for a method that ignores sparsity.ratio, e.g. dense), as
    spfde.sparse.target_sparsity says."""
    if cfg is None:
        return None
    method = method_facts().get(cfg.sparsity.name)
    return 0.0 if method is not None and not method.uses_ratio else cfg.sparsity.ratio


def model_label(name, depth, width) -> str:
    """resnet32 and vgg19 are families with a depth and a width; say which member ran."""
    if name == "resnet32":
        return f"resnet{depth}-w{width}"
    if name == "vgg19":
        return f"vgg{depth}-w{width}"
    return str(name)


def find_unfinished(paths: list[Path], finished: list[Path]) -> list[Path]:
    """Run directories (a config.yaml or a checkpoint) without a finished summary: left out of the report."""
    seen = set(finished)
    out = set()
    for path in paths:
        for marker in [*Path(path).rglob("config.yaml"), *Path(path).rglob("last.pt")]:
            run = marker.parent
            parts = run.relative_to(path).parts
            if run in seen or any(part.startswith(("round-", "previous-", ".")) or part == "report" for part in parts):
                continue
            out.add(run)
    return sorted(out)


def read_metrics(run: Path) -> tuple[list[dict], int]:
    """metrics.jsonl's records and the number of lines that do not parse (a damaged file)."""
    records, bad = [], 0
    path = run / "metrics.jsonl"
    if not_regular(path):
        return [], 1  # a FIFO or device: reading would wait forever
    for line in (path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += bool(line.strip())
            continue
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad


def load_run(run: Path, summary: dict | None = None) -> dict:
    from omegaconf import OmegaConf

    summary = summary if summary is not None else json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else None

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default) if cfg is not None else default

    return {
        "run_dir": printable(str(run)),
        "model": model_label(get("model.name", summary.get("model")), get("model.depth"), get("model.width")),
        "dataset": get("dataset.name", summary.get("dataset")), "method": get("sparsity.name"),
        "ratio": run_ratio(cfg),
        "freeze": get("freeze", 0.0), "freeze_scheme": get("freeze_scheme.name"),
        "sieve": get("sieve", 0.0), "sieve_method": get("sieve_method"), "epochs": get("epochs"),
        "seed": get("seed", summary.get("seed")), "experiment": get("experiment_name"),
        "final_acc": summary["final_acc"], "best_acc": summary.get("best_acc"),
        "final_acc5": summary.get("final_acc5"), "final_sparsity": summary.get("final_sparsity"),
        "train_flops": summary.get("train_flops"), "dense_train_flops": summary.get("dense_train_flops"),
        "inference_flops": summary.get("inference_flops"), "memory_min_bytes": summary.get("memory_min_bytes"),
        "memory_avg_bytes": summary.get("memory_avg_bytes"),
        "memory_dst_min_bytes": summary.get("memory_dst_min_bytes"), "train_time_s": summary.get("train_time_s"),
        "sieve_seen_fraction": summary.get("sieve_seen_fraction"),
        "config": result_config(cfg) if cfg is not None else {"run_dir": str(run)},  # no config: its own group
    }


# keys the paper's table shows by itself (section heading, ratio column, label); others that vary join the label
SHOWN_KEYS = ("model.name", "model.depth", "model.width", "dataset.name", "sparsity.name", "sparsity.ratio",
              "freeze", "sieve", "sieve_method")


MEST_ONESHOT = 0.24  # the paper's MEST row: MEST's one-shot removal of 12,000 of 50,000 samples (sweeps/row/mest.yaml)


def label(row: dict, extra: dict | None = None) -> str:
    """How the paper names a configuration: "MEST" for MEST with its one-shot data removal, "MEST (EM&S)"
    without it, "SpFDE x%+y%" for MEST with freezing/sieving, "<method> + SpFDE x%+y%" on another method;
    followed by the other config keys that tell it apart from the other rows of the report."""
    if extra:
        return paper_name(row) + " (" + ", ".join(f"{k}={_value_text(v)}" for k, v in extra.items()) + ")"
    return paper_name(row)


def method_of(name) -> MethodFacts | None:
    return method_facts().get(name)


def is_spfde_base(name) -> bool:
    return bool(method_of(name) and method_of(name).spfde_base)


def method_name(row: dict) -> str:
    """The sparse-training method's own name (e.g. "MEST (EM&S)"), without freezing or sieving."""
    method = method_of(row["method"])
    return method.label if method else str(row["method"])


def paper_name(row: dict) -> str:
    method = method_of(row["method"])
    name = method.label if method else str(row["method"])
    if not (row["freeze"] or row["sieve"]):
        return name
    if is_spfde_base(row["method"]) and not row["freeze"] and row["sieve_method"] == "oneshot":
        return "MEST" if row["sieve"] == MEST_ONESHOT else f"MEST one-shot {100 * row['sieve']:g}%"
    spfde = f"SpFDE {100 * row['freeze']:g}%+{100 * row['sieve']:g}%"
    if row["sieve"] and row["sieve_method"] != "circular":
        spfde += f" ({row['sieve_method']} sieve)"
    return spfde if is_spfde_base(row["method"]) else f"{name} + {spfde}"


def _value_text(v) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, tuple) else str(v)


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def std(values):
    """Sample standard deviation; None (undefined, a blank cell) for fewer than two values, never 0.0."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def natural_key(text) -> list:
    """Sort key that orders the numbers inside a text by value: "x=0.1" < "x=0.15" < "x=0.2" < "x=10"."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(text))
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def varying_keys(rows: list[dict]) -> list[str]:
    """Result-changing config keys that take more than one value among the runs that have them (options of
    a dimension that is off are absent, not different)."""
    keys = sorted({k for r in rows for k in r["config"]})
    return [k for k in keys if len({repr(r["config"][k]) for r in rows if k in r["config"]}) > 1]


def group(rows: list[dict]) -> list[dict]:
    """One group per configuration: runs whose result-changing config is identical except for the seed.
    Two runs of one configuration with the same seed are an error (they would count as two seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted((k, repr(v)) for k, v in row["config"].items())), []).append(row)
    varying = varying_keys(rows)
    extra_keys = [k for k in varying if k not in SHOWN_KEYS]
    out = []
    for members in groups.values():
        seeds: dict = {}
        for m in members:
            if m["seed"] in seeds:
                raise ReportError(f"runs {seeds[m['seed']]} and {m['run_dir']} have the same configuration and the "
                                  f"same seed {m['seed']}: report one of them (or give them different seeds)")
            seeds[m["seed"]] = m["run_dir"]
        first = members[0]
        g = {k: first[k] for k in KEYS}
        config = {k: first["config"].get(k) for k in varying}
        accs = [m["final_acc"] for m in members]
        own = method_file_settings(first["method"]) if method_of(first["method"]) else {}
        # what tells it apart, but the settings its method's own file gives it (its name says them: a masking rule)
        extra = {k: config[k] for k in extra_keys if k in first["config"] and own.get(k, ()) != config[k]}
        g.update({"label": label(g, extra), **{k: _value_text(v) for k, v in config.items() if k not in KEYS},
                  "seeds": len(members), "acc_mean": mean(accs), "acc_std": std(accs),
                  "train_flops": mean([m["train_flops"] for m in members]),
                  "dense_train_flops": mean([m["dense_train_flops"] for m in members]),
                  "inference_flops": mean([m.get("inference_flops") for m in members]),
                  "memory_min_bytes": mean([m["memory_min_bytes"] for m in members]),
                  "memory_avg_bytes": mean([m["memory_avg_bytes"] for m in members]),
                  "memory_dst_min_bytes": mean([m["memory_dst_min_bytes"] for m in members]),
                  "train_time_s": mean([m["train_time_s"] for m in members])})
        out.append(g)
    return sorted(out, key=lambda g: (str(g["dataset"]), natural_key(g["model"]), natural_key(g["label"]),
                                      g["ratio"] or 0))


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def flops_scale(values) -> tuple[float, str]:
    top = max((v for v in values if v), default=1.0)
    exp = int(math.floor(math.log10(top))) if top > 0 else 0
    return 10.0 ** exp, f"×e{exp}"


def acc_text(g: dict) -> str:
    """Mean accuracy (%), ± std where there are several seeds, and n."""
    spread = f" ± {100 * g['acc_std']:.2f}" if g["acc_std"] is not None else ""
    return f"{100 * g['acc_mean']:.2f}{spread} (n={g['seeds']})"


def markdown(groups: list[dict]) -> str:
    parts = []
    for (dataset, model), members in by_keys(groups, ("dataset", "model")).items():
        ratios = sorted({g["ratio"] for g in members if g["ratio"] is not None})
        scale, unit = flops_scale([g["train_flops"] for g in members])
        head = "| Method | " + " | ".join(f"{100 * r:g}% FLOPs ({unit}) | {100 * r:g}% Acc. (%)" for r in ratios) + " |"
        lines = [f"### {model} on {dataset}", "", head, "|---|" + "---|---|" * len(ratios)]
        for name, rows in by_keys(members, ("label",)).items():
            cells = []
            for r in ratios:
                match = [g for g in rows if g["ratio"] == r]
                if match:
                    cells += [f"{match[0]['train_flops'] / scale:.3g}" if match[0]["train_flops"] else "n/a",
                              acc_text(match[0])]
                else:
                    cells += ["", ""]
            lines.append(f"| {name[0]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts += compat_markdown(groups)
    full = ["### All groups", "",
            "| label | model | dataset | ratio | freeze | scheme | sieve | sieve method | seeds | "
            "acc (%) | train FLOPs | memory min / avg (MiB) | time (s) |", "|" + "---|" * 13]
    for g in groups:
        mem = (f"{g['memory_min_bytes'] / 2**20:.1f} / {g['memory_avg_bytes'] / 2**20:.1f}"
               if g["memory_min_bytes"] else "")
        full.append(f"| {g['label']} | {g['model']} | {g['dataset']} | {g['ratio']} | {g['freeze']} | "
                    f"{g['freeze_scheme']} | {g['sieve']} | {g['sieve_method']} | {g['seeds']} | {acc_text(g)} | "
                    f"{g['train_flops']:.4g} | {mem} | {g['train_time_s']:.1f} |")
    return "\n\n".join(parts + ["\n".join(full)]) + "\n"


def compat_markdown(groups: list[dict]) -> list[str]:
    """SpFDE on top of other sparse methods (sweeps/dst_compat.yaml): each method alone next to the same
    method with layer freezing and circular sieving. Only when such pairs exist for a method besides MEST."""
    pairs = []
    for key, members in by_keys(groups, ("dataset", "model", "ratio", "method", "epochs")).items():
        alone = [g for g in members if not g["freeze"] and not g["sieve"]]
        for g in members:
            if alone and (g["freeze"] or g["sieve"]) and g["sieve_method"] == "circular":
                pairs.append((key, alone[0], g))
    if all(is_spfde_base(key[3]) for key, _, _ in pairs):
        return []
    lines = ["### SpFDE on other sparse-training methods", "",
             "| method | model | dataset | sparsity | alone: FLOPs | alone: acc (%) | with | FLOPs | acc (%) | "
             "FLOPs saved | Δ acc (points) |", "|" + "---|" * 11]
    for (dataset, model, ratio, _, _), alone, g in pairs:
        spfde = f"SpFDE {100 * g['freeze']:g}%+{100 * g['sieve']:g}%"
        lines.append(f"| {alone['label']} | {model} | {dataset} | {ratio} | {alone['train_flops']:.4g} | "
                     f"{acc_text(alone)} | {spfde} | {g['train_flops']:.4g} | {acc_text(g)} | "
                     f"{100 * (1 - g['train_flops'] / alone['train_flops']):.1f}% | "
                     f"{100 * (g['acc_mean'] - alone['acc_mean']):+.2f} |")
    return ["\n".join(lines)]


def by_keys(rows: list[dict], keys: tuple) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


