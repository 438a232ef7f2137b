"""Searches of the x%+y% trade-off (`+search=pareto`, spfde's own sweeper on Optuna's ask/tell API): a small search
runs and stores its study, a relaunch continues it without training anything again (a trial a stopped launch left
running gets its finished run back), a failed trial is FAIL in the study; a budget keeps every point over it
untrained (journal storage); one search at a time per sweep directory, a box that cannot change under its study,
a damaged or older study is one line; the report's Pareto front; the precheck and the plan of a search;
`pareto_front` on hand-made groups."""

from __future__ import annotations

import csv
import json
import re

import pytest
from omegaconf import OmegaConf

from spfde.config import ConfigError
from spfde.results.pareto import pareto_front, point_label, write_pareto
from spfde.sweeps.search import check_objectives, installed, search_objectives, trial_values
from tests.helpers import NATIVE_DIGITS, REPO, lock_held_by_another_process, quick_overrides, run_cli

needs_search = pytest.mark.skipif(not installed(), reason="the search extra is not installed (pip install '.[search]')")
BOX = ["+search=pareto", "freeze=interval(0.0,0.03)"]  # 2 epochs of ResNet-8 reach 3% by freezing


# ----------------------------------------------------------------------------- the front itself


def g(acc, flops, n=1, std=0.0, **extra):
    return {"acc_mean": acc, "train_flops": flops, "seeds": n, "acc_std": std, "freeze": 0.1, "sieve": 0.2,
            "method": "mest", "ratio": 0.9, **extra}


def test_pareto_front_keeps_ties_ignores_std_and_sorts_by_flops():
    a, b = g(0.9, 10, n=3, std=0.01), g(0.9, 10)  # identical points: neither dominates the other
    better_std = g(0.8, 10, n=3, std=0.0001)  # dominated by a however small its spread
    top, cheap = g(0.95, 20), g(0.7, 5)
    same_acc_dearer = g(0.7, 6)  # as accurate as `cheap`, more FLOPs
    no_flops = g(0.99, None)
    front = pareto_front([top, better_std, a, same_acc_dearer, b, cheap, no_flops])
    assert [id(x) for x in front] == [id(cheap), id(a), id(b), id(top)]
    assert pareto_front([g(0.5, 1)]) == [g(0.5, 1)]  # one configuration (n = 1) is its own front
    assert point_label(g(0.2, 1, freeze=0.2, sieve=0.15), []) == "20%+15%"
    assert point_label(g(0.2, 1, method="rigl"), ["method", "ratio"]) == "10%+20% (rigl, 90% sparse)"


def test_pareto_csv_and_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    groups = [g(0.9, 10, n=3, std=0.01, label="A"), g(0.8, 12, n=3, std=0.02, label="B"), g(0.7, 5, label="C")]
    assert write_pareto(groups, tmp_path) == [tmp_path / "pareto.png"]
    rows = list(csv.DictReader(open(tmp_path / "pareto.csv")))
    assert [r["label"] for r in rows] == ["C", "A"] and rows[1]["n"] == "3" and float(rows[1]["acc_std"]) == 0.01
    assert (tmp_path / "pareto.pdf").stat().st_size > 0


def test_trial_values_are_what_the_sweeper_asks_for_and_never_made_up():
    summary = {"final_acc": 0.5, "train_flops": 2e9, "best_acc": float("nan")}
    assert trial_values(summary, ["final_acc", "train_flops"]) == (0.5, 2e9)
    assert trial_values(summary, ["final_acc"]) == 0.5
    with pytest.raises(ValueError, match="no finite best_acc"):
        trial_values(summary, ["best_acc"])
    assert search_objectives() is None  # outside a search (plain runs, grid sweeps): the final accuracy, as always
    hydra = OmegaConf.create({"sweeper": {"objectives": ["final_acc"], "direction": ["maximize", "minimize"]}})
    with pytest.raises(ConfigError, match=r"hydra.sweeper.objectives=\['final_acc'\] and .* one entry each"):
        check_objectives(hydra)
    hydra.sweeper.objectives = ["final_acc", "flops"]
    with pytest.raises(ConfigError, match="'flops' is not a result a trial can return; choose from final_acc,"):
        check_objectives(hydra)


# ----------------------------------------------------------------------------- before anything starts


@needs_search
@pytest.mark.slow
def test_precheck_checks_both_ends_of_the_search_box(monkeypatch):
    from spfde.checks.command_line import precheck_overrides

    precheck_overrides(["-m", *quick_overrides(), *BOX])
    with pytest.raises(ConfigError, match=r"freeze=interval\(0.0,0.5\) at freeze=0.5: freeze=0.5 cannot be reached"):
        precheck_overrides(["-m", *quick_overrides(), "+search=pareto", "freeze=interval(0.0,0.5)"])
    monkeypatch.setattr("spfde.checks.search.installed", lambda: False)
    with pytest.raises(ConfigError, match=r"^\+search=pareto needs Optuna, which is not installed: pip install 'spfde"):
        precheck_overrides(["-m", *quick_overrides(), *BOX])


@needs_search
@pytest.mark.slow
def test_plan_of_a_search_prints_its_trials_and_flops_range(capsys):
    from spfde.plan import main

    main(["-m", *quick_overrides(), *BOX, "hydra.sweeper.n_trials=6"])
    out = capsys.readouterr().out
    corners = re.findall(r"^\s+([\d.e+]+)\s+[\d.]+%\s+(freeze=\S+ sieve=\S+)$", out, re.M)
    assert [c for _, c in corners] == ["freeze=0.0 sieve=0.0", "freeze=0.0 sieve=0.3", "freeze=0.03 sieve=0.0",
                                       "freeze=0.03 sieve=0.3"]
    flops = [float(f) for f, _ in corners]
    assert "6 trials in batches of 4 (2 batches)" in out
    assert f"plans {min(flops):.4g} to {max(flops):.4g} training FLOPs" in out and min(flops) < max(flops)


# ----------------------------------------------------------------------------- a real search


def study_of(sweep_dir):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="pareto", storage=f"sqlite:///{sweep_dir}/study.db")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 4-trial search (2 per batch) on digits with the basic launcher, run once."""
    cwd = tmp_path_factory.mktemp("search")
    sweep_dir = cwd / "search"
    args = ["-m", *quick_overrides(), *BOX, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = run_cli(args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, args


@needs_search
@pytest.mark.slow
def test_search_runs_its_trials_as_run_directories_and_stores_the_study(search):
    from optuna.trial import TrialState

    sweep_dir, _ = search
    trials = study_of(sweep_dir).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # each trial is a run directory named by its values (on the 0.001 grid) with its summary
        name = f"{NATIVE_DIGITS},epochs=2,experiment=quickstart,freeze={round(t.params['freeze'], 3)!r}," \
               f"model.depth=8,sieve={round(t.params['sieve'], 3)!r}"
        assert re.fullmatch(r".*freeze=0\.\d{1,3},.*sieve=0\.\d{1,3}", name)
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert t.values == [summary["final_acc"], summary["train_flops"]]


@needs_search
@pytest.mark.slow
def test_report_front_holds_only_non_dominated_configurations(search):
    sweep_dir, _ = search
    report = sweep_dir / "report"
    groups = [{"acc": float(r["acc_mean"]), "flops": float(r["train_flops"]), "label": r["label"]}
              for r in csv.DictReader(open(report / "summary.csv"))]
    front = {r["label"] for r in csv.DictReader(open(report / "pareto.csv"))}
    assert front and (report / "pareto.png").is_file() and (report / "pareto.pdf").is_file()
    for x in groups:
        dominated = any(o["acc"] >= x["acc"] and o["flops"] <= x["flops"] and (o["acc"], o["flops"]) !=
                        (x["acc"], x["flops"]) for o in groups)
        assert (x["label"] in front) == (not dominated), x


@needs_search
@pytest.mark.slow
def test_relaunch_continues_the_study_trains_nothing_again_and_a_failed_trial_is_fail(search):
    """Relaunched with n_trials=6 after 4: two trials to go. One is a trial a stopped launch left running (with the
    values of a finished run): it is FAIL and its values run again, finding that run finished. The other's run
    directory is held by another process: that trial fails, FAIL in the study without values (not zeros)."""
    from optuna.trial import TrialState

    sweep_dir, args = search
    study = study_of(sweep_dir)
    done = study.trials[0]
    study.enqueue_trial(done.params)
    stopped = study.ask()  # left RUNNING, as by a launcher killed while the trial trained
    stopped.suggest_float("freeze", 0.0, 0.03, step=0.001)
    stopped.suggest_float("sieve", 0.0, 0.3, step=0.001)
    study.enqueue_trial({"freeze": 0.002, "sieve": 0.002})
    busy = sweep_dir / f"{NATIVE_DIGITS},epochs=2,experiment=quickstart,freeze=0.002,model.depth=8,sieve=0.002"
    busy.mkdir()
    # what only training writes (a finished run rewrites metrics.jsonl from its checkpoint when it is found again)
    written = ("*/summary.json", "*/last.pt")
    before = {p: p.stat().st_mtime_ns for w in written for p in sweep_dir.glob(w)}
    with lock_held_by_another_process(busy):
        proc = run_cli([a.replace("n_trials=4", "n_trials=6") for a in args], cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Continuing the study of 6 trials (4 finished, 1 stopped while running: their values again, 1 queued): " \
           "2 trials to go" in log
    assert "This run already finished" in log and "is in use by" in log
    trials = study_of(sweep_dir).trials
    assert len(trials) == 7 and trials[4].state == TrialState.FAIL  # the stopped one
    again = [t for t in trials[5:] if t.params == done.params]
    failed = [t for t in trials[5:] if t.params == {"freeze": 0.002, "sieve": 0.002}]
    assert again[0].state == TrialState.COMPLETE and again[0].values == done.values
    assert failed[0].state == TrialState.FAIL and failed[0].values is None
    assert len(before) == 8 and {p: p.stat().st_mtime_ns for w in written for p in sweep_dir.glob(w)} == before


# ----------------------------------------------------------------------------- budgets, locks, studies


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("spfde: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@needs_search
@pytest.mark.slow
def test_a_budget_trains_no_point_over_it_and_journal_storage_holds_the_study(tmp_path):
    """search.budget=0.8: each proposed point is planned first; one over 0.8 of the plain run's FLOPs is told to
    Optuna as infeasible (its constraint > 0, never trained: no run directory), and only points that fit train."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from spfde.config import compose_config
    from spfde.planning.plan import build_plan

    sweep_dir = tmp_path / "budget"
    args = ["-m", *quick_overrides(), *BOX, "search.budget=0.8", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3",
            f"hydra.sweeper.storage=journal:{sweep_dir}/study.log", f"hydra.sweep.dir={sweep_dir}"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = build_plan(compose_config(quick_overrides()))["train_flops_no_freeze_sieve"]
    study = optuna.load_study(study_name="pareto", storage=JournalStorage(JournalFileBackend(f"{sweep_dir}/study.log")))
    trained = [t for t in study.trials if "over_budget" not in t.user_attrs]
    over = [t for t in study.trials if "over_budget" in t.user_attrs]
    assert len(trained) == 3 and all(t.constraints["budget"] <= 0 for t in trained)
    assert over and all(t.constraints["budget"] > 0 for t in over)  # a 0.8 budget leaves part of the box out
    runs = [p for p in sweep_dir.glob("*/summary.json")]
    assert len(runs) == 3 and all(json.loads(p.read_text())["train_flops"] <= 0.8 * plain * 1.001 for p in runs)
    for t in over:
        x, y = round(t.params["freeze"], 3), round(t.params["sieve"], 3)
        assert not list(sweep_dir.glob(f"*freeze={x!r},*sieve={y!r}"))


@needs_search
@pytest.mark.slow
def test_the_plan_of_a_search_under_a_budget_shows_its_feasible_part(capsys):
    from spfde.plan import main

    main(["-m", *quick_overrides(), *BOX, "search.budget=0.8"])
    out = capsys.readouterr().out
    assert "feasible part of the box under search.budget=0.8" in out and "#" in out and "." in out.split("feasible")[1]


@pytest.mark.slow
@needs_search
def test_a_second_search_on_the_same_sweep_directory_is_refused_at_once(tmp_path):
    sweep_dir = tmp_path / "busy"
    sweep_dir.mkdir()
    with lock_held_by_another_process(sweep_dir) as holder:
        proc = run_cli(["-m", *quick_overrides(), *BOX, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert f"{sweep_dir.resolve()} is in use by PID {holder.pid}" in one_error_line(proc)
    assert not (sweep_dir / "study.db").exists()


@needs_search
@pytest.mark.slow
def test_a_relaunch_with_another_box_is_refused_naming_the_bounds(search):
    sweep_dir, args = search
    before = (sweep_dir / "study.db").read_bytes()
    proc = run_cli([a.replace("interval(0.0,0.03)", "interval(0.0,0.02)") for a in args], cwd=sweep_dir.parent)
    line = one_error_line(proc)
    assert "searched another box (freeze: interval(0.0, 0.03) on a grid of 0.001 there, interval(0.0, 0.02) on a grid" \
           in line
    assert (sweep_dir / "study.db").read_bytes() == before


OPTUNA2_STUDY = REPO / "tests" / "fixtures" / "optuna2-study.db"  # written by Optuna 2.10 (the former stack)


@pytest.mark.slow
@needs_search
def test_a_study_of_an_older_optuna_is_one_line_through_the_command(tmp_path):
    sweep_dir = tmp_path / "old"
    sweep_dir.mkdir()
    (sweep_dir / "study.db").write_bytes(OPTUNA2_STUDY.read_bytes())
    proc = run_cli(["-m", *quick_overrides(), *BOX, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    line = one_error_line(proc)
    assert f"holds a study of an older Optuna (optuna 2.10.1): upgrade it with `optuna storage upgrade --storage " \
           f"sqlite:///{sweep_dir}/study.db`" in line
    assert not list(sweep_dir.glob("epochs=*"))  # nothing trained


@pytest.mark.slow
@needs_search
@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_a_damaged_study_file_is_a_search_stop(tmp_path, content):
    """The search opens its study before anything trains; a damaged file is a SearchStop, which the command prints
    as its one line and exit 2 (as for the older study above, through the command)."""
    from omegaconf import OmegaConf

    from hydra_plugins.spfde_search._impl import Search, SearchStop

    (tmp_path / "study.db").write_bytes({"garbage": b"not a database " * 100,
                                         "truncated": OPTUNA2_STUDY.read_bytes()[:3000]}[content])
    search = object.__new__(Search)
    search.storage, search.study_name = f"sqlite:///{tmp_path}/study.db", "pareto"
    search.directions = ["maximize", "minimize"]
    search.sampler_cfg = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    with pytest.raises(SearchStop) as stop:
        search.open_study(tmp_path, {}, None)
    assert "is damaged or not a study" in str(stop.value) or "cannot be opened as a study" in str(stop.value)
    assert "move it aside" in str(stop.value) and "\n" not in str(stop.value)


@needs_search
def test_stopped_trials_are_not_counted_again_when_a_relaunch_is_stopped_too():
    """4 trials finished, 2 stopped twice in a row (each launch marks them FAIL and queues their values again): with
    n_trials=6 the stopped trials' FAIL markers are not trials, so 2 are still to go."""
    import optuna
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    from hydra_plugins.spfde_search._impl import STOPPED, Search

    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(4):
        t = study.ask()
        study.tell(t, [0.5 + i / 10, 1e9])
    search = object.__new__(Search)
    search.sampler_cfg = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    search.n_trials = 6
    for _ in range(2):  # two launches stopped while the two trials ran
        for _ in range(2):
            study.ask({"freeze": optuna.distributions.FloatDistribution(0, 0.25, step=0.001)})
        assert search.continue_study(study) == 2
    assert len(study.user_attrs[STOPPED]) == 4
    assert sum(t.state == TrialState.WAITING for t in study.trials) == 2  # their values, queued once
