"""The report groups runs by their whole result-changing config: it never averages two configurations as if
they were seeds of one, and a repeated seed is an error. Run directories are written by hand (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from spfde.report import ReportError, find_runs, group, load_run, main
from tests.helpers import make_cfg, quick_overrides


def fake_run(root: Path, name: str, overrides: list[str], acc: float = 0.9) -> Path:
    """A finished run as spfde.run leaves it: the resolved config.yaml and a summary.json."""
    run = root / name
    run.mkdir(parents=True)
    cfg = make_cfg(quick_overrides(*overrides), run)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    (run / "summary.json").write_text(json.dumps({
        "final_acc": acc, "best_acc": acc, "train_flops": 1e12, "dense_train_flops": 2e12, "memory_min_bytes": 2**20,
        "memory_avg_bytes": 2**21, "memory_dst_min_bytes": 2**22, "train_time_s": 1.0, "seed": cfg.seed}))
    return run


def groups_of(root: Path) -> list[dict]:
    return group([load_run(r) for r in find_runs([root])])


# one result-changing key at a time, including ones the old fixed key list did not look at
CHANGES = [["optim.lr=0.05"], ["interval=2"], ["model.depth=14"], ["model.width=2"], ["optim.weight_decay=1e-4"],
           ["dataset.image_size=12"], ["sparsity.distribution=erk"], ["batch_size=32"], ["per_block_lr=false"],
           ["sparsity.mest.mode=em"], ["sparsity.ratio=0.8"], ["sieve=0.2"], ["epochs=3"],
           ["optim.label_smoothing=0.1"], ["sparsity.dense_layers=[]"]]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c[0])
def test_runs_that_differ_in_one_result_changing_key_are_different_rows(tmp_path, change):
    fake_run(tmp_path, "base", ["seed=0"], acc=0.9)
    fake_run(tmp_path, "changed", ["seed=0", *change], acc=0.5)
    groups = groups_of(tmp_path)
    assert len(groups) == 2 and [g["seeds"] for g in groups] == [1, 1]
    assert sorted(g["acc_mean"] for g in groups) == [0.5, 0.9]  # never "2 seeds, 0.70 ± 0.28"
    assert len({g["label"] for g in groups}) == 2 or len({(g["model"], g["ratio"]) for g in groups}) == 2


def test_the_issue_example_is_three_configurations_not_two_seeds(tmp_path):
    fake_run(tmp_path, "a", ["seed=0"], acc=0.98)
    fake_run(tmp_path, "b", ["seed=0", "optim.lr=0.05", "interval=2", "model.depth=14"], acc=0.50)
    groups = groups_of(tmp_path)
    assert len(groups) == 2 and all(g["seeds"] == 1 for g in groups)
    assert {g["model"] for g in groups} == {"resnet8-w1", "resnet14-w1"}  # depth and width, not "resnet32"
    changed = next(g for g in groups if g["model"] == "resnet14-w1")
    assert "optim.lr=0.05" in changed["label"] and "interval=2" in changed["label"]


def test_seeds_and_keys_that_do_not_change_results_share_a_row(tmp_path):
    fake_run(tmp_path, "s0", ["seed=0"], acc=0.9)
    fake_run(tmp_path, "s1", ["seed=1", "device=auto", "logger=wandb", "logger.project=other", "threads=1"], acc=0.8)
    fake_run(tmp_path, "s2", ["seed=2", "eval_batch_size=100", "freeze_scheme=resume"], acc=0.7)  # freeze is off
    (g,) = groups_of(tmp_path)
    assert g["seeds"] == 3 and g["acc_mean"] == pytest.approx(0.8) and g["label"] == "MEST (EM&S)"
    fake_run(tmp_path, "dense0", ["seed=0", "sparsity=dense", "sparsity.ratio=0.5"])
    fake_run(tmp_path, "dense1", ["seed=1", "sparsity=dense"])  # dense ignores the ratio
    assert sorted(g["seeds"] for g in groups_of(tmp_path)) == [2, 3]


def test_a_repeated_seed_in_one_configuration_is_an_error_naming_both_runs(tmp_path, capsys):
    a = fake_run(tmp_path, "first", ["seed=0"])
    b = fake_run(tmp_path, "second", ["seed=0", "device=cpu", "logger.project=x"])
    with pytest.raises(ReportError, match="same seed 0"):
        groups_of(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--no-timelines"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("spfde: error:") and str(a) in err and str(b) in err


def test_grid_figure_has_one_line_per_x_and_vector_copies(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from spfde.report import plot_acc_vs_flops, text_color, xy_grid

    for x in (0, 0.1):
        for y in (0, 0.2):
            for seed in (0, 1):
                fake_run(tmp_path / "runs", f"x{x}y{y}s{seed}", [f"freeze={x}", f"sieve={y}", f"seed={seed}",
                                                                 "epochs=30"])
    groups = groups_of(tmp_path / "runs")
    assert len(groups) == 4 and xy_grid(groups) == groups
    title, legend = plot_acc_vs_flops(groups, tmp_path / "acc_vs_flops.png")
    assert sorted(legend) == ["freeze x = 0", "freeze x = 0.1", "sieve y = 0", "sieve y = 0.2"]
    assert "resnet8-w1 on digits" in title and "90%" in title
    assert (tmp_path / "acc_vs_flops.pdf").read_bytes().startswith(b"%PDF")
    assert xy_grid(groups[:3]) is None  # not a full grid: one series per row instead
    _title, legend = plot_acc_vs_flops(groups[:3], tmp_path / "rows.png")
    assert len(legend) == 3
    assert text_color((0.99, 0.9, 0.14)) == "black" and text_color((0.27, 0.0, 0.33)) == "white"  # viridis ends
