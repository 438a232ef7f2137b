"""The report groups runs by their whole result-changing config: it never averages two configurations as if
they were seeds of one, and a repeated seed is an error. Run directories are written by hand (no training)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from spfde.report import main
from spfde.results.runs import ReportError, find_runs, group, load_run
from tests.helpers import REPO, make_cfg, quick_overrides


def fake_run(root: Path, name: str, overrides: list[str], acc: float = 0.9, flops: float = 1e12,
             epochs: int = 0) -> Path:
    """A finished run as spfde.run leaves it: the resolved config.yaml and a summary.json (and, with `epochs`,
    a metrics.jsonl of that many epochs)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = make_cfg(quick_overrides(*overrides), run)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    (run / "summary.json").write_text(json.dumps({
        "final_acc": acc, "best_acc": acc, "train_flops": flops, "dense_train_flops": 2e12, "inference_flops": 1e9,
        "memory_min_bytes": 2**20, "memory_avg_bytes": 2**21, "memory_dst_min_bytes": 2**22, "train_time_s": 1.0,
        "seed": cfg.seed}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "test/acc": acc * e / epochs, "freeze/frozen_blocks": e // 2, "sieve/seen_fraction": 0.8,
         "sparsity/overall": 0.9}) + "\n" for e in range(1, epochs + 1)))
    return run


def groups_of(root: Path) -> list[dict]:
    return group([load_run(r) for r in find_runs([root])])


# one result-changing key at a time, including ones the old fixed key list did not look at
CHANGES = [["optim.lr=0.05"], ["interval=2"], ["model.depth=14"], ["model.width=2"], ["optim.weight_decay=1e-4"],
           ["dataset.image_size=12"], ["sparsity.distribution=erk"], ["batch_size=32"], ["per_block_lr=false"],
           ["sparsity.mest.mode=em"], ["sparsity.ratio=0.8"], ["sieve=0.2"], ["epochs=3"],
           ["optim.label_smoothing=0.1"], ["sparsity.masked=all"]]


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_grid_figure_has_one_line_per_x_and_vector_copies(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from spfde.results.figures import plot_acc_vs_flops, text_color, xy_grid

    for x in (0, 0.1):
        for y in (0, 0.2):
            for seed in (0, 1):
                fake_run(tmp_path / "runs", f"x{x}y{y}s{seed}", [f"freeze={x}", f"sieve={y}", f"seed={seed}",
                                                                 "epochs=30"])
    groups = groups_of(tmp_path / "runs")
    assert len(groups) == 4 and xy_grid(groups) == groups
    title, legend = plot_acc_vs_flops(groups, tmp_path / "acc_vs_flops.png")
    assert legend == ["freeze x = 0 (n=2)", "freeze x = 0.1 (n=2)", "sieve y = 0", "sieve y = 0.2"]
    assert "resnet8-w1 on digits" in title and "90%" in title
    assert (tmp_path / "acc_vs_flops.pdf").read_bytes().startswith(b"%PDF")
    assert xy_grid(groups[:3]) is None  # not a full grid: one series per row instead
    _title, legend = plot_acc_vs_flops(groups[:3], tmp_path / "rows.png")
    assert len(legend) == 3
    assert text_color((0.99, 0.9, 0.14)) == "black" and text_color((0.27, 0.0, 0.33)) == "white"  # viridis ends


def captured_figures(monkeypatch) -> list:
    """Every figure the report saves, kept open for inspection (matplotlib objects, not pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import spfde.results.figures
    import spfde.results.pareto

    figures = []
    real = spfde.results.figures.save_figure

    def keep(fig, path, dpi=150):
        real(fig, path, dpi)
        figures.append(fig)

    monkeypatch.setattr(spfde.results.figures, "save_figure", keep)
    monkeypatch.setattr(spfde.results.pareto, "save_figure", keep)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    return figures


@pytest.mark.slow
def test_one_seed_has_no_std_anywhere(tmp_path, monkeypatch):
    from spfde.results.figures import plot_heatmaps
    from spfde.results.runs import write_csv

    for x in (0, 0.1):
        for y in (0, 0.2):
            fake_run(tmp_path / "runs", f"x{x}y{y}", [f"freeze={x}", f"sieve={y}"], acc=0.5 + x + y)
    fake_run(tmp_path / "runs", "x0y0s1", ["freeze=0", "sieve=0", "seed=1"], acc=0.7)
    groups = groups_of(tmp_path / "runs")
    single = [g for g in groups if g["seeds"] == 1]
    assert len(single) == 3 and all(g["acc_std"] is None for g in single)  # undefined, not 0.0
    write_csv(tmp_path / "summary.csv", groups)
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    column = rows[0].split(",").index("acc_std")
    assert [r.split(",")[column] for r in rows[1:]].count("") == 3
    from spfde.results.runs import markdown

    table = markdown(groups)
    assert "±0.00" not in table.replace(" ", "") and table.count("±") == 2  # the two-seed cell, in both tables
    figures = captured_figures(monkeypatch)
    plot_heatmaps(groups, tmp_path)
    acc_map = figures[0].axes[0]
    cells = [t.get_text() for t in acc_map.texts]
    assert sum("±" in c for c in cells) == 1 and sum("n=2" in c for c in cells) == 1  # n differs: said per cell
    assert figures[0].axes[1].get_ylabel() == "mean test accuracy (%)"  # the colour bar says what it measures
    assert figures[1].axes[1].get_ylabel() == "training FLOPs saved vs x = y = 0 (%)"
    assert min(t.get_fontsize() for t in acc_map.texts) >= 9


@pytest.mark.slow
def test_legends_are_in_numeric_order_and_name_every_varying_key(tmp_path, monkeypatch):
    from spfde.results.figures import plot_acc_vs_flops

    for x in (0, 0.1, 0.15, 0.2):
        for y in (0, 0.2):
            fake_run(tmp_path / "grid", f"x{x}y{y}", [f"freeze={x}", f"sieve={y}"], flops=1e12 * (1 - x - y / 2))
    _title, legend = plot_acc_vs_flops(groups_of(tmp_path / "grid"), tmp_path / "grid.png")
    assert legend == ["freeze x = 0 (n=1)", "freeze x = 0.1 (n=1)", "freeze x = 0.15 (n=1)", "freeze x = 0.2 (n=1)",
                      "sieve y = 0", "sieve y = 0.2"]
    # rows of two models: each series names its model (table.md says it in the section heading)
    fake_run(tmp_path / "rows", "vgg", ["model=vgg19", "model.depth=11", "epochs=3"], flops=3e12)
    fake_run(tmp_path / "rows", "resnet", ["seed=0"], flops=1e12)
    fake_run(tmp_path / "rows", "resnet1", ["seed=1"], acc=0.8, flops=1e12)
    fake_run(tmp_path / "rows", "spfde10", ["freeze=0.1", "sieve=0.1"], flops=8e11)
    fake_run(tmp_path / "rows", "spfde5", ["freeze=0.05", "sieve=0.05"], flops=9e11)
    figures = captured_figures(monkeypatch)
    _title, legend = plot_acc_vs_flops(groups_of(tmp_path / "rows"), tmp_path / "rows.png")
    assert legend == ["MEST (EM&S) (epochs=2), resnet8-w1 (n=2)", "MEST (EM&S) (epochs=3), vgg11-w1 (n=1)",
                      "SpFDE 5%+5% (epochs=2), resnet8-w1 (n=1)", "SpFDE 10%+10% (epochs=2), resnet8-w1 (n=1)"]
    assert figures[0].axes[0].get_ylabel() == "test accuracy (%, mean ± std over seeds)"


@pytest.mark.slow
def test_log_flops_axis_labels_do_not_overlap(tmp_path, monkeypatch):
    from spfde.results.figures import plot_acc_vs_flops

    for i, flops in enumerate((1.3e10, 2.2e10, 4.7e10, 9e10, 2.1e11)):
        fake_run(tmp_path / "runs", f"r{i}", [f"sparsity.ratio=0.{5 + i}"], flops=flops)
    figures = captured_figures(monkeypatch)
    plot_acc_vs_flops(groups_of(tmp_path / "runs"), tmp_path / "acc.png")
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    renderer = figures[0].canvas.get_renderer()
    lo, hi = ax.get_xlim()
    labels = [t for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
              if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(labels) >= 2
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]


@pytest.mark.slow
def test_pareto_figure_has_the_reports_flops_axis_and_labels_that_do_not_overlap(tmp_path, monkeypatch):
    from spfde.results.pareto import plot_front

    # a crowded front: eight configurations a hair apart in FLOPs and accuracy, each one more accurate and dearer
    groups = [{"acc_mean": 0.9 + 0.001 * i, "train_flops": 1.2e11 + 1e9 * i, "seeds": 1, "acc_std": None,
               "freeze": 0.05 * i, "sieve": 0.05 * i, "method": "RigL" if i % 2 else "MEST", "ratio": 0.9}
              for i in range(8)]
    figures = captured_figures(monkeypatch)
    plot_front(groups, tmp_path / "pareto.png")
    fig = figures[0]
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_xlabel() == "training FLOPs (×e11)"  # the other figures' label (spfde.results.figures.flops_axis)
    assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e11" in the corner
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 8
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.slow
def test_timeline_has_accuracy_and_separate_axes_in_png_and_pdf(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from spfde.results.figures import plot_timeline

    run = fake_run(tmp_path, "run", ["freeze=0.1", "sieve=0.2"], epochs=4)
    labels = plot_timeline(run, tmp_path / "timeline.png")
    assert labels == ["test acc. (%)", "frozen blocks", "data seen", "sparsity"]
    assert (tmp_path / "timeline.pdf").read_bytes().startswith(b"%PDF")


def balanced(tex: str) -> None:
    """Braces balance (escaped ones aside), environments nest, and every tabular row has its column count."""
    import re

    depth = 0
    for i, c in enumerate(tex):
        if c in "{}" and tex[i - 1] != "\\":
            depth += 1 if c == "{" else -1
            assert depth >= 0, tex[max(0, i - 80):i + 1]
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack
    for spec, body in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, re.S):
        for row in body.split("\\\\\n"):
            row = re.sub(r"\\(toprule|midrule|bottomrule|cmidrule\(lr\)\{[\d-]+\})", "", row).strip()
            if row:
                spans = sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", row))
                assert len(re.findall(r"(?<!\\)&", row)) + spans == len(spec) - 1, row


@pytest.mark.slow
def tables_tex(root: Path) -> str:
    from spfde.results.tex import latex_tables

    rows = [load_run(r) for r in find_runs([root])]
    return latex_tables(group(rows), sorted({str(r["experiment"]) for r in rows}))


@pytest.mark.slow
def test_tables_tex_in_the_paper_layout_for_table2_and_table3(tmp_path):
    for ratio in (0.9, 0.95):
        for seed in (0, 1, 2):
            fake_run(tmp_path / "t2", f"mest{ratio}s{seed}", ["experiment_name=table2", f"sparsity.ratio={ratio}",
                                                             f"seed={seed}"], acc=0.7 + seed / 100)
        fake_run(tmp_path / "t2", f"set{ratio}", ["experiment_name=table2", "sparsity=set", f"sparsity.ratio={ratio}"],
                 flops=9e11)
    fake_run(tmp_path / "t2", "spfde", ["experiment_name=table2", "freeze=0.2", "sieve=0.2"], flops=7e11)
    tex = tables_tex(tmp_path / "t2")
    balanced(tex)
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 2
    paper = tex.split("\\end{table}")[0]
    assert "\\multicolumn{2}{c}{90\\%} & \\multicolumn{2}{c}{95\\%}" in paper and "FLOPs & Acc. (\\%)" in paper
    assert "MEST (EM\\&S) & 1 & 71.00 $\\pm$ 1.00 ($n=3$) & 1 & 71.00 $\\pm$ 1.00 ($n=3$) \\\\" in paper
    assert "SpFDE 20\\%+20\\% & 0.7 & 90.00 ($n=1$) &  &  \\\\" in paper  # one seed: no std; no 95% run
    assert "$\\times 10^{12}$" in paper and "resnet8-w1 on digits" in paper

    fake_run(tmp_path / "t3", "dense", ["experiment_name=table3", "sparsity=dense", "sparsity.ratio=0"], flops=3e12)
    fake_run(tmp_path / "t3", "rigl", ["experiment_name=table3", "sparsity=rigl", "sparsity.ratio=0.8"], flops=7e11)
    fake_run(tmp_path / "t3", "mest", ["experiment_name=table3", "sparsity.ratio=0.8"], flops=9e11)
    tex = tables_tex(tmp_path / "t3")
    balanced(tex)
    paper = tex.split("\\end{table}")[0]
    assert "Method & Training FLOPs ($\\times 10^{12}$) & Inference FLOPs ($\\times 10^{9}$) & Top-1 acc." in paper
    body = paper.split("\\midrule", 1)[1]
    assert body.index("Dense &") < body.index("Sparsity ratio 80\\%") < body.index("MEST (EM\\&S) & 0.9") \
        < body.index("RigL & 0.7")
    assert "one seed ($n=1$), no std" in paper and "$\\pm$" not in tex

    fake_run(tmp_path / "other", "a_b", ["optim.lr=0.05"])  # any other sweep: the grouped table only
    tex = tables_tex(tmp_path / "other")
    balanced(tex)
    assert tex.count("\\begin{table}") == 1 and "All configurations" in tex and "\\&" in tex


@pytest.mark.slow
def test_index_html_shows_every_table_and_figure_and_the_notes(tmp_path):
    from html.parser import HTMLParser

    from spfde.report import main

    root = tmp_path / "my_sweep"
    for x in (0, 0.1):
        fake_run(root, f"x{x}y0", [f"freeze={x}", "experiment_name=my_sweep"], epochs=3)
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.yaml").write_text("seed: 0\n")
    (root / "x0y0" / "metrics.jsonl").write_text((root / "x0y0" / "metrics.jsonl").read_text() + "{broken\n")
    main([str(root)])
    out = root / "report"

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs, self.tags, self.text, self.title, self.open = [], [], [], None, None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.open = tag
            self.refs += [v for k, v in attrs if k in ("src", "href") and not v.startswith("#")]

        def handle_endtag(self, tag):
            self.open = None

        def handle_data(self, data):
            self.text.append(data)
            if self.open == "title":
                self.title = data

    page = Page()
    page.feed((out / "index.html").read_text())
    assert page.title == "SpFDE report: my_sweep"
    assert "script" not in page.tags and not any(r.startswith(("http:", "https:", "//")) for r in page.refs)
    assert all((out / r).is_file() for r in page.refs), [r for r in page.refs if not (out / r).is_file()]
    pngs = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert len(pngs) == 4 and pngs <= set(page.refs)  # accuracy vs FLOPs, the Pareto front, 2 timelines
    assert {"table.md", "summary.csv", "runs.csv", "pareto.csv", "tables.tex", "pareto.pdf",
            "timelines/x0.1y0.pdf"} <= set(page.refs)
    markdown_tables = sum(line.startswith("|---") for line in (out / "table.md").read_text().splitlines())
    assert page.tags.count("table") == markdown_tables + 3  # every table of table.md, and the three CSVs
    text = " ".join(page.text)
    assert "unfinished: " in text and "damaged: " in text and "All groups" in text and "MEST (EM&amp;S)" not in text


def test_index_html_shows_csv_floats_readably_in_scrollable_tables(tmp_path):
    """The page rounds a CSV's floats to 4 significant digits (FLOPs in e-notation), leaves integers and ids as
    written and the CSV itself untouched, and puts each table in a box that scrolls sideways (wide tables)."""
    import re

    from spfde.results.html import STYLE, write_index

    csv_text = ("run_id,label,acc_mean,train_flops,memory_min_bytes,train_time_s\n"
                "12e45678,SpFDE 10%+20%,0.123456789012,157258658304.0,11106352,2.8507925590004106\n")
    (tmp_path / "runs.csv").write_text(csv_text)
    page = write_index(tmp_path, "t", "s", []).read_text()
    row = re.search(r"<tbody><tr>(.*?)</tr>", page)[1]
    assert re.findall(r"<td>(.*?)</td>", row) == ["12e45678", "SpFDE 10%+20%", "0.1235", "1.573e+11", "11106352",
                                                   "2.851"]
    assert "0.123456789012" not in page and (tmp_path / "runs.csv").read_text() == csv_text
    assert page.count("<table>") == page.count('<div class="scroll"><table>') == 1
    assert ".scroll{overflow-x:auto}" in STYLE and f"<style>{STYLE}</style>" in page


@pytest.mark.slow
def test_wandb_prints_a_sync_command_of_the_offline_run_directories(tmp_path, monkeypatch, capsys):
    """--wandb (offline): the printed `wandb sync` command names the report's run directory and the runs' own
    offline logs (`<run>/wandb/offline-run-*`), absolute and quoted as a shell needs them; not the run's files/
    sub-folder, in which `wandb sync` finds nothing to upload. The committed smoke runs serve as the sweep."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "my sweep"  # a space: the command quotes it
    shutil.copytree(REPO / "docs" / "smoke" / "runs", sweep)
    own = sweep / "freeze=0,sieve=0.2" / "wandb" / "offline-run-20250101_000000-abcd1234"  # a run's offline log
    own.mkdir(parents=True)
    (own.parent / "latest-run").symlink_to(own.name)  # wandb's link to the same run: not named twice
    main(["my sweep", "--wandb", "--no-timelines"])
    line = capsys.readouterr().out.splitlines()[-1]
    prefix, command = line.split(": to upload: ")
    assert prefix == "wandb (offline)"
    words = shlex.split(command)
    assert words[:2] == ["wandb", "sync"]
    report_run, *runs = map(Path, words[2:])
    assert report_run.parent == sweep / "report" / "wandb" and report_run.name.startswith("offline-run-")
    assert list(report_run.glob("run-*.wandb")) and runs == [own]
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(report_run)], capture_output=True,
                         text=True, timeout=120)
    assert "Would sync 1 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
