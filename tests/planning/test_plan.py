"""spfde.plan: image folders counted, signed changes, the fast sweep plan, calibrated estimates (with stand-in
measurements, and once for real), the budget solver."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

import spfde.plan
import spfde.planning.calibrate
import spfde.planning.plan
import spfde.training.build
from spfde.checks.validation import compose_checked
from spfde.config import ConfigError
from spfde.planning import budget
from spfde.planning.plan import build_plan, fmt_change, plan_sweep, render, sweep_plans
from spfde.results.pareto import pareto_front
from spfde.results.runs import find_runs, group, load_run
from spfde.training.sieve import SieveError
from tests.data.test_folders import write_folder
from tests.helpers import REPO, make_cfg, quick_overrides
from tests.results.test_report import fake_run

# ------------------------------------------------------------------ image folders are counted


@pytest.mark.slow
def test_plan_of_an_image_folder_counts_its_images_and_classes(tmp_path):
    root = write_folder(tmp_path / "f", size=(28, 28), classes=2, per_class=30)  # 60 train, 20 val images
    base = ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=28", "model=resnet32",
            "model.width=1", "model.depth=8", "epochs=2"]
    plan = build_plan(make_cfg(base))
    assert (plan["train_size"], plan["num_classes"], plan["steps_per_epoch"]) == (60, 2, 1)
    assert render(plan).splitlines()[0] == f"data: 60 training images (20 val), 2 classes, counted in {root}"
    # the FLOPs are those of 60 images, not of the config's ImageNet-sized 1,281,167
    per_image = build_plan(make_cfg([*base, "dataset=fake", "dataset.image_size=28", "dataset.train_size=60",
                                     "dataset.num_classes=2"]))["train_flops"]
    assert plan["train_flops"] == pytest.approx(per_image, rel=1e-9)
    with pytest.raises(SieveError, match="leaves 30 of 60 training samples"):  # the sieve's check counts too
        build_plan(make_cfg([*base, "sieve=0.5"]))


# ------------------------------------------------------------------ signed changes


def test_changes_print_one_sign_and_never_minus_zero():
    assert fmt_change(57.3, 100) == "-42.7%"
    assert fmt_change(100.3, 100) == "+0.3%"
    assert fmt_change(99.97, 100) == "0.0%" and fmt_change(100.04, 100) == "0.0%"
    # at the quickstart's 16x16 digits its average memory is a hair above the DST minimum
    text = render(build_plan(make_cfg(quick_overrides("dataset.image_size=16"))))
    assert "avg +0.1%" in text or "avg 0.0%" in text
    assert "--" not in text and "-0.0%" not in text


# ------------------------------------------------------------------ the fast sweep plan


@pytest.mark.slow
def test_fast_sweep_plan_gives_each_job_the_plain_plan(monkeypatch):
    sweep = [*quick_overrides("epochs=4"), "freeze=0,0.1", "sieve=0,0.2", "seed=0,1"]
    fast = sweep_plans(sweep)
    assert sum(len(members) for _, members, _ in fast) == 8 and len(fast) == 4
    monkeypatch.setattr(spfde.training.build, "_META_MODELS", {})  # nothing shared with the fast path
    monkeypatch.setattr(spfde.planning.plan, "_TABLES", {})
    for config, members, plan in fast:
        cfg = compose_checked([*config, "seed=0"])
        assert OmegaConf.to_yaml(members[0]) == OmegaConf.to_yaml(cfg)
        plain = build_plan(cfg)
        for key in ("train_flops", "train_flops_no_freeze", "train_flops_no_freeze_sieve", "dense_train_flops",
                    "memory_min_bytes", "memory_avg_bytes", "schedule", "freeze", "sieve"):
            assert plan[key] == plain[key], (config, key)
    with pytest.raises(ConfigError, match="job .*freeze=2: freeze"):  # a bad job: compose_checked's own line
        sweep_plans([*quick_overrides(), "freeze=0,2"])


# ------------------------------------------------------------------ calibrated estimates (stand-in times)

FAKE = {"startup": 2.0, "eval_image": 0.001, "epoch_update": 0.5, "epoch_other": 0.25}


@pytest.fixture
def fake_measure(monkeypatch):
    """spfde.planning.calibrate.measure with fixed times (a step at depth k takes 1 - 0.05 k s); records its calls."""
    calls = []

    def measure(cfg, classes, input_shape, depths):
        calls.append((cfg.batch_size, list(depths)))
        return {**FAKE, **{f"step@{k}": 1.0 - 0.05 * k for k in depths}}

    monkeypatch.setattr(spfde.planning.calibrate, "measure", measure)
    return calls


def test_calibrations_are_cached_per_shape_and_depth(tmp_path, fake_measure):
    cfg = make_cfg(quick_overrides(f"plan.calibration_file={tmp_path / 'c.json'}"))
    times, measured = spfde.planning.calibrate.calibrate(cfg, 10, (1, 16, 16), [0, 2])
    assert fake_measure == [(64, [0, 2])] and measured == 6 and times["step@2"] == pytest.approx(0.9)
    assert spfde.planning.calibrate.calibrate(cfg, 10, (1, 16, 16), [0, 2]) == (times, 0)  # all from the cache
    spfde.planning.calibrate.calibrate(cfg, 10, (1, 16, 16), [0, 3])  # a new depth: only it is timed
    assert fake_measure[-1] == (64, [3])
    other = make_cfg(quick_overrides(f"plan.calibration_file={tmp_path / 'c.json'}", "batch_size=32"))
    spfde.planning.calibrate.calibrate(other, 10, (1, 16, 16), [0])  # another batch: another shape
    assert fake_measure[-1] == (32, [0])
    keys = json.loads((tmp_path / "c.json").read_text())["entries"]
    assert any(k.startswith("CPU (") and "batch=64" in k and "precision=auto" in k and k.endswith("|depth=3")
               for k in keys)


def test_a_damaged_calibration_file_is_ignored_with_a_warning(tmp_path, fake_measure, caplog):
    path = tmp_path / "c.json"
    path.write_text('{"version": 1, "entries": {"x": ')
    cfg = make_cfg(quick_overrides(f"plan.calibration_file={path}"))
    times, measured = spfde.planning.calibrate.calibrate(cfg, 10, (1, 16, 16), [0])
    assert measured == 5 and "ignoring the calibration cache" in caplog.text
    assert json.loads(path.read_text())["version"] == 1  # rewritten whole


def test_json_plan_carries_the_estimate_and_its_parts(tmp_path, fake_measure, capsys):
    spfde.plan.main([*quick_overrides(), "plan.calibrate=true", "plan.format=json",
                     f"plan.calibration_file={tmp_path / 'c.json'}"])
    plan = json.loads(capsys.readouterr().out)
    t = plan["estimated_s"]
    assert set(t) == {"total", "startup", "train", "eval", "epoch_work"}
    assert t["total"] == pytest.approx(t["startup"] + t["train"] + t["eval"] + t["epoch_work"])
    # digits: 1437 images = 22 full batches of 64 and 29/64 of one, 2 epochs at depth 0; 360 test images
    assert t["train"] == pytest.approx(2 * (22 + 29 / 64) * 1.0)
    assert t["eval"] == pytest.approx(2 * 360 * 0.001) and t["startup"] == 2.0
    assert t["epoch_work"] == pytest.approx(2 * 0.25 + 2 * 0.5)  # interval 1: both epochs update
    assert plan["estimate"]["unit"] == "CPU-hours"


@pytest.mark.slow
def test_sweep_estimates_warn_about_the_slurm_time_limit(tmp_path, fake_measure, capsys):
    text = plan_sweep([*quick_overrides("epochs=4"), "freeze=0,0.1", "seed=0,1", "plan.calibrate=true",
                       f"plan.calibration_file={tmp_path / 'c.json'}", "launcher=slurm"],
                      ["hydra.launcher.timeout_min=1"])
    assert "CPU-hours in all; longest job" in text  # each job: ~4 x 22.5 steps of ~1 s, over a minute
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("exceeds hydra.launcher.timeout_min=1 " in w for w in warnings)
    assert all("use hydra.launcher.timeout_min=" in w for w in warnings)
    quiet = plan_sweep([*quick_overrides("epochs=4"), "freeze=0,0.1", "plan.calibrate=true",
                        f"plan.calibration_file={tmp_path / 'c.json'}"])  # the basic launcher: no time limit
    assert "warning" not in quiet


def test_real_calibration_times_every_part(tmp_path):
    cfg = make_cfg(quick_overrides("plan.calibration_steps=1",
                                   f"plan.calibration_file={tmp_path / 'c.json'}"))
    plan = spfde.planning.plan.add_estimate(cfg, build_plan(cfg))
    assert set(plan["estimate"]["step_s"]) == {row["frozen_blocks"] for row in plan["schedule"]}
    assert all(v > 0 for v in plan["estimated_s"].values())
    assert "Estimated wall-clock on CPU (" in render(plan)


# ------------------------------------------------------------------ the budget solver


@pytest.fixture(scope="module")
def solved():
    cfg = make_cfg(quick_overrides("epochs=4", "plan.budget=0.75"))
    return cfg, budget.solve(cfg, quick_overrides("epochs=4", "plan.budget=0.75"))


@pytest.mark.slow
def test_the_chosen_pair_meets_the_budget(solved):
    cfg, answer = solved
    choice = answer["choice"]
    assert answer["candidates"] and all(r["fraction"] <= 0.75 for r in answer["candidates"])
    again = make_cfg(quick_overrides("epochs=4", f"freeze={choice['freeze']}", f"sieve={choice['sieve']}"))
    planned = build_plan(again)
    assert planned["train_flops"] <= 0.75 * planned["train_flops_no_freeze_sieve"]
    assert planned["train_flops"] == pytest.approx(choice["train_flops"])
    # the README's rule: as even as the grid allows, then the least saving
    evenest = min(budget.unevenness(r["freeze"], r["sieve"]) for r in answer["candidates"])
    assert budget.unevenness(choice["freeze"], choice["sieve"]) == evenest
    assert choice["train_flops"] == max(r["train_flops"] for r in answer["candidates"]
                                        if budget.unevenness(r["freeze"], r["sieve"]) == evenest)
    assert choice["command"].startswith("python -m spfde.run experiment=quickstart")
    assert choice["command"].endswith(f"freeze={choice['freeze']:g} sieve={choice['sieve']:g}")


@pytest.mark.slow
def test_an_impossible_budget_names_the_smallest_reachable_fraction(solved):
    cfg = make_cfg(quick_overrides("epochs=4", "plan.budget=0.1"))
    with pytest.raises(ConfigError) as e:
        budget.solve(cfg, [])
    assert len(str(e.value).splitlines()) == 1
    assert "plan.budget=0.1 is out of reach: the smallest reachable fraction is" in str(e.value)
    rows, _ = budget.candidates(solved[0])
    assert f"{min(r['fraction'] for r in rows):.3f} of the run without freezing and sieving" in str(e.value)


@pytest.mark.slow
def test_results_pick_the_best_measured_pair_within_the_budget(solved, tmp_path):
    cfg, answer = solved
    inside = sorted(answer["candidates"], key=lambda r: r["fraction"])
    a, b = inside[0], inside[-1]
    for seed in (0, 1):  # b measured best in two seeds, a worse, and a pair out of the budget better still
        fake_run(tmp_path, f"b{seed}", [f"freeze={b['freeze']}", f"sieve={b['sieve']}", "epochs=4", f"seed={seed}"],
                 acc=0.8)
    fake_run(tmp_path, "a", [f"freeze={a['freeze']}", f"sieve={a['sieve']}", "epochs=4"], acc=0.7)
    fake_run(tmp_path, "plain", ["epochs=4"], acc=0.95)
    fake_run(tmp_path, "other", ["epochs=4", "model.width=2"], acc=0.99)  # another model: not this run's
    with_results = make_cfg(quick_overrides("epochs=4", "plan.budget=0.75", f"plan.results={tmp_path}"))
    choice = budget.solve(with_results, [])["choice"]
    assert (choice["freeze"], choice["sieve"], choice["seeds"]) == (b["freeze"], b["sieve"], 2)
    assert choice["acc_mean"] == pytest.approx(0.8) and choice["skipped_configurations"] == 1
    assert "over 2 seeds" in budget.render({**answer, "choice": choice})
    # the report's front of the same runs: b is on it exactly when the plan says so
    this_run = [g for g in group([load_run(r) for r in find_runs([tmp_path])]) if g["model"] == "resnet8-w1"]
    on_front = any(g["freeze"] == b["freeze"] and g["sieve"] == b["sieve"] for g in pareto_front(this_run))
    assert choice["on_front"] == on_front
    assert ("Pareto front" in budget.render({**answer, "choice": choice})) == on_front


@pytest.mark.slow
def test_results_takes_a_directory_named_with_equals_and_commas_as_the_shell_gives_it(tmp_path, capsys):
    """A sweep's directories are named after overrides (`epochs=2,freeze=0.1`): Hydra's grammar would read the `,`
    as a sweep list and the `=` as syntax; the plan quotes plan.results' value itself. A committed smoke run
    (config and summary, nothing trained) is the sweep's one finished run."""
    results = tmp_path / "sweeps" / "x" / "epochs=2,freeze=0.1"
    shutil.copytree(REPO / "docs" / "smoke" / "runs" / "freeze=0.1,sieve=0.2", results / "freeze=0.1,sieve=0.2")
    spfde.plan.plan_command(["+sweep=smoke", "plan.budget=0.9", f"plan.results={results}"])
    out = capsys.readouterr().out
    assert "Choice: freeze=0.1 sieve=0.2:" in out and f"finished configurations of {results} within" in out
    # quoting is idempotent, and escapes the quotes a path may hold
    assert spfde.plan.quote_results(["plan.results='a,b'", "freeze=0,0.1"]) == ["plan.results='a,b'", "freeze=0,0.1"]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for path in ("it's/a=b,c", "a\\'b", "ends\\"):
        quoted = spfde.plan.quote_results([f"plan.results={path}"])[0]
        assert OverridesParser.create().parse_override(quoted).value() == path


@pytest.mark.slow
def test_bad_plan_values_are_one_line_errors():
    for overrides, message in [(["plan.budget=1.5"], "plan.budget is a fraction"),
                               (["plan.budget_hours=2"], "plan.budget_hours needs measured step times"),
                               (["plan.results=x"], "plan.results chooses among a sweep's runs within a budget"),
                               (["plan.calibration_steps=0"], "plan.calibration_steps must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            make_cfg(quick_overrides(*overrides))


def test_command_keeps_the_overrides_but_freeze_sieve_and_plan_keys():
    line = budget.command(["experiment=quickstart", "freeze=0.3", "plan.budget=0.7", "seed=1"], 0.2, 0.15)
    assert line == "python -m spfde.run experiment=quickstart seed=1 freeze=0.2 sieve=0.15"
