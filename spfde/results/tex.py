"""report/tables.tex: the report's tables as LaTeX booktabs tables (needs `\\usepackage{booktabs}` and, for the
wide groups table, `graphicx`).

For the paper's Table 2 sweep (experiment_name `table2`): method rows, one column pair per sparsity ratio
(training FLOPs, accuracy ± std). For Table 3 (`table3`): method rows with training FLOPs, inference FLOPs and
top-1 accuracy, dense first, then one section per sparsity ratio. Every report also gets the grouped table (one
row per configuration). n (seeds) is in the caption when every cell has the same, otherwise in each cell; a
single seed has no ± (its std is undefined).
"""

from __future__ import annotations

from spfde.results.runs import by_keys, flops_scale, natural_key

SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
           "Δ": r"$\Delta$", "–": "--", "—": "---"}


def escape(text) -> str:
    """Plain text as LaTeX: its special characters escaped."""
    return "".join(SPECIAL.get(c, c) for c in str(text))


def acc_cell(g: dict, with_n: bool) -> str:
    """Accuracy (%) ± std (two or more seeds), n when the caption does not say it."""
    text = f"{100 * g['acc_mean']:.2f}"
    if g["acc_std"] is not None:
        text += rf" $\pm$ {100 * g['acc_std']:.2f}"
    return text + (f" ($n={g['seeds']}$)" if with_n else "")


def n_caption(groups: list[dict]) -> tuple[str, bool]:
    """The caption's words on seeds, and whether each cell must say its own n instead."""
    ns = {g["seeds"] for g in groups}
    if len(ns) > 1:
        return "mean $\\pm$ std over $n$ seeds", True
    n = ns.pop()
    return (f"mean $\\pm$ std over $n={n}$ seeds" if n > 1 else "one seed ($n=1$), no std"), False


def flops_text(value, scale: float) -> str:
    return f"{value / scale:.3g}" if value else "n/a"


def exponent(unit: str) -> str:
    """flops_scale's "×e15" as LaTeX."""
    return rf"$\times 10^{{{unit[2:]}}}$"


def table(caption: str, label: str, spec: str, head: list[str], rows: list[str], wide: bool = False) -> str:
    body = "\n".join(head + [r"\midrule"] + rows)
    tabular = f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n{body}\n\\bottomrule\n\\end{{tabular}}"
    if wide:
        tabular = f"\\resizebox{{\\textwidth}}{{!}}{{%\n{tabular}}}"
    return (f"\\begin{{table}}[t]\n\\centering\n\\caption{{{caption}}}\n\\label{{{label}}}\n{tabular}\n"
            f"\\end{{table}}\n")


def slug(*parts) -> str:
    return "-".join("".join(c if c.isalnum() else "-" for c in str(p)) for p in parts)


def ratio_columns(groups: list[dict], experiment: str) -> list[str]:
    """Table 2's layout, one table per model and dataset: method rows, per ratio the training FLOPs and the
    accuracy."""
    tables = []
    for (dataset, model), members in by_keys(groups, ("dataset", "model")).items():
        ratios = sorted({g["ratio"] for g in members if g["ratio"] is not None})
        scale, unit = flops_scale([g["train_flops"] for g in members])
        seeds, per_cell = n_caption(members)
        head = ["Method & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{100 * r:g}\%}}" for r in ratios) + r" \\",
                " ".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(ratios))),
                " & " + " & ".join(["FLOPs & Acc. (\\%)"] * len(ratios)) + r" \\"]
        rows = []
        for (name,), rs in sorted(by_keys(members, ("label",)).items(), key=lambda item: natural_key(item[0][0])):
            cells = []
            for r in ratios:
                match = [g for g in rs if g["ratio"] == r]
                cells += ([flops_text(match[0]["train_flops"], scale), acc_cell(match[0], per_cell)] if match
                          else ["", ""])
            rows.append(escape(name) + " & " + " & ".join(cells) + r" \\")
        caption = (f"{escape(model)} on {escape(dataset)}: training FLOPs ({exponent(unit)}) and test accuracy "
                   f"(\\%, {seeds}) per sparsity ratio.")
        tables.append(table(caption, f"tab:{slug(experiment, model, dataset)}", "l" + "rr" * len(ratios), head, rows))
    return tables


def method_rows(groups: list[dict], experiment: str) -> list[str]:
    """Table 3's layout, one table per model and dataset: dense first, then a section per sparsity ratio; method
    rows with training FLOPs, inference FLOPs and top-1 accuracy."""
    tables = []
    for (dataset, model), members in by_keys(groups, ("dataset", "model")).items():
        train_scale, train_unit = flops_scale([g["train_flops"] for g in members])
        infer_scale, infer_unit = flops_scale([g["inference_flops"] for g in members])
        seeds, per_cell = n_caption(members)
        head = [rf"Method & Training FLOPs ({exponent(train_unit)}) & Inference FLOPs ({exponent(infer_unit)}) & "
                r"Top-1 acc. (\%) \\"]
        rows = []
        for (ratio,), rs in sorted(by_keys(members, ("ratio",)).items(), key=lambda item: item[0][0] or 0):
            if ratio:
                heading = rf"\multicolumn{{4}}{{c}}{{Sparsity ratio {100 * ratio:g}\%}} \\"
                rows += ([r"\midrule"] if rows else []) + [heading, r"\midrule"]
            for g in sorted(rs, key=lambda g: (-(g["train_flops"] or 0), natural_key(g["label"]))):
                rows.append(f"{escape(g['label'])} & {flops_text(g['train_flops'], train_scale)} & "
                            f"{flops_text(g['inference_flops'], infer_scale)} & {acc_cell(g, per_cell)} \\\\")
        caption = f"{escape(model)} on {escape(dataset)}: training and inference FLOPs, top-1 accuracy ({seeds})."
        tables.append(table(caption, f"tab:{slug(experiment, model, dataset)}", "lrrr", head, rows))
    return tables


def groups_table(groups: list[dict]) -> str:
    """Every configuration of the report, one row each (table.md's "All groups")."""
    scale, unit = flops_scale([g["train_flops"] for g in groups])
    seeds, _ = n_caption(groups)  # the table has an n column
    head = [r"Label & Model & Dataset & Sparsity & Freeze $x$ & Scheme & Sieve $y$ & Sieve method & $n$ & Acc. (\%) & "
            rf"Train FLOPs ({exponent(unit)}) & Memory min / avg (MiB) & Time (s) \\"]
    rows = []
    for g in groups:
        mem = (f"{g['memory_min_bytes'] / 2**20:.1f} / {g['memory_avg_bytes'] / 2**20:.1f}"
               if g["memory_min_bytes"] else "")
        ratio = f"{100 * g['ratio']:g}\\%" if g["ratio"] is not None else ""
        time = f"{g['train_time_s']:.1f}" if g["train_time_s"] is not None else ""
        cells = [escape(g["label"]), escape(g["model"]), escape(g["dataset"]), ratio, f"{g['freeze']:g}",
                 escape(g["freeze_scheme"] if g["freeze"] else "--"), f"{g['sieve']:g}",
                 escape(g["sieve_method"] if g["sieve"] else "--"), str(g["seeds"]), acc_cell(g, False),
                 flops_text(g["train_flops"], scale), mem, time]
        rows.append(" & ".join(cells) + r" \\")
    caption = f"All configurations of the report: test accuracy (\\%, {seeds}), training cost and memory."
    return table(caption, "tab:all-groups", "lllrrlrlrrrrr", head, rows, wide=True)


def latex_tables(groups: list[dict], experiments: list[str]) -> str:
    """tables.tex: the paper's layout for a table2/table3 sweep, then the grouped table."""
    parts = ["% SpFDE report tables: \\usepackage{booktabs} (and graphicx for the wide table)\n"]
    if experiments == ["table2"]:
        parts += ratio_columns(groups, "table2")
    elif experiments == ["table3"]:
        parts += method_rows(groups, "table3")
    parts.append(groups_table(groups))
    return "\n".join(parts)
