"""MkDocs hook of the docs site (mkdocs.yml): the configuration reference's table of every key is generated
here from the typed schema in spfde/config.py, so no key can be missing from it. The table replaces the
marker `<!-- every key -->` in configuration.md. tests/test_docs.py checks the table against the schema."""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

MARKER = "<!-- every key -->"
CONFIG_SOURCE = Path(__file__).resolve().parent.parent / "spfde" / "config.py"


def field_notes() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment that explains the field in spfde/config.py: the comment at the
    end of its line, else the comment lines right above it."""
    source = CONFIG_SOURCE.read_text()
    lines = source.splitlines()
    notes = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            line = lines[node.lineno - 1]
            note = line.split("  # ", 1)[1] if "  # " in line else ""
            if not note:
                above, i = [], node.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    above.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                note = " ".join(above)
            notes[(cls.name, node.target.id)] = note
    return notes


def schema_rows() -> list[tuple[str, str, str]]:
    """(key, default, note) for every leaf key of the schema, in the schema's order. A key the chosen option of
    a config group sets (`???` in the schema) shows the default run's value when it has one."""
    from omegaconf import MISSING, OmegaConf

    from spfde.config import Config, compose_config

    default_run = OmegaConf.to_container(compose_config([]), resolve=False)  # `python -m spfde.run` alone
    notes = field_notes()
    rows = []

    def walk(cls, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None) or (
                    f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)):
                walk(f.default_factory, key + ".")
                continue
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value is MISSING:
                chosen = default_run
                for part in key.split("."):
                    chosen = chosen.get(part, MISSING) if isinstance(chosen, dict) else MISSING
                parts = key.split(".")
                if parts[0] == "sparsity" and len(parts) > 2:  # a method's own key: its file sets it
                    shown = f"`{format_value(method_value(parts[1], key))}` (`conf/sparsity/{parts[1]}.yaml`)"
                elif key == "run_dir":
                    shown = "set at run time"
                else:
                    shown = f"set by `conf/{parts[0]}/<option>.yaml`"
                    if chosen not in (MISSING, None):
                        shown += f" (default run: `{format_value(chosen)}`)"
            else:
                shown = f"`{format_value(value)}`"
            note = next((notes[(c.__name__, f.name)] for c in cls.__mro__ if (c.__name__, f.name) in notes), "")
            rows.append((key, shown, note))

    walk(Config, "")
    return rows


@functools.cache
def method_config(method: str):
    from spfde.config import compose_config

    return compose_config([f"sparsity={method}"])


def method_value(method: str, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(method_config(method), key)


def format_value(value) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def config_reference() -> str:
    """The markdown table of every key."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = ["| key | default | what |", "|---|---|---|"]
    out += [f"| `{key}` | {cell(default)} | {cell(note)} |" for key, default, note in schema_rows()]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, config_reference())
    return markdown
