"""`make docs-smoke`: regenerate everything under docs/ that the code generates (docs/config/ is written by hand).

  docs/smoke/runs/<run>/    the smoke sweep's finished runs (config.yaml, summary.json, metrics.jsonl and Hydra's
                            overrides.yaml; no checkpoint or wandb files), trained afresh: `python -m spfde.run -m
                            +sweep=smoke` into a temporary sweep directory, run_dir rewritten to the path here
  docs/smoke/report/        `python -m spfde.report docs/smoke/runs --out docs/smoke/report`: every report output
  docs/smoke/dashboard.json `python -m spfde.dashboard smoke` (offline spec, no API call)
  docs/smoke/report.png     a screenshot of report/index.html, only where `chromium` is installed (otherwise the
                            committed one stays; nothing else needs chromium)

`--report-only` keeps the committed runs and redoes the rest (seconds instead of minutes). tests/test_docs.py
checks that what is committed is what this script makes from the committed runs, and that those runs are what
today's code configures and costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = Path("docs/smoke")  # relative to REPO: the report names its runs by the paths it is given
RUNS = SMOKE / "runs"
REPORT = SMOKE / "report"
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", ".hydra/overrides.yaml")
sys.path.insert(0, str(REPO))  # this checkout's spfde, whichever one the environment has installed


def env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": ""}


def train_smoke(sweep_dir: Path) -> None:
    subprocess.run([sys.executable, "-m", "spfde.run", "-m", "+sweep=smoke", f"hydra.sweep.dir={sweep_dir}"],
                   cwd=REPO, env=env(), check=True)


def copy_runs(sweep_dir: Path) -> list[str]:
    """The sweep's runs into docs/smoke/runs, with run_dir pointing there (no path of this machine)."""
    from omegaconf import OmegaConf, open_dict

    shutil.rmtree(REPO / RUNS, ignore_errors=True)
    names = []
    for summary in sorted(sweep_dir.glob("*/summary.json")):
        src, name = summary.parent, summary.parent.name
        dst = REPO / RUNS / name
        (dst / ".hydra").mkdir(parents=True)
        for f in RUN_FILES:
            shutil.copyfile(src / f, dst / f)
        cfg = OmegaConf.load(dst / "config.yaml")
        with open_dict(cfg):
            cfg.run_dir = str(RUNS / name)
        OmegaConf.save(cfg, dst / "config.yaml")
        data = json.loads((dst / "summary.json").read_text())
        data["run_dir"] = str(RUNS / name)
        (dst / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        names.append(name)
    return names


def report(out: Path) -> None:
    """The report of the committed runs, written into `out` (emptied first: no stale file stays)."""
    from spfde.report import main

    shutil.rmtree(out, ignore_errors=True)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        main([str(RUNS), "--out", str(out)])
    finally:
        os.chdir(cwd)


def without_ids(node):
    """A dashboard spec without its panel ids, which are random on every build."""
    if isinstance(node, dict):
        return {k: without_ids(v) for k, v in node.items() if k != "__id__"}
    return [without_ids(v) for v in node] if isinstance(node, list) else node


def dashboard() -> None:
    """The smoke sweep's dashboard spec; the committed file stays when only its random panel ids would change."""
    path = REPO / SMOKE / "dashboard.json"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "spfde.dashboard", "smoke", "--out", f"{tmp}/dashboard.json"],
                       cwd=REPO, env=env(), check=True)
        made = Path(tmp, "dashboard.json").read_text()
    if not path.exists() or without_ids(json.loads(made)) != without_ids(json.loads(path.read_text())):
        path.write_text(made)
        print(f"dashboard spec -> {SMOKE / 'dashboard.json'}")


def screenshot() -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print(f"chromium is not installed: {SMOKE / 'report.png'} stays as it is")
        return
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={REPO / SMOKE / 'report.png'}", "--window-size=1200,2200",
                    (REPO / REPORT / "index.html").as_uri()], check=True, capture_output=True)
    print(f"screenshot -> {SMOKE / 'report.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true", help="keep the committed runs (no training)")
    args = parser.parse_args(argv)
    if not args.report_only:
        with tempfile.TemporaryDirectory() as tmp:
            train_smoke(Path(tmp) / "smoke")
            print("runs ->", ", ".join(copy_runs(Path(tmp) / "smoke")))
    report(REPO / REPORT)
    dashboard()
    screenshot()


if __name__ == "__main__":
    main()
