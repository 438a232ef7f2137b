"""docs/ is what `make docs-smoke` (docs/make_docs.py) makes with today's code. Training the smoke sweep again takes
minutes and its accuracies are not reproducible bit for bit (thread counts, launchers), so the test takes the
committed runs as given and checks the rest: the report made from them is the committed one, file by file, and
the runs themselves are what today's code configures and costs (result-changing config, training FLOPs, memory)."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from omegaconf import OmegaConf, open_dict

from tests.helpers import REPO

STALE = "docs/ is stale: run `make docs-smoke` (or `make docs-smoke ARGS=--report-only` for the report alone)"


def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", REPO / "docs" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_committed_report_is_what_the_report_makes_of_the_committed_runs(tmp_path):
    docs = make_docs()
    docs.report(tmp_path / "report")
    committed = REPO / docs.REPORT
    files = {p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file()}
    made = {p.relative_to(tmp_path / "report").as_posix() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert made == files, STALE
    assert {"index.html", "tables.tex", "table.md", "acc_vs_flops.pdf", "timelines/freeze=0.1,sieve=0.2.pdf"} <= made
    for name in sorted(made):  # the text outputs byte for byte; figures (fonts, matplotlib versions) by name above
        if name.endswith((".md", ".csv", ".tex", ".html", ".txt")):
            assert (tmp_path / "report" / name).read_text() == (committed / name).read_text(), f"{name}: {STALE}"


@pytest.mark.slow
def test_the_committed_runs_are_what_todays_code_configures_and_costs():
    from spfde.config import compose_config
    from spfde.planning.plan import build_plan
    from spfde.results.runs import result_config

    docs = make_docs()
    runs = sorted(p for p in (REPO / docs.RUNS).iterdir() if p.is_dir())
    assert [r.name for r in runs] == ["freeze=0,sieve=0", "freeze=0,sieve=0.2", "freeze=0.1,sieve=0",
                                      "freeze=0.1,sieve=0.2"]
    for run in runs:
        cfg = compose_config(list(OmegaConf.load(run / ".hydra" / "overrides.yaml")))
        with open_dict(cfg):
            cfg.run_dir = str(run)
        saved = OmegaConf.load(run / "config.yaml")
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        assert result_config(saved) == result_config(resolved), f"{run.name}: {STALE}"
        plan, summary = build_plan(cfg), json.loads((run / "summary.json").read_text())
        for key in ("train_flops", "dense_train_flops", "memory_min_bytes", "memory_avg_bytes", "memory_dst_min_bytes"):
            assert summary[key] == pytest.approx(plan[key], rel=1e-9), f"{run.name} {key}: {STALE}"


# ------------------------------------------------------------------------------------- the site and its pages

PAGES = sorted((REPO / "docs").glob("*.md"))


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaf_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.slow
def test_the_configuration_reference_lists_every_key_of_every_option():
    """The generated table holds every key a composed configuration has, whichever method is chosen."""
    from spfde.config import compose_config, group_options

    page = (REPO / "docs" / "configuration.md").read_text()
    hook = hooks()
    assert hook.MARKER in page
    built = hook.on_page_markdown(page, page=None)
    assert hook.MARKER not in built
    listed = set(re.findall(r"^\| `([a-z_.0-9]+)` \|", built, flags=re.M))
    for overrides in [[]] + [[f"sparsity={m}"] for m in group_options("sparsity")]:
        cfg = OmegaConf.to_container(compose_config(overrides), resolve=False)
        missing = set(leaf_keys(cfg)) - listed
        assert not missing, f"docs/configuration.md lacks {sorted(missing)} ({overrides})"
    assert {"threads", "optim.nesterov", "dataset.download"} <= listed


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `python -m spfde.run|plan` / `spfde-run|plan` line in a shell block of the
    README or a docs page (continuation lines joined, comments dropped)."""
    commands = []
    for path in [REPO / "README.md", *PAGES]:
        block, lines = None, path.read_text().splitlines()
        joined = ""
        for line in lines:
            if line.startswith("```"):
                block = None if block is not None else line[3:].strip()
                continue
            if block not in ("bash", "sh"):
                continue
            joined += line.rstrip()
            if joined.endswith("\\"):
                joined = joined[:-1] + " "
                continue
            text = re.sub(r"\s+#.*$", "", joined).strip()
            joined = ""
            if re.match(r"(python -m spfde\.(run|plan)|spfde-(run|plan))\s", text + " "):
                commands.append((path.name, text))
    return commands


@pytest.mark.slow
def test_every_documented_command_passes_the_checks_a_launch_makes(monkeypatch, tmp_path):
    """Each run/plan command of the docs passes the checks `spfde.run` makes before it starts (composition,
    validation, a search's settings), without data: the data sets are not here. Of a sweep the first and the
    last job are checked (tests/sweeps/test_sweeps.py expands and checks every job of every sweep preset)."""
    import shlex
    from functools import partial

    import spfde.checks.command_line as command_line
    from spfde.checks import validation

    monkeypatch.setattr(command_line, "check_before_work", partial(validation.check_before_work, data=False))
    monkeypatch.setattr(command_line, "checked_sweep", partial(validation.checked_sweep, data=False))
    every_job = validation.sweep_jobs

    def first_and_last(overrides):
        jobs, drawn = every_job(overrides)
        return jobs[:1] + jobs[-1:] if len(jobs) > 1 else jobs, drawn

    monkeypatch.setattr(validation, "sweep_jobs", first_and_last)
    monkeypatch.setenv("SPFDE_CONFIG_DIR", str(REPO / "docs" / "config"))  # launcher=mycluster, the docs' example
    monkeypatch.chdir(tmp_path)
    commands = documented_commands()
    assert len(commands) >= 30, "the shell blocks of the docs changed shape"
    for command, where in {command: where for where, command in reversed(commands)}.items():
        args = [a for a in shlex.split(command)[1:] if a not in ("-m", "spfde.run", "spfde.plan")]
        flags = ["-m"] if " -m " in f" {command} ".replace("python -m", "") else []
        args = [a for a in args if not a.startswith("--")]  # Hydra's own --cfg/--package print and run nothing
        try:
            command_line.precheck_overrides([*flags, *args])
        except Exception as e:  # noqa: BLE001 - the message names the command that broke
            pytest.fail(f"{where}: `{command}` fails its checks: {e}")


def test_the_readme_is_the_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 350
    for needed in ("make install", "make test", "make run", "model=resnet50 sieve=0.2 freeze=0.2",
                   "## Reproduce the paper", "arxiv.org/abs/2209.11204", "@inproceedings"):
        assert needed in readme, needed
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # every page the README names exists
        assert (REPO / link).is_file(), link
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    citation = OmegaConf.load(REPO / "CITATION.cff")
    assert citation["cff-version"] and "Layer Freezing" in citation["preferred-citation"]["title"]


def test_every_page_is_in_the_sites_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    assert {p.name for p in PAGES} <= set(re.findall(r"([a-z-]+\.md)\s*$", nav, flags=re.M))


def test_the_docs_speak_of_the_project_only():
    """No development history in the reference text: no issue numbers without a link, no folders outside the
    repository, no tools of the place it was built in, no "before" figures (those go to the changelog)."""
    stale = [r"issue #?\d+", r"\.\./shared", r"GPU-NOTES", r"give_back", r"[Ss]econd wave", r"\d s before",
             r"\(\d+ s before", r"first contact", r"lent GPU"]
    for path in [REPO / "README.md", *PAGES]:
        text = re.sub(r"\[[^\]]*\]\(https?://[^)]*\)", "", path.read_text())  # linked references are fine
        for pattern in stale:
            assert not re.search(pattern, text), f"{path.name}: {re.search(pattern, text)[0]!r}"


def test_each_tested_claim_names_its_test_and_each_named_test_exists():
    for path in [REPO / "README.md", *PAGES]:
        text = path.read_text()
        for claim in re.findall(r"\(tested[^)]*\)", text):
            assert "tests/" in claim or "::" in claim, f"{path.name}: {claim}"
        for module, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", text):
            defined = re.search(rf"^def {name}\(", (REPO / module).read_text(), flags=re.M)
            assert defined, f"{path.name} names {module}::{name}, which does not exist"
