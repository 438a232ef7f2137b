"""report/index.html: one page with every table and figure of a report folder, readable offline.

It takes what the folder holds when it is written (so it is written last): the notes (runs left out, damaged,
unfinished), every Markdown file's tables (table.md), every PNG figure (top level first, then sub-folders such
as timelines/) shown with <img> from beside the page, each with a link to its PDF, every CSV as a table (the
data), and links to the other files (tables.tex, ...). Plain HTML and inline CSS: no script, no network.
"""

from __future__ import annotations

import csv
import html
import re
import urllib.parse
from pathlib import Path

STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#111;line-height:1.4}h1{font-size:1.6em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top;white-space:nowrap}th{background:#eee}
tr:nth-child(even) td{background:#f7f7f7}figure{margin:1em 0 2em}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}.notes li{font-family:monospace;font-size:.85em}.scroll{overflow-x:auto}
nav a{margin-right:1em}"""


def e(text) -> str:
    return html.escape(str(text), quote=True)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def markdown_html(text: str) -> str:
    """The Markdown the report writes (### headings, pipe tables, plain lines) as HTML."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]  # the |---| rule
            out.append(html_table(cells[0], rows))
            table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            out.append(f"<h3>{e(line.lstrip('#').strip())}</h3>")
        elif line.strip():
            out.append(f"<p>{e(line)}</p>")
    flush()
    return "\n".join(out)


# a float as Python writes it into a CSV (str(float)): digits with a point, a signed exponent or both; integers and
# a run's hex id (which can read like 12e45678, but has neither point nor sign) do not match
FLOAT = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")


def readable(cell: str) -> str:
    """A CSV cell as the page shows it: a float to 4 significant digits (0.9667; from 10^4 on in e-notation, so
    FLOPs read 1.573e+11), anything else as written. The CSV files themselves keep every digit."""
    if FLOAT.fullmatch(cell) and ("." in cell or "e" in cell):
        return f"{float(cell):.4g}"
    return cell


def csv_html(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return html_table(rows[0], [[readable(c) for c in row] for row in rows[1:]]) if rows else "<p>(empty)</p>"


def url(rel: str) -> str:
    """A relative link to a file of the report: characters a URL reads otherwise (#, %, ?, spaces) escaped."""
    return e(urllib.parse.quote(rel, safe="/=,+-_.~"))


def write_index(out: Path, title: str, subtitle: str, notes: list[str]) -> Path:
    """Write out/index.html from the files in `out`."""
    tables, data = sorted(out.glob("*.md")), sorted(out.glob("*.csv"))  # the paper's tables first, the data last
    figures = sorted(out.glob("*.png")) + sorted(p for p in out.glob("*/*.png") if p.parent.name != "wandb")
    others = sorted(p for p in out.iterdir() if p.is_file() and p.suffix not in (".md", ".csv", ".png", ".pdf")
                    and p.name != "index.html")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(title)}</title>\n"
             f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n<p>{e(subtitle)}</p>",
             '<nav><a href="#notes">notes</a><a href="#tables">tables</a><a href="#figures">figures</a>'
             '<a href="#data">data</a><a href="#files">files</a></nav>',
             '<h2 id="notes">Notes</h2>']
    if notes:
        parts.append("<p>Runs left out (damaged summary, unfinished) or damaged in part:</p><ul class=\"notes\">"
                     + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    else:
        parts.append("<p>Every run found is in the report: none left out, damaged or unfinished.</p>")
    def section(paths):
        for path in paths:
            rel = path.relative_to(out).as_posix()
            parts.append(f'<h3><a href="{url(rel)}">{e(rel)}</a></h3>')
            parts.append(markdown_html(path.read_text()) if path.suffix == ".md" else csv_html(path))

    parts.append('<h2 id="tables">Tables</h2>')
    section(tables)
    parts.append('<h2 id="figures">Figures</h2>')
    for path in figures:
        rel = path.relative_to(out).as_posix()
        pdf = path.with_suffix(".pdf")
        link = f' (<a href="{url(pdf.relative_to(out).as_posix())}">PDF</a>)' if pdf.exists() else ""
        parts.append(f'<figure><img src="{url(rel)}" alt="{e(path.stem)}" loading="lazy">'
                     f"<figcaption>{e(rel)}{link}</figcaption></figure>")
    parts.append('<h2 id="data">Data</h2>')
    section(data)
    parts.append('<h2 id="files">Other files</h2><ul>'
                 + "".join(f'<li><a href="{url(p.name)}">{e(p.name)}</a></li>' for p in others) + "</ul>")
    parts.append("</body>\n</html>\n")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
