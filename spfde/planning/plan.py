"""What a run or sweep will cost, without training it: FLOPs, memory and (calibrated) hours (`python -m spfde.plan`)."""

from __future__ import annotations

import copy
import functools

from spfde.checks.validation import check_dense_layers, compose_checked, parse_overrides, sweep_jobs
from spfde.config import ConfigError, compose_config
from spfde.data import FOLDERS, DataError
from spfde.data.folders import find_image_folder, list_image_folder, planned_image_size
from spfde.planning.calibrate import calibrate, estimate, fmt_duration, timeout_minutes, used_depths
from spfde.sparse import SparsityError, target_sparsity
from spfde.training.build import build_core, meta_model
from spfde.training.cost import MEMORY_CONVENTIONS, epoch_batches, flops_table
from spfde.training.freeze import FreezeError, candidate_blocks, scheme_options, solve
from spfde.training.sieve import SieveError, check_sieve, oneshot_epoch, partial_size, sieve_epochs


def planned_data(cfg) -> tuple:
    """The config with the data sizes the run will read, and a line saying where they come from. Image folders
    are counted as the run counts them (`list_image_folder`: file names only, nothing opened or decoded) when
    dataset.root holds train/ and val/; otherwise, and for every other data set, the dataset config's sizes."""
    d = cfg.dataset
    if d.name in FOLDERS:
        try:
            root = find_image_folder(d)
        except DataError:
            return cfg, (f"data: {d.train_size} training images, {d.num_classes} classes, from the dataset config "
                         f"(dataset.root={d.root or '(unset)'} has no train/ and val/ to count)")
        try:
            train, test, classes = count_folder(str(root), d.name, d.num_classes)
        except DataError as e:
            raise ConfigError(str(e)) from None
        cfg = copy.deepcopy(cfg)
        cfg.dataset.train_size, cfg.dataset.test_size, cfg.dataset.num_classes = train, test, classes
        return cfg, f"data: {train} training images ({test} val), {classes} classes, counted in {root}"
    return cfg, (f"data: {d.train_size} training images ({d.test_size} test), {d.num_classes} classes "
                 f"({d.name}'s sizes from its dataset config)")


@functools.lru_cache(maxsize=64)
def count_folder(root: str, name: str, num_classes: int) -> tuple[int, int, int]:
    """(train images, val images, classes) of an image folder, once per folder in a process (a sweep's jobs
    share the count). Headers are not read (on_bad_file=skip): the run checks them itself before it starts."""
    from omegaconf import OmegaConf

    d = OmegaConf.create({"name": name, "root": root, "num_classes": num_classes, "on_bad_file": "skip"})
    listing = list_image_folder(d)
    return listing.train_images, listing.val_images, len(listing.classes)


_TABLES: dict[tuple, list[list[float]]] = {}


def planned_table(cfg, cost_model, method, batches_per_epoch, max_frozen: int, frozen_densities: bool = True):
    """`flops_table`, once per cost model, method schedule, batches and frozen depth in a process: a sweep's jobs
    that differ in the freezing target or the seed share their tables (read-only)."""
    sp = cfg.sparsity  # what the method's planned densities read: its own options and the shared ones
    method_options = (sp.name, sp.ratio, sp.distribution, sp.masked, tuple(sp.dense_layers), str(sp.get(sp.name)))
    key = (id(cost_model), type(method).__name__, method_options, repr(method.schedule),
           tuple(tuple(b) for b in batches_per_epoch), max_frozen, frozen_densities)
    if key not in _TABLES:
        _TABLES[key] = flops_table(cost_model, method, batches_per_epoch, max_frozen, frozen_densities)
    return _TABLES[key]


def build_plan(cfg, conventions=MEMORY_CONVENTIONS) -> dict:
    """The plan of one run. `conventions`: the memory conventions it reports (a sweep plan asks for the one it
    shows: measuring the other's activations at every frozen depth is most of a plan's time)."""
    cfg, data_line = planned_data(cfg)  # image folders: the folder's own counts
    d = cfg.dataset
    size = planned_image_size(d)  # image folders: dataset.image_size 0 = read from the images
    input_shape = (d.channels, size, size)
    samples = d.train_size
    check_sieve(cfg, samples)
    samples_per_epoch = sieve_epochs(cfg, samples)
    batches_per_epoch = [epoch_batches(n, cfg.batch_size) for n in samples_per_epoch]
    batches = batches_per_epoch[0]
    core = build_core(cfg, d.num_classes, d.channels, size, [len(b) for b in batches_per_epoch], device="meta")
    model, method, cost_model, memory = core.model, core.method, core.cost_model, core.memory_model
    check_dense_layers(cfg, model)
    memories_of = {c: meta_model(cfg, d.num_classes, input_shape, c)[2] for c in MEMORY_CONVENTIONS
                   if c in conventions or c == cfg.cost.memory}
    notes = []

    if method.runs_in_rounds:
        rounds = type(method).round_ratios(cfg.sparsity)
        densities_of = []
        for ratio in rounds:
            counts = method.masks.target_counts(ratio)
            densities_of += [{n: c / method.masks.masks[n].numel() for n, c in counts.items()}] * cfg.epochs
        table = [[samples_per_epoch[e % cfg.epochs] * cost_model.step(dens, 0, False)]
                 for e, dens in enumerate(densities_of)]
        unsieved = [[samples * cost_model.step(dens, 0, False)] for dens in densities_of]
    else:
        densities_of = None
        candidates = candidate_blocks(model, cfg.freeze_fraction) if cfg.freeze > 0 else 0
        table = planned_table(cfg, cost_model, method, batches_per_epoch, candidates)
        unsieved = planned_table(cfg, cost_model, method, [epoch_batches(samples, cfg.batch_size)] * cfg.epochs, 0) \
            if cfg.sieve > 0 else table
    if type(method).planning_note(cfg):
        notes.append(type(method).planning_note(cfg))

    freeze = None
    if cfg.freeze > 0:  # solved on the back-propagation FLOPs saved (paper Alg. 1), see spfde.training.freeze
        bp_table = planned_table(cfg, cost_model, method, batches_per_epoch, candidates, frozen_densities=False)
        freeze = solve(cfg.freeze_scheme.name, cfg.freeze, bp_table, cfg.epochs, cfg.interval, candidates,
                       scheme_options(cfg))
    frozen = freeze.frozen if freeze else [0] * len(table)
    init = method.init_passes * method.planned_init_samples(cfg.batch_size, d.num_classes) * cost_model.step({})
    train = init + sum(row[k] for row, k in zip(table, frozen))
    no_freeze = init + sum(row[0] for row in table)
    no_freeze_sieve = init + sum(row[0] for row in unsieved)
    dense = len(table) * samples * cost_model.step({})

    memories, schedule = [], []
    per_convention = {c: [] for c in memories_of}
    for e, k in enumerate(frozen):
        if densities_of is not None:
            densities = densities_of[e]
        else:
            densities = method.planned_densities(e, frozenset(method.masks.in_blocks(range(k))))
        mem = memory.breakdown(densities, k)
        memories.append(mem["total"])
        for c, model_c in memories_of.items():
            per_convention[c].append(model_c.breakdown(densities, k)["total"])
        masked = sum(method.masks.masks[n].numel() for n in densities)
        sparsity = 1 - sum(densities[n] * method.masks.masks[n].numel() for n in densities) / max(1, masked)
        schedule.append({"epoch": e, "flops": table[e][k], "frozen_blocks": k, "sparsity": sparsity,
                         "memory": mem["total"]})
    targets = {n: c / method.masks.masks[n].numel() for n, c in method.targets.items()}
    block_flops = cost_model.block_forward()
    plan = {
        "data": data_line, "num_classes": d.num_classes, "input_shape": list(input_shape),
        "model": cfg.model.name, "dataset": d.name, "sparsity": cfg.sparsity.name,
        "ratio": target_sparsity(cfg.sparsity),
        "epochs": len(table), "steps_per_epoch": len(batches), "batch_size": cfg.batch_size, "train_size": samples,
        "train_flops": train, "train_flops_no_freeze": no_freeze, "train_flops_no_freeze_sieve": no_freeze_sieve,
        "dense_train_flops": dense,
        "init_flops": init, "inference_flops": cost_model.inference(densities),
        "dense_inference_flops": cost_model.dense_forward,
        "memory_batch": cfg.cost.memory_batch, "memory_convention": cfg.cost.memory,
        "memory_conventions": {c: {"min_bytes": min(v), "avg_bytes": sum(v) / len(v),
                                   "dst_min_bytes": memories_of[c].breakdown(targets, 0)["total"]}
                               for c, v in per_convention.items()},
        "memory_min_bytes": min(memories), "memory_avg_bytes": sum(memories) / len(memories),
        "memory_dst_min_bytes": memory.breakdown(targets, 0)["total"],
        "memory_breakdown_min": memory.breakdown(targets, max(frozen)),
        "blocks": [{"block": name, "forward_flops": f, "share": f / cost_model.dense_forward}
                   for name, f in zip(cost_model.block_names, block_flops)],
        "freeze": None, "sieve": None, "schedule": schedule, "notes": notes,
    }
    if cfg.sieve > 0:
        update_epochs = ([oneshot_epoch(cfg)] if cfg.sieve_method == "oneshot"
                         else list(range(cfg.interval, cfg.epochs, cfg.interval)))
        plan["sieve"] = {"method": cfg.sieve_method, "removed_fraction": cfg.sieve, "update_fraction": cfg.sieve_update,
                         "partial_size": partial_size(cfg, samples), "update_epochs": update_epochs,
                         "planned_saving": 1 - no_freeze / no_freeze_sieve}
    if freeze is not None:
        plan["freeze"] = {"scheme": freeze.scheme, "target": cfg.freeze, "planned_saving": freeze.saving,
                          # all FLOPs freezing saves, also the forward of MEST blocks pruned to their target
                          "planned_flops_saving": (no_freeze - train) / (no_freeze - init), "sync": cfg.freeze_sync,
                          "candidates": freeze.candidates, "parameter": freeze.parameter,
                          "finetune_from": freeze.finetune_from,
                          "events": [{"epoch": e, "block": cost_model.block_names[b], "index": b, "action": a,
                                      "forward_share": block_flops[b] / cost_model.dense_forward}
                                     for e, b, a in freeze.events]}
    return plan


def add_estimate(cfg, plan: dict) -> dict:
    """The plan with `estimated_s` (total and parts) and `estimate` (device, step times), from the run's parts
    timed on its device (spfde.planning.calibrate; cached per shape)."""
    cfg = planned_data(cfg)[0]
    times, measured = calibrate(cfg, plan["num_classes"], tuple(plan["input_shape"]), used_depths(plan))
    e = estimate(cfg, plan, times)
    plan["estimated_s"] = {"total": e["total_s"], **{k[:-2]: v for k, v in e["parts"].items()}}
    plan["estimate"] = {k: v for k, v in e.items() if k not in ("total_s", "parts")} | {
        "measured_now": measured, "cache": cfg.plan.calibration_file}
    return plan


def render_estimate(plan: dict) -> list[str]:
    t, e = plan["estimated_s"], plan["estimate"]
    steps = ", ".join(f"{k} frozen {1000 * v:.1f} ms" for k, v in sorted(e["step_s"].items()))
    source = (f"measured now ({e['measured_now']} times), cached in {e['cache']}" if e["measured_now"]
              else f"from the cache {e['cache']}")
    return [f"Estimated wall-clock on {e['device']}{' with CUDA graphs' if e['cuda_graphs'] else ''}: "
            f"{fmt_duration(t['total'])} = {t['total'] / 3600:.4g} {e['unit']} (start-up {fmt_duration(t['startup'])}, "
            f"training {fmt_duration(t['train'])}, evaluation {fmt_duration(t['eval'])}, other per-epoch work "
            f"{fmt_duration(t['epoch_work'])})",
            f"  step time by frozen blocks: {steps}; {source}"]


def fmt_flops(x: float) -> str:
    return f"{x:.4g}"


def fmt_bytes(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def fmt_change(new: float, base: float) -> str:
    """`new` against `base` as a signed percentage, "-42.7%" or "+0.3%"; a change that rounds to zero is "0.0%"
    (never "-0.0%")."""
    text = f"{100 * (new / base - 1):+.1f}%"
    return "0.0%" if text in ("+0.0%", "-0.0%") else text


def render(plan: dict) -> str:
    lines = [plan["data"],
             f"SpFDE plan: {plan['model']} on {plan['dataset']} ({plan['train_size']} training images) — "
             f"{plan['sparsity']} at sparsity {plan['ratio']:g}, {plan['epochs']} epochs x {plan['steps_per_epoch']} "
             f"steps of {plan['batch_size']}", "", "Per-block forward FLOPs (dense, per sample):",
             f"  {'block':<22}{'MFLOPs':>10}{'share':>9}"]
    for b in plan["blocks"]:
        lines.append(f"  {b['block']:<22}{b['forward_flops'] / 1e6:>10.2f}{100 * b['share']:>8.1f}%")
    lines += ["", "Training FLOPs:",
              f"  planned                         {fmt_flops(plan['train_flops'])}",
              f"  dense training                  {fmt_flops(plan['dense_train_flops'])}"
              f"   (planned = {100 * plan['train_flops'] / plan['dense_train_flops']:.1f}% of dense)",
              f"  without freezing                {fmt_flops(plan['train_flops_no_freeze'])}",
              f"  without freezing and sieving    {fmt_flops(plan['train_flops_no_freeze_sieve'])}"
              f"   (planned {fmt_change(plan['train_flops'], plan['train_flops_no_freeze_sieve'])})"]
    if plan["init_flops"]:
        lines.append(f"  of which mask selection at init {fmt_flops(plan['init_flops'])}")
    if "estimated_s" in plan:
        lines += render_estimate(plan)
    lines += [f"Inference FLOPs per sample:       {fmt_flops(plan['inference_flops'])} "
              f"(dense {fmt_flops(plan['dense_inference_flops'])})", "",
              f"Training memory (batch {plan['memory_batch']}, fp32; cost.memory={plan['memory_convention']}):"]
    for c, m in plan["memory_conventions"].items():
        lines.append(f"  {c + ' convention' + (' (used)' if c == plan['memory_convention'] else ''):<28}"
                     f"minimum {fmt_bytes(m['min_bytes'])}, average {fmt_bytes(m['avg_bytes'])}; plain DST minimum "
                     f"{fmt_bytes(m['dst_min_bytes'])} (min {fmt_change(m['min_bytes'], m['dst_min_bytes'])}, "
                     f"avg {fmt_change(m['avg_bytes'], m['dst_min_bytes'])})")
    lines += ["  most frozen, at the target density: "
              + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in plan["memory_breakdown_min"].items() if k != "total")]
    changes = []
    previous = None
    for e in plan["schedule"]:
        key = (round(e["sparsity"], 4), e["frozen_blocks"])
        if key != previous:
            changes.append(f"  from epoch {e['epoch']:>4}: sparsity {e['sparsity']:.4f}, "
                           f"frozen blocks {e['frozen_blocks']}")
            previous = key
    lines += ["", "Schedule (changes only):", *changes]
    if plan["sieve"]:
        v = plan["sieve"]
        if v["method"] == "oneshot":
            when = f"full set until epoch {v['update_epochs'][0]}, then the easiest removed for good"
        else:
            when = (f"{len(v['update_epochs'])} updates (every interval), each swapping {v['update_fraction']:g} "
                    "of the partial set")
        lines += ["", f"Data sieving: {v['method']}, {v['removed_fraction']:g} of the training set kept out "
                      f"(partial set {v['partial_size']} samples); {when}; planned saving "
                      f"{v['planned_saving']:.4f} of the FLOPs without sieving"]
    if plan["freeze"]:
        f = plan["freeze"]
        what = "frozen-window length" if f["scheme"] in ("periodic", "delayed") else "start epoch T_frz"
        lines += ["", f"Layer freezing: {f['scheme']}, target saving {f['target']:g}, planned saving "
                      f"{f['planned_saving']:.4f} of the run's FLOPs (back-propagation skipped; all FLOPs saved "
                      f"by freezing: {f['planned_flops_saving']:.4f}); {f['candidates']} candidate blocks; "
                      f"{what} = {f['parameter']}" + (f"; fine-tune from epoch {f['finetune_from']}"
                                                      if f["finetune_from"] is not None else "")
                  + ("; freeze events on multiples of interval" if f["sync"] else "")]
        lines.append(f"  {'epoch':>6}  {'action':<8}{'block':<22}{'forward share':>14}")
        for ev in f["events"][:60]:
            lines.append(f"  {ev['epoch']:>6}  {ev['action']:<8}{ev['block']:<22}{100 * ev['forward_share']:>13.1f}%")
        if len(f["events"]) > 60:
            lines.append(f"  ... {len(f['events']) - 60} more events (plan.format=json lists them all)")
    lines += [f"Note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def sweep_configs(overrides: list[str]) -> list[tuple[list[str], object]]:
    """The jobs of `-m overrides` with their checked configs, as `checked_sweep` gives them, fast: jobs that differ
    only in `key=value` overrides are made from one composition (`spfde.config.compose_config`), and the seeds of
    one configuration share its config object (that of its first seed: plans do not depend on the seed). The data,
    model and freeze checks are the plan's own (build_plan)."""
    jobs, standins = sweep_jobs(overrides)
    if standins:
        given = next(iter(standins))
        raise ConfigError(f"{given} is drawn by another sweeper during the sweep: spfde.plan -m plans the jobs of "
                          "a grid (a=1,2, choice, range, glob); plan a few of its values instead (one run each)")
    configs: dict[tuple, object] = {}  # a job's config but for its seed
    out, errors = [], []
    for job in jobs:
        seeds = [o for o in job if o.split("=", 1)[0] == "seed"]
        config = tuple(o for o in job if o not in seeds)
        try:
            if config in configs and all(isinstance(o.value(), int) for o in parse_overrides(seeds)):
                out.append((job, configs[config]))  # another seed of a checked configuration: the same config
                continue
            cfg = compose_checked(job)
        except ConfigError as e:
            errors.append((" ".join(job), str(e)))
            continue
        configs[config] = cfg
        out.append((job, cfg))
    alike = {e for _, e in errors}
    if errors and len(errors) == len(jobs) and len(alike) == 1:
        raise ConfigError(f"{alike.pop()} (all {len(jobs)} sweep jobs; nothing planned)")
    if errors:
        raise ConfigError(f"{len(errors)} of {len(jobs)} sweep jobs are invalid, nothing planned:\n  "
                          + "\n  ".join(f"job {job}: {e}" for job, e in errors))
    return out


def sweep_plans(overrides: list[str]) -> list[tuple[tuple, list, dict]]:
    """(configuration overrides, its jobs' configs, its plan) for each configuration of a sweep (seeds share one)."""
    configs: dict[tuple, list] = {}
    for job, cfg in sweep_configs(overrides):
        configs.setdefault(tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") != "seed"), []).append(cfg)
    plans, errors = [], []
    for config, members in configs.items():
        try:
            plans.append((config, members, build_plan(members[0], conventions=(members[0].cost.memory,))))
        except (ConfigError, SparsityError, FreezeError, SieveError) as e:
            errors.append((" ".join(config), str(e)))
    if errors:
        raise ConfigError(f"{len(errors)} of {len(configs)} sweep configurations cannot be planned:\n  "
                          + "\n  ".join(f"{config or '(defaults)'}: {e}" for config, e in errors))
    return plans


def plan_sweep(overrides: list[str], hydra_args: list[str] = ()) -> str:
    """Job count and total planned training FLOPs of a sweep; one plan per configuration (seeds share it). With
    plan.calibrate=true also each job's estimated wall-clock, the total device-hours and the longest job, and on
    SLURM the jobs whose estimate exceeds hydra.launcher.timeout_min."""
    plans = sweep_plans(overrides)
    jobs = sum(len(members) for _, members, _ in plans)
    calibrated = plans[0][1][0].plan.calibrate
    for _, members, plan in plans if calibrated else []:
        add_estimate(members[0], plan)  # each distinct shape and depth is timed once (the cache)
    lines = [f"{'training FLOPs':>15}{'vs dense':>10}{'memory avg':>13}" + (f"{'estimated':>12}" if calibrated else "")
             + f"{'jobs':>6}  overrides"]
    total = 0.0
    for config, members, plan in plans:
        total += plan["train_flops"] * len(members)
        shown = " ".join(config) or "(defaults)"
        share = plan["train_flops"] / plan["dense_train_flops"]
        memory = fmt_bytes(plan["memory_avg_bytes"])
        estimated = f"{fmt_duration(plan['estimated_s']['total']):>12}" if calibrated else ""
        lines.append(f"{fmt_flops(plan['train_flops']):>15}{100 * share:>9.1f}%{memory:>13}{estimated}"
                     f"{len(members):>6}  {shown}")
    lines += ["", f"{jobs} jobs ({len(plans)} configurations"
                  + (f", {jobs // len(plans)} seeds each" if jobs > len(plans) else "") + "); "
                  f"total planned training FLOPs {fmt_flops(total)}"]
    if calibrated:
        lines += sweep_hours(plans, hydra_args)
    return "\n".join(lines)


def sweep_hours(plans: list, hydra_args) -> list[str]:
    """Total device-hours, the longest job and, on SLURM, the jobs over the time limit (with the limit to use)."""
    first = plans[0][2]["estimate"]
    seconds = sum(plan["estimated_s"]["total"] * len(members) for _, members, plan in plans)
    config, _, longest = max(plans, key=lambda p: p[2]["estimated_s"]["total"])
    lines = [f"estimated on {first['device']}: {seconds / 3600:.4g} {first['unit']} in all; longest job "
             f"{fmt_duration(longest['estimated_s']['total'])} ({' '.join(config) or '(defaults)'})"]
    limit = slurm_timeout(list(plans[0][0]), hydra_args)
    if limit is not None:
        over = [(c, p) for c, _, p in plans if p["estimated_s"]["total"] > 60 * limit]
        for c, p in over:
            lines.append(f"warning: {' '.join(c) or '(defaults)'}: estimated {fmt_duration(p['estimated_s']['total'])} "
                         f"exceeds hydra.launcher.timeout_min={limit} (each seed's job is requeued and resumes); "
                         f"use hydra.launcher.timeout_min={timeout_minutes(p['estimated_s']['total'])}")
        if over:
            worst = max(p["estimated_s"]["total"] for _, p in over)
            lines.append(f"  for the whole sweep: hydra.launcher.timeout_min={timeout_minutes(worst)}")
        else:
            lines.append(f"every job's estimate is within hydra.launcher.timeout_min={limit}")
    return lines


def slurm_timeout(job: list[str], hydra_args) -> int | None:
    """hydra.launcher.timeout_min of the sweep's launcher when it submits to SLURM (launcher=slurm or a user's
    launcher config built on submitit_slurm); None for other launchers."""
    launcher = compose_config([*job, *hydra_args], with_hydra=True).hydra.launcher
    if "slurm" not in str(launcher.get("_target_", "")).lower():
        return None
    return int(launcher.timeout_min)
