"""The command line as a user meets it: tab completion answers without loading torch."""

from __future__ import annotations

from tests.helpers import run_cli

HEAVY = ("torch", "wandb", "torchvision", "matplotlib", "spfde.train", "spfde.checkpoint", "spfde.data")


def test_tab_completion_imports_no_torch(tmp_path, monkeypatch):
    """Hydra's completion (`eval "$(spfde-run -sc install=bash)"`, then Tab) runs `spfde-run -sc query=bash` with the
    partial line in COMP_LINE at every Tab: it answers from the config alone, without torch, wandb or the training
    modules (which took ~5 s a Tab)."""
    monkeypatch.setenv("COMP_LINE", "spfde-run sparsity=r")
    monkeypatch.setenv("COMP_POINT", "20")
    proc = run_cli(["-sc", "query=bash"], cwd=tmp_path, python_flags=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["sparsity=rigl"]
    # -X importtime: one stderr line per imported module, "import time: self | cumulative | <indent>name"
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not {m for m in imported if m.startswith(HEAVY)}
