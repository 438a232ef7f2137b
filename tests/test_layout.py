"""The code's layout: packages by role, imports inside functions only where they keep torch out of a command's
start-up, one error family that the commands catch. (The layers themselves: `lint-imports`, run by `make lint`.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from spfde.errors import SpfdeError, exit_on_error
from tests.helpers import REPO

PACKAGE = REPO / "spfde"
# third-party packages that make a start-up slow (seconds on a small machine) or are optional extras
HEAVY = {"torch", "torchvision", "wandb", "matplotlib", "optuna", "submitit", "nvidia", "sklearn", "numpy", "hydra",
         "omegaconf"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return []


def with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def top_level_imports(module: str) -> frozenset[str]:
    """What loading `module` imports at once: its module-level imports (not those inside functions or under
    `if TYPE_CHECKING`), and their parent packages."""
    tree = ast.parse(MODULES[module].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
            for name in imported(sub):
                names.update(with_parents(name))
    names.update(with_parents(module)[:-1])  # a module's packages load first
    return frozenset(n for n in names if n in MODULES or n.split(".")[0] not in ("spfde",))


@cache
def heavy_imports(module: str, seen: frozenset = frozenset()) -> frozenset[str]:
    """The heavy third-party packages that loading `module` brings, through the project's modules."""
    found = set()
    for name in top_level_imports(module) - seen - {module}:
        if name in MODULES:
            found |= heavy_imports(name, seen | {module})
        elif name.split(".")[0] in HEAVY:
            found.add(name.split(".")[0])
    return frozenset(found)


def local_imports(module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every project import inside a function."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.level == 0 and (sub.module or "").startswith("spfde"):
                    submodules = [f"{sub.module}.{a.name}" for a in sub.names if f"{sub.module}.{a.name}" in MODULES]
                    out += [(sub.lineno, name) for name in submodules or [sub.module]]
                elif isinstance(sub, ast.Import):
                    out += [(sub.lineno, a.name) for a in sub.names if a.name.startswith("spfde")]
    return out


def test_the_commands_that_do_not_train_load_no_torch():
    """By their module-level imports (the subprocess check of the real commands: tests/test_startup.py)."""
    for module in ("spfde.status", "spfde.report", "spfde.dashboard", "spfde.analyze", "spfde.run", "spfde.plan",
                   "spfde.bench.__main__", "spfde.checks.command_line", "spfde.results", "spfde.rundir"):
        assert not heavy_imports(module) & {"torch", "wandb"}, module


@pytest.mark.slow
def test_imports_inside_functions_only_keep_heavy_packages_out_of_start_up():
    """An import inside a function is allowed where it keeps a heavy package (torch, Hydra, matplotlib, ...) that the
    module itself does not load out of its start-up; anywhere else it would only hide an import circle (or speed
    nothing up), and belongs at the top of the module."""
    misplaced = []
    for module in sorted(MODULES):
        for line, target in local_imports(module):
            if not heavy_imports(target) - heavy_imports(module):
                misplaced.append(f"{MODULES[module].relative_to(REPO)}:{line}: {target}")
    assert not misplaced, "imports to move to the top of their module:\n" + "\n".join(misplaced)


def test_each_module_with_imports_inside_functions_says_why():
    silent = [str(MODULES[m].relative_to(REPO)) for m in MODULES if local_imports(m)
              and "start-up" not in MODULES[m].read_text() and "at start" not in MODULES[m].read_text()]
    assert not silent, f"say in a comment why these import inside functions: {silent}"


def test_every_error_that_ends_a_command_in_one_line_is_one_family():
    """Each exception class of the project that a user can cause derives from SpfdeError (the commands catch that
    base); only the code's own errors stay outside it."""
    own = {"GraphCaptureError"}  # a failed CUDA-graph capture: the step falls back to eager, or it is a bug
    outside = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name not in own:
                cls = getattr(__import__(module, fromlist=["_"]), node.name)
                if not issubclass(cls, SpfdeError):
                    outside.append(f"{module}.{node.name}")
    assert not outside, outside


def test_a_new_error_type_needs_no_change_to_the_commands(capsys):
    """Any SpfdeError raised inside a command, even of a type no command has heard of, is one line and exit 2."""

    class BrandNewError(SpfdeError):
        pass

    def work(argv):
        raise BrandNewError("something the user can fix")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_error(work)([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "spfde: error: something the user can fix\n"
    for command in ("spfde.plan", "spfde.report", "spfde.status", "spfde.dashboard", "spfde.analyze"):
        assert getattr(__import__(command, fromlist=["main"]).main, "__wrapped__", None), command


def test_lint_imports_keeps_the_layers():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_benchmarks_list_of_methods_without_torch_is_the_method_registry():
    from spfde.bench.__main__ import method_names
    from spfde.sparse import METHODS

    assert method_names() == ["dense", *sorted(m for m in METHODS if m != "dense")]



def test_every_module_imports():
    # in one fresh interpreter, each module in turn (the benchmarks and the sweep callback included, which no quick
    # test runs); a failure names the module
    code = ("import importlib, sys, traceback\n"
            f"for name in {sorted(MODULES)!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception:\n        print(name, traceback.format_exc(limit=2)); sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
