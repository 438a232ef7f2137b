"""Sec. 3 analyses: CKA, structural similarity, snapshots and the figures."""

from __future__ import annotations

import math

import pytest
import torch

from spfde.analysis import gram, linear_cka, load_snapshots, pack, series, structural_similarity, unpack
from tests.helpers import crash_at_epoch, quick_overrides, read_metrics, run_cli, run_training


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_identity_orthogonal_and_scale_invariance(debiased):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = torch.randn(40, 7, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert linear_cka(gram(x), gram(x), debiased) == pytest.approx(1.0)
    assert linear_cka(gram(x @ q), gram(x), debiased) == pytest.approx(1.0)  # orthogonal transform
    assert linear_cka(gram(3.7 * x), gram(x), debiased) == pytest.approx(1.0)  # isotropic scaling
    assert linear_cka(gram(x @ q * 0.2), gram(y), debiased) == pytest.approx(linear_cka(gram(x), gram(y), debiased))
    assert 0 <= linear_cka(gram(x), gram(y), debiased=False) < 1


def test_cka_matches_a_hand_computed_example():
    # one feature each: linear CKA is the squared Pearson correlation. x = (1, 2, 3) centred (-1, 0, 1),
    # y = (1, 0, 2) centred (0, -1, 1): dot 1, norms^2 2 and 2 -> 1 / 4
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(gram(x), gram(y)) == pytest.approx(0.25)


def test_structural_similarity_extremes_and_packing():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(6, 5, 3, 3, generator=g) < 0.3
    assert torch.equal(unpack(pack(mask)), mask)
    assert structural_similarity(mask, mask) == 1.0
    assert structural_similarity(mask, ~mask) == 0.0
    half = mask.clone().flatten()
    half[half.nonzero()[::2]] = False
    assert 0.4 < structural_similarity(mask, half.view_as(mask)) < 0.6


@pytest.mark.slow
def test_snapshots_survive_a_resume(tmp_path, monkeypatch):
    overrides = quick_overrides("epochs=4", "interval=1", "analysis.every=1", "analysis.probe_size=64")
    with monkeypatch.context() as m:
        crash_at_epoch(m, 3)
        with pytest.raises(KeyboardInterrupt):
            run_training(overrides, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "analysis").glob("*.pt")}
    assert sorted(before) == ["epoch_0001.pt", "epoch_0002.pt"]
    run_training(overrides, tmp_path)
    snaps = load_snapshots(tmp_path)
    assert [s["epoch"] for s in snaps] == [1, 2, 3, 4]
    assert all((tmp_path / "analysis" / n).read_bytes() == b for n, b in before.items())
    d = series(tmp_path)
    assert all(values[-1] == pytest.approx(1.0) for values in d["cka"].values())  # final vs itself
    assert all(values[-1] == 1.0 for values in d["structural_similarity"].values())
    assert all(math.isfinite(v) for values in d["cka"].values() for v in values)
    assert any(k.startswith("grad_norm/") for k in read_metrics(tmp_path)[-1])


@pytest.mark.slow
def test_analyze_writes_the_three_figures(tmp_path, capsys):
    from spfde.analyze import main as analyze

    runs = []
    for name, extra in (("dense", ["sparsity=dense", "sparsity.ratio=0"]), ("mest", [])):
        run_training(quick_overrides("epochs=4", "interval=1", "analysis.every=1", "analysis.probe_size=64", *extra),
                     tmp_path / name)
        runs.append(str(tmp_path / name))
    proc = run_cli([*runs, "--out", str(tmp_path / "figs"), "--block", "2"], cwd=tmp_path, module="spfde.analyze")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("fig1a_structural_similarity.png", "fig1b_cka.png", "fig3b_grad_norm.png", "analysis.csv",
                 "fig1a_structural_similarity.pdf", "fig1b_cka.pdf", "fig3b_grad_norm.pdf"):
        assert (tmp_path / "figs" / name).stat().st_size > 1000, name
    # the command's errors, in this process (the command itself ran above): one line, exit status 2
    for argv, expected in (([*runs, "--out", str(tmp_path / "figs"), "--block", "5"], "--block 5 is not a block of"),
                           ([str(tmp_path)], "analysis.every")):  # depth 8: blocks 0..4; a directory without snapshots
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            analyze(argv)
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.slow
def test_fig3b_says_why_a_panel_is_empty_and_fig1a_names_the_layers_it_draws(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from spfde.results.analyses import MAX_LAYERS, plot_grad_norms, plot_structural_similarity

    a1, a2 = plot_grad_norms([3], {"conv1": [0.5], "fc": [0.2]}, "mest 90%", tmp_path / "one_epoch.png")
    assert [t.get_text() for t in a2.texts] == ["a change needs two epochs;\nthis run logged 1"]
    assert list(a2.get_xticks()) == [] and not a1.texts  # no 1.900 ... 2.100 ticks around nothing
    assert list(a1.get_xticks()) == [3]  # one epoch, one tick
    a1, a2 = plot_grad_norms([1, 2], {}, "dense", tmp_path / "none.png")
    assert all("analysis.every" in ax.texts[0].get_text() for ax in (a1, a2))
    assert (tmp_path / "none.pdf").exists()

    layers = [f"blocks.{i}.conv" for i in range(23)]
    ax = plot_structural_similarity({"epochs": [1, 2], "structural_similarity": {n: [0.5, 1.0] for n in layers}},
                                    "mest 90%", tmp_path / "fig1a.png")
    named = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(ax.get_lines()) == len(named) == MAX_LAYERS and named[0] == layers[0] and named[-1] == layers[-1]
    assert [line.get_label() for line in ax.get_lines()] == named  # every line drawn is named, no other
    assert "10 of 23" in ax.get_legend().get_title().get_text()
