"""The GPU session's summary block: every ratio that docs/gpu.md ("Speed on a GPU") asks for, each speed ratio
with what ran for it (graphed, eager or fallback: <error>), read from the files that the steps of
tests/gpu/session.sh wrote under OUT. Whatever a step did not write (it did not
run, failed or ran out of time) shows as "not measured": this script never fails on a missing file or key,
and imports neither torch nor the project, so it takes well under a second.

    python tests/gpu/summary.py OUT
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

NOT = "not measured"
# torchrun with one process must give the same results as a plain run: these keys of summary.json, and not
# times, memory peaks, capture time, run ids or directories, which differ between any two runs
RESULT_KEYS = ("final_acc", "best_acc", "final_acc5", "final_loss", "final_sparsity", "train_flops",
               "dense_train_flops", "inference_flops", "flops_saved_sparsity", "flops_saved_freezing",
               "flops_saved_sieving", "freeze_planned_saving", "sieve_seen_fraction")


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def times(value) -> str:
    return NOT if value is None else f"{value:.2f}x"


def percent(value) -> str:
    return NOT if value is None else f"{100 * value:.1f}%"


def seconds(value) -> str:
    return NOT if value is None else f"{value:.1f} s"


def pytest_counts(path: Path) -> str:
    """From pytest's --junitxml file: passed, failed, errors, skipped."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return NOT
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"


def same_results(a: dict, b: dict) -> str:
    """Whether two runs' summary.json agree on every result key (exactly: same seed, deterministic=true)."""
    if not a or not b:
        return NOT
    keys = [k for k in RESULT_KEYS if k in a or k in b]
    differ = [f"{k} {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)]
    return f"no: {'; '.join(differ)}" if differ else f"yes ({len(keys)} result keys equal)"


def step_times(path: Path) -> str:
    """`name exit seconds` lines that session.sh writes after each step."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return NOT
    return ", ".join(f"{name} exit {rc} in {s} s" for name, rc, s in rows)


def ran(value: str, *what) -> str:
    """A measured ratio with what ran for it (graphed, eager or fallback: <error>), as the benchmarks recorded it."""
    return value if value == NOT or not what else f"{value} ({' / '.join(str(w or '?') for w in what)})"


def harness(g: dict, k: str, case: str) -> str:
    """A harness case's ratio to the bare model at one batch size (k: bs64), with what it ran."""
    return ran(times(g.get(f"{k}_{case}_vs_bare")), g.get(f"{k}_{case}_ran"))


def by_depth(values) -> str:
    return NOT if not values else ", ".join(f"{d}: {v:.3f}" for d, v in sorted(values.items(), key=lambda i: int(i[0])))


def bound(d: dict, key: str) -> str:
    """The loader alone and the step alone (img/s), and which of them bounds the case."""
    loader, step = d.get(f"{key}_loader_only_img_s"), d.get(f"{key}_step_only_img_s")
    return NOT if loader is None or step is None else f"{loader:,.0f} / {step:,.0f}: {d.get(f'{key}_bound')}"


def settings(common: dict | None, by_case: dict | None) -> str:
    """The backend settings every case of a table ran with, and any case that ran with others."""
    if not common:
        return NOT
    text = ", ".join(f"{k}={v}" for k, v in common.items())
    differ = [name for name, s in (by_case or {}).items() if s != common]
    return text + (f"; DIFFERENT in: {', '.join(differ)}" if differ else " (every case)")


def summary_lines(out: Path) -> list[str]:
    g, d = load(out / "bench-gpu.json"), load(out / "bench-data.json")
    rows = [("steps", step_times(out / "steps.tsv")),
            ("pytest tests/test_gpu.py + GPU decode test", pytest_counts(out / "tests.xml"))]
    for bs in g.get("batch_sizes") or [64, 512]:
        k = f"bs{bs}"
        bare = f"bare model ({g.get(f'{k}_bare_ran') or g.get(f'{k}_bare_anchor', 'CUDA graph')})"
        measured, planned = g.get(f"{k}_memory_reduction_measured"), g.get(f"{k}_memory_reduction_planned")

        rows += [(f"batch {bs}: backend settings", settings(g.get(f"{k}_settings"), g.get(f"{k}_settings_by_case"))),
                 (f"batch {bs}: harness dense / {bare}", harness(g, k, "dense")),
                 (f"batch {bs}: harness MEST / {bare}", harness(g, k, "mest")),
                 (f"batch {bs}: harness MEST, sieve=0.2 loader / {bare}", harness(g, k, "mest_sieve")),
                 (f"batch {bs}: bare model, CUDA graph / eager",
                  ran(times(g.get(f"{k}_bare_graphed_vs_eager")), "graphed", "eager")),
                 (f"batch {bs}: all candidates frozen / unfrozen, img/s",
                  ran(times(g.get(f"{k}_frozen_speedup")), g.get(f"{k}_mest_frozen_ran"), g.get(f"{k}_mest_ran"))),
                 (f"batch {bs}: memory reduction 0 -> all frozen, measured / planned",
                  NOT if measured is None else f"{percent(measured)} / {percent(planned)}"),
                 (f"batch {bs}: capture time, MEST (one depth + evaluation)", seconds(g.get(f"{k}_capture_s"))),
                 (f"batch {bs}: evaluation / a 50k-image training epoch", percent(g.get(f"{k}_eval_share")))]
    wall, flops = g.get("spfde_wall_saving"), g.get("spfde_flops_saving")
    wall_vs_flops = NOT if wall is None else f"{times(g['spfde_wall_vs_flops'])} ({percent(wall)} / {percent(flops)})"
    steady, mest_steady = g.get("spfde_steady_epoch_s_by_depth"), g.get("mest_steady_epoch_s")
    projected = g.get("spfde_projected_wall_saving")
    rows += [("SpFDE 0.2+0.2 vs MEST: wall-clock saving / FLOPs saving",
              ran(wall_vs_flops, *((g["spfde_ran"], g.get("mest_ran")) if "spfde_ran" in g else ()))),
             ("capture time, SpFDE 0.2+0.2 run / MEST run", NOT if g.get("spfde_capture_s") is None
              else f"{seconds(g['spfde_capture_s'])} / {seconds(g.get('mest_capture_s'))}"),
             ("SpFDE run: steady s per epoch by frozen depth (MEST's)",
              NOT if not steady or mest_steady is None else f"{by_depth(steady)} ({mest_steady:.3f})"),
             ("SpFDE run: one-off s of each depth's first epoch", by_depth(g.get("spfde_one_off_s_by_depth"))),
             ("SpFDE, 160 epochs projected: wall-clock saving / FLOPs saving", NOT if projected is None
              else f"{times(g.get('spfde_projected_wall_vs_flops'))} ({percent(projected)} / "
                   f"{percent(g.get('spfde_projected_flops_saving'))})"),
             ("SpFDE, 160 epochs projected: epochs to 0.9x of the FLOPs saving",
              str(g.get("spfde_epochs_to_0.9x", NOT)))]
    model = d.get("model", "model")
    rows += [("folder loaders: backend settings", settings(d.get("settings"), d.get("settings_by_case")))]
    for loader in ("pil", "gpu", "dali"):
        rows += [(f"folder loader {loader} / bare {model}",
                  ran(times(d.get(f"loader_{loader}_vs_bare")), d.get(f"loader_{loader}_ran"))),
                 (f"folder loader {loader}: loader alone / step alone, img/s", bound(d, f"loader_{loader}"))]
    runs = out / "torchrun1"
    best = d.get("fastest_loader", "?")
    rows += [(f"epoch time, 0 / all candidates frozen (loader {best})",
              ran(times(d.get("frozen_epoch_speedup")), d.get(f"loader_{best}_ran"), d.get("frozen_ran"))),
             (f"all candidates frozen (loader {best}): loader alone / step alone, img/s", bound(d, "frozen")),
             ("torchrun with one process == plain run",
              same_results(load(runs / "torchrun" / "summary.json"), load(runs / "plain" / "summary.json")))]
    device = g.get("device") or d.get("device") or "?"
    width = max(len(label) for label, _ in rows)
    return [f"===== GPU session summary: {device}, torch {g.get('torch') or d.get('torch') or '?'} =====",
            *(f"{label:<{width}}  {value}" for label, value in rows), "====="]


if __name__ == "__main__":
    print("\n".join(summary_lines(Path(sys.argv[1]))))
