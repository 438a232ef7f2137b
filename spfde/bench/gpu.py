"""`python -m spfde.bench gpu`: where the harness's time goes on a GPU, in one process, on the configured model
(default ResNet-32 2x on CIFAR-100-shaped FakeData). For each batch size: the bare model's training step (eager, and
CUDA-graphed on CUDA) as the anchor, then the harness's own epoch loop for dense, MEST, MEST with all candidate blocks
frozen and MEST with a sieved loader, printed as img/s and ratios to the anchor with what each ran (graphed, eager or
a capture's fallback) and the backend settings all of them ran with, then the frozen speed-up, the evaluation time
against a training epoch, the capture time, and the measured training memory next to the plan's. After the first
batch size, before the others: whole MEST and SpFDE 0.2+0.2 runs, their wall-clock saving against their FLOPs saving,
their training time in parts (steady epoch time per frozen depth, update epochs, each depth's one-off first epoch)
and, from those parts, the paper's 160-epoch schedule projected: when its wall-clock saving reaches 0.9x of its
FLOPs saving. Made for a GPU; runs (slowly, without graphs) on the CPU with small sizes, e.g. `gpu
--batch-sizes 16 --train-size 64 device=cpu model.width=1 model.depth=8 dataset.test_size=64 --run-size 256
--run-epochs 4`. `--json PATH` also writes the values and ratios, rewritten after each measurement (the GPU
session's summary reads them); a measurement that fails is reported as not measured and the others still run
(`python -m spfde.bench` then exits with status 1)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import open_dict

from spfde.bench.common import (
    Report,
    apply_backend_settings,
    bare_model_img_s,
    harness_epochs,
    ratio,
    run_once,
    settings_line,
    times,
)
from spfde.config import compose_config
from spfde.planning.plan import build_plan
from spfde.training.build import resolve_device


def gpu(batch_sizes: list[int], train_size: int, steps: int, run_size: int, run_epochs: int,
        extra: list[str], json_path: str | None = None, run_interval: int | None = None) -> Report:
    """See the module doc; prints each table as soon as it is measured. Most important first: the paper's
    batch (the first size), then the MEST vs SpFDE runs, then the other batch sizes."""
    base = ["experiment=cifar100_resnet32", "dataset=fake", "dataset.num_classes=100", "dataset.test_size=10000",
            f"dataset.train_size={train_size}"]
    report = Report(json_path)
    cfg = compose_config(["logger=none", *base, *extra])
    device = resolve_device(cfg.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.emit(f"# spfde.bench gpu on {card}, torch {torch.__version__}: {cfg.model.name} (depth {cfg.model.depth}, "
                f"width {cfg.model.width}), FakeData {cfg.dataset.channels}x{cfg.dataset.image_size}x"
                f"{cfg.dataset.image_size} with {cfg.dataset.num_classes} classes, precision {cfg.precision}, "
                f"overrides {extra}")
    report.record(device=card, torch=torch.__version__, batch_sizes=batch_sizes)
    first, *others = batch_sizes
    gpu_batch(report, cfg, [*base, *extra], first, steps)
    report.attempt("MEST vs SpFDE runs", spfde_wall_clock, report, [*base, *extra], first, run_size, run_epochs,
                   run_interval or default_interval(run_epochs))
    for bs in others:
        gpu_batch(report, cfg, [*base, *extra], bs, steps)
    return report


def gpu_batch(report: Report, cfg, overrides: list[str], bs: int, steps: int) -> None:
    """One batch size: the bare model (eager, and CUDA-graphed on CUDA) against the harness's epoch loop, each
    case with the same backend settings and with what it ran (graphed, eager or a capture's fallback)."""
    with open_dict(cfg):
        cfg.batch_size = bs
    settings = apply_backend_settings(cfg)  # what every case below sets for itself; printed once, under the table
    key = f"bs{bs}"
    report.record(**{f"{key}_settings": settings})
    report.emit(f"\n## batch {bs}\n| what | img/s | vs bare graphed | vs bare eager | ran |\n|---|---|---|---|---|")
    eager = report.attempt("bare model, eager", bare_model_img_s, cfg, bs, steps, False)
    anchor = None
    if resolve_device(cfg.device).type == "cuda":
        anchor = report.attempt("bare model, CUDA graph", bare_model_img_s, cfg, bs, steps, True)
    eager_img_s, anchor_img_s = eager and eager["img_s"], anchor and anchor["img_s"]
    ref = anchor or eager  # the ratios' anchor: the graphed bare model where there is one
    ref_img_s = ref and ref["img_s"]
    case_settings = {name: r["settings"] for name, r in (("bare_eager", eager), ("bare_graphed", anchor)) if r}
    report.record(**{f"{key}_bare_eager_img_s": eager_img_s, f"{key}_bare_graphed_img_s": anchor_img_s,
                     f"{key}_bare_graphed_vs_eager": ratio(anchor_img_s, eager_img_s),
                     f"{key}_bare_anchor": "CUDA graph" if anchor else "eager",
                     f"{key}_bare_ran": ref and ref["ran"]})
    if eager:
        report.emit(f"| bare model, eager | {eager_img_s:,.0f} | {times(eager_img_s, ref_img_s)} | 1.00x | "
                    f"{eager['ran']} |")
    if anchor:
        report.emit(f"| bare model, CUDA graph | {anchor_img_s:,.0f} | 1.00x | {times(anchor_img_s, eager_img_s)} | "
                    f"{anchor['ran']} |")
    full = "harness MEST, all candidates frozen"
    cases = [("dense", "harness dense", ["sparsity=dense"], 0), ("mest", "harness MEST", [], 0),
             ("mest_frozen", full, [], "all"), ("mest_sieve", "harness MEST, sieve=0.2 loader", ["sieve=0.2"], 0)]
    runs = {}
    for name, label, more, frozen in cases:
        r = report.attempt(label, harness_epochs, [*overrides, f"batch_size={bs}", *more], frozen, name == "mest")
        if r is None:
            continue
        runs[name] = r
        case_settings[name] = r["settings"]
        note = f" ({r['frozen']} of {r['candidates']} blocks)" if frozen else ""
        report.emit(f"| {label}{note} | {r['img_s']:,.0f} | {times(r['img_s'], ref_img_s)} | "
                    f"{times(r['img_s'], eager_img_s)} | {r['ran']} |")
        report.record(**{f"{key}_{name}_img_s": r["img_s"], f"{key}_{name}_vs_bare": ratio(r["img_s"], ref_img_s),
                         f"{key}_{name}_ran": r["ran"]})
    report.emit(settings_line(settings, case_settings))
    report.record(**{f"{key}_settings_by_case": case_settings})
    unfrozen, all_frozen = runs.get("mest"), runs.get("mest_frozen")
    if unfrozen and all_frozen:
        speedup = all_frozen["img_s"] / unfrozen["img_s"]
        report.emit(f"\nall candidates frozen vs unfrozen: {speedup:.2f}x faster per image ({all_frozen['ran']} / "
                    f"{unfrozen['ran']})")
        report.record(**{f"{key}_frozen_speedup": speedup})
    if unfrozen:
        r = unfrozen
        per_epoch_50k = r["train_s"] * 50000 / r["samples"]
        share = r["eval_s"] / per_epoch_50k
        report.emit(f"evaluation of {r['test_size']} images: {r['eval_s']:.3f} s = {100 * share:.1f}% of a "
                    f"50k-image training epoch at this speed ({per_epoch_50k:.2f} s)")
        report.emit(f"capture time (MEST, one depth + evaluation): {r['capture_s']:.2f} s")
        report.record(**{f"{key}_eval_share": share, f"{key}_capture_s": r["capture_s"]})
    report.emit("\n| training memory (MiB) | measured peak | measured above the resting state | plan (total) | "
                "plan without weights |\n|---|---|---|---|---|")
    for r in (unfrozen, all_frozen):
        if r is None:
            continue
        measured = "n/a" if r["measured_peak"] is None else f"{r['measured_peak'] / 2**20:.1f}"
        above = "n/a" if r["measured_above_baseline"] is None else f"{r['measured_above_baseline'] / 2**20:.1f}"
        report.emit(f"| {r['frozen']} frozen | {measured} | {above} | {r['plan_total'] / 2**20:.1f} | "
                    f"{r['plan_non_weights'] / 2**20:.1f} |")
    if unfrozen and all_frozen and unfrozen["measured_above_baseline"]:
        got = 1 - all_frozen["measured_above_baseline"] / unfrozen["measured_above_baseline"]
        want = 1 - all_frozen["plan_non_weights"] / unfrozen["plan_non_weights"]
        report.emit(f"reduction 0 -> all frozen: measured {100 * got:.1f}% (above the resting state: weights, "
                    f"momentum, data), plan {100 * want:.1f}% (without weights): {100 * abs(got - want):.1f} points "
                    "apart")
        report.record(**{f"{key}_memory_reduction_measured": got, f"{key}_memory_reduction_planned": want})


def spfde_wall_clock(report: Report, overrides: list[str], bs: int, run_size: int, run_epochs: int,
                     interval: int) -> None:
    """Whole runs of MEST and SpFDE (sieve=0.2 freeze=0.2): wall-clock saving against FLOPs saving. A small
    test set, so that evaluation, which neither dimension shortens, does not dilute the saving. Then the same
    runs' training time in parts (`epoch_parts`) projected onto the paper's 160-epoch schedule (`steady_state`)."""
    report.emit(f"\n## MEST vs SpFDE (sieve=0.2 freeze=0.2): {run_epochs} epochs on {run_size} FakeData images, "
                f"interval {interval}")
    runs, records = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, more in (("MEST", []), ("SpFDE 0.2+0.2", ["sieve=0.2", "freeze=0.2"])):
            runs[label], records[label] = run_once([f"dataset.test_size={min(run_size, 1000)}", *overrides,
                                                    f"dataset.train_size={run_size}", f"epochs={run_epochs}",
                                                    f"interval={interval}", f"batch_size={bs}", *more],
                                                   Path(tmp) / label.split()[0])
    report.emit("| run | wall-clock s | of which capture s | training FLOPs | test acc | ran |\n"
                "|---|---|---|---|---|---|")
    for label, s in runs.items():
        report.emit(f"| {label} | {s['train_time_s']:.1f} | {s.get('cuda_graphs_capture_s', 0.0):.1f} | "
                    f"{s['train_flops']:.4g} | {s['final_acc']:.4f} | {run_ran(s)} |")
    mest, spfde = runs["MEST"], runs["SpFDE 0.2+0.2"]
    flops_saving = 1 - spfde["train_flops"] / mest["train_flops"]

    def wall(s):
        return s["train_time_s"] - s.get("cuda_graphs_capture_s", 0.0)

    wall_saving = 1 - wall(spfde) / wall(mest)
    report.emit(f"FLOPs saving {100 * flops_saving:.1f}%, wall-clock saving (capture excluded) "
                f"{100 * wall_saving:.1f}% = {wall_saving / flops_saving:.2f}x of the FLOPs saving; with capture "
                f"{100 * (1 - spfde['train_time_s'] / mest['train_time_s']):.1f}%")
    report.record(spfde_flops_saving=flops_saving, spfde_wall_saving=wall_saving,
                  spfde_wall_vs_flops=wall_saving / flops_saving,
                  spfde_capture_s=spfde.get("cuda_graphs_capture_s"), mest_capture_s=mest.get("cuda_graphs_capture_s"),
                  spfde_cuda_graphs=spfde.get("cuda_graphs"), spfde_ran=run_ran(spfde), mest_ran=run_ran(mest),
                  spfde_run_interval=interval)
    report.attempt("steady state and 160-epoch projection", steady_state, report, [*overrides, f"batch_size={bs}"],
                   run_size, (mest, records["MEST"]), (spfde, records["SpFDE 0.2+0.2"]))


PAPER_EPOCHS = 160  # the paper's CIFAR schedule (Sec. 5), at the config's interval (Δτ = 5 unless overridden)


def default_interval(run_epochs: int) -> int:
    """Δτ of the MEST and SpFDE runs unless --run-interval gives it. 12 freeze steps (ResNet-32's 11 candidate
    blocks, then all frozen) are the fewest at which freeze=0.2 is reachable, so a run of 24 epochs or more spends
    run_epochs // 12 epochs at each depth: each depth has an epoch after the one that holds its capture."""
    return max(1, run_epochs // 12)


def run_ran(summary: dict) -> str:
    """What a whole run's steps ran as, in the tables' words (summary.json says on, off or fallback: <error>)."""
    status = summary.get("cuda_graphs", "off")
    return {"on": "graphed", "off": "eager"}.get(status, status)


def is_update(record: dict) -> bool:
    """An epoch that began with a structure update (masks or sieve; their records hold the update counts)."""
    return "sparsity/updates" in record or "sieve/updates" in record


def epoch_parts(records: list[dict], graphed: bool, update_s: float | None = None, known: dict | None = None):
    """A run's per-epoch training times (metrics.jsonl: time/train_s, freeze/frozen_blocks) in parts.

    One-off epochs: the run's first and, when its steps were graphed, the first at each new frozen depth (warm-up
    steps and capture). Returns (steady, update_s, one_off):
    - steady[d]: the mean time of depth d's other epochs, its non-update ones where it has any (at interval 1
      every epoch updates: steady then includes the update); `known` gives it for depths with no other epoch;
    - update_s (given, or measured here): the mean time an update epoch takes beyond its depth's steady time,
      over the update epochs that are not one-off at depths that have non-update epochs (0 without any);
    - one_off[d]: the time of d's first epoch beyond steady[d] (and beyond update_s if it updated)."""
    seen, firsts, plain, updating = set(), {}, {}, {}
    for i, r in enumerate(records):
        d = r["freeze/frozen_blocks"]
        if i == 0 or (graphed and d not in seen):
            firsts[d] = r
        else:
            (updating if is_update(r) else plain).setdefault(d, []).append(r["time/train_s"])
        seen.add(d)
    steady = {**(known or {}), **{d: statistics.mean(plain.get(d) or updating[d]) for d in {*plain, *updating}}}
    if update_s is None:
        extra = [t - steady[d] for d, ts in updating.items() if d in plain for t in ts]
        update_s = statistics.mean(extra) if extra else 0.0
    one_off = {d: r["time/train_s"] - steady[d] - (update_s if is_update(r) else 0.0)
               for d, r in firsts.items() if d in steady}
    return steady, update_s, one_off


def project_epochs(depths: list[int], updates: list[bool], steady: dict, update_s: float,
                   one_off: dict) -> list[float]:
    """Seconds of each epoch of a planned schedule (per epoch: its frozen depth, whether it updates): its depth's
    steady time, plus update_s in an update epoch, plus the depth's one-off time in the first epoch at that depth.
    KeyError for a depth without a steady time."""
    out, seen = [], set()
    for d, update in zip(depths, updates):
        out.append(steady[d] + (update_s if update else 0.0) + (one_off.get(d, 0.0) if d not in seen else 0.0))
        seen.add(d)
    return out


def epochs_to_fraction(spfde_s: list[float], mest_s: list[float], spfde_flops: list[float],
                       mest_flops: list[float], fraction: float = 0.9) -> int | None:
    """The fewest epochs n from which on, to the schedule's end, the wall-clock saving of SpFDE's first n epochs
    against MEST's is at least `fraction` of their FLOPs saving; None (never) if the whole schedule's is not."""
    answer, totals = None, [0.0] * 4
    for n, epoch in enumerate(zip(spfde_s, mest_s, spfde_flops, mest_flops), start=1):
        totals = [t + v for t, v in zip(totals, epoch)]
        wall_spfde, wall_mest, flops_spfde, flops_mest = totals
        if 1 - wall_spfde / wall_mest < fraction * (1 - flops_spfde / flops_mest):
            answer = None
        elif answer is None:
            answer = n
    return answer


def paper_schedule(overrides: list[str], run_size: int) -> tuple[list[int], list[bool], list[float]]:
    """The planned 160-epoch run of these overrides at this run size (spfde.planning): per epoch its frozen depth,
    whether it begins with a structure update (every Δτ: MEST's masks, the sieve) and its training FLOPs."""
    cfg = compose_config(["logger=none", *overrides, f"dataset.train_size={run_size}", f"epochs={PAPER_EPOCHS}"])
    rows = build_plan(cfg, conventions=(cfg.cost.memory,))["schedule"]
    return ([r["frozen_blocks"] for r in rows], [r["epoch"] % cfg.interval == 0 for r in rows],
            [r["flops"] for r in rows])


def by_depth(values: dict) -> str:
    return ", ".join(f"{d}: {v:.3f}" for d, v in sorted(values.items())) or "none"


def steady_state(report: Report, overrides: list[str], run_size: int, mest_run: tuple, spfde_run: tuple) -> None:
    """The MEST and SpFDE runs' ((summary, records) each) training time in parts, and the projection from them
    onto the paper's 160 epochs at this run size: wall-clock saving against FLOPs saving, and after how many
    epochs the wall-clock saving reaches 0.9x of the FLOPs saving."""
    (mest, mest_records), (spfde, spfde_records) = mest_run, spfde_run
    mest_steady, update_s, mest_one_off = epoch_parts(mest_records, run_ran(mest) != "eager")
    graphed = run_ran(spfde) != "eager"
    steady = epoch_parts(spfde_records, graphed, update_s)[0]
    # SpFDE's only epoch at depth 0 may be its first (interval 1): depth 0 is MEST's step, so MEST's steady time
    borrowed = {0: mest_steady[0]} if 0 not in steady and 0 in mest_steady else {}
    steady, _, one_off = epoch_parts(spfde_records, graphed, update_s, borrowed)
    capture = {"SpFDE": spfde.get("cuda_graphs_capture_s"), "MEST": mest.get("cuda_graphs_capture_s")}
    note = " (depth 0: the MEST run's)" if borrowed else ""
    report.emit(f"steady-state training s per epoch by frozen depth (first epochs and update epochs aside), SpFDE: "
                f"{by_depth(steady)}{note}; MEST: {by_depth(mest_steady)}; an update epoch: +{update_s:.3f} s")
    report.emit(f"one-off s of each depth's first epoch (warm-up and capture), SpFDE: {by_depth(one_off)}; MEST: "
                f"{by_depth(mest_one_off)}; capture in summary.json: "
                + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f} s'}" for k, v in capture.items()))
    report.record(spfde_steady_epoch_s_by_depth={str(d): v for d, v in sorted(steady.items())},
                  mest_steady_epoch_s=mest_steady.get(0), update_epoch_extra_s=update_s,
                  spfde_one_off_s_by_depth={str(d): v for d, v in sorted(one_off.items())},
                  mest_one_off_s=mest_one_off.get(0))
    depths, updates, spfde_flops = paper_schedule([*overrides, "sieve=0.2", "freeze=0.2"], run_size)
    mest_depths, mest_updates, mest_flops = paper_schedule(overrides, run_size)
    missing = sorted({*depths, *mest_depths} - set(steady))
    if missing or 0 not in mest_steady:
        report.emit(f"{PAPER_EPOCHS}-epoch projection: not measured (no steady epoch at depth "
                    f"{', '.join(map(str, missing or [0]))}: each depth needs an epoch after its first, e.g. "
                    "--run-epochs 24)")
        return
    spfde_s = project_epochs(depths, updates, steady, update_s, one_off)
    mest_s = project_epochs(mest_depths, mest_updates, mest_steady, update_s, mest_one_off)
    wall_saving, flops_saving = 1 - sum(spfde_s) / sum(mest_s), 1 - sum(spfde_flops) / sum(mest_flops)
    n = epochs_to_fraction(spfde_s, mest_s, spfde_flops, mest_flops)
    spans = ", ".join(f"{d}: {depths.count(d)}" for d in sorted(set(depths)))
    report.emit(f"projected onto the paper's {PAPER_EPOCHS} epochs at {run_size} images (planned epochs by depth "
                f"{spans}): wall-clock saving {100 * wall_saving:.1f}% = {wall_saving / flops_saving:.2f}x of the "
                f"FLOPs saving {100 * flops_saving:.1f}%; at least 0.9x of it "
                + (f"from epoch {n} on" if n else f"never within {PAPER_EPOCHS} epochs"))
    report.record(spfde_projected_wall_saving=wall_saving, spfde_projected_flops_saving=flops_saving,
                  spfde_projected_wall_vs_flops=wall_saving / flops_saving,
                  **{"spfde_epochs_to_0.9x": n or "never"})
