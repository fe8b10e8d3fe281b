"""Renderers: one report (header + tables + figures) as Markdown, LaTeX, self-contained HTML, or CSV."""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .design import Design
from .load import LONG_COLUMNS, Run
from .sections import SECTIONS, Context
from .stats import CORRECTIONS, TESTS
from .table import Options, Table, resolve
from .views import load_view, section_statistics


@dataclass
class Report:
    title: str
    header: list[str]
    warnings: list[str]
    tables: list[Table]
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_specs: list[tuple[str, Callable[[], bytes | None]]] = field(default_factory=list)


def numerics(run: Run) -> str:
    """Whether the finished cells ran with autocast, compiled, and with deterministic algorithms — a CUDA run
    that was not deterministic cannot be expected to reproduce bit for bit."""
    results = [run.result(k) for k in run.cells[run.cells.status == "done"].key]
    if not results:
        return "Numerics: no finished cell"
    cuda = [r for r in results if r.device.startswith("cuda")]
    amps = sorted({r.amp for r in results})
    det = sum(r.deterministic for r in results)
    text = f"Numerics: AMP {', '.join(amps)}; compiled {sum(r.compiled for r in results)} of {len(results)} cells; "
    text += f"deterministic algorithms in {det} of {len(results)} cells"
    threads = sorted({r.threads for r in results if r.threads})
    if threads:
        text += f"; CPU threads per training process: {', '.join(map(str, threads))}"
    if cuda:
        cuda_det = sum(r.deterministic for r in cuda)
        text += (
            f"; CUDA runs deterministic: {'yes' if cuda_det == len(cuda) else 'no'} ({cuda_det} of "
            f"{len(cuda)}){'' if cuda_det == len(cuda) else ' — reruns may differ in the last digits'}"
        )
    else:
        text += "; no CUDA run (CPU runs are deterministic)"
    return text


def build(run: Run, opts: Options, with_test=True) -> Report:
    opts = resolve(run, opts)
    counts = run.counts
    meta, suite = run.meta, run.suite
    design = Design.of(run, opts)
    ds = meta.get("dataset") or {}
    first_done = run.cells[run.cells.status == "done"].key
    res = run.result(first_done.iloc[0]) if len(first_done) else None
    versions = ", ".join(f"{k} {v}" for k, v in (res.versions if res else {}).items())
    header = [
        f"Dataset: {ds.get('name')} ({ds.get('images')} images, {ds.get('patients')} patients, class counts "
        f"{ds.get('class_counts')}, {ds.get('n_test')} held-out test images)",
        f"Protocol: {suite.protocol.kind} — {meta.get('split_kind')} splits, {meta.get('n_folds')} folds, "
        f"seeds {suite.training.seeds}, monitor {suite.training.monitor}, at most {suite.training.epochs} epochs",
        f"Statistics: {TESTS[design.test]}{' (auto)' if opts.test == 'auto' else ''}"
        + (
            f" for the stars; --test bayes: Table 2b, Bayesian tests (baycomp) with ROPE ±{opts.rope:g}"
            if opts.test == "bayes"
            else ""
        )
        + "; pairing unit: "
        f"{design.unit_text()}; correction {CORRECTIONS[opts.correction]}; α = {opts.alpha}; split shown: "
        f"{design.split_text()}",
        f"Cells: {counts['done']} finished, {counts['failed']} failed, {counts['missing']} missing of {len(run.cells)}",
        f"Device: {(res.device if res else '') or '—'}; versions: {versions or '—'}",
        numerics(run),
    ]
    warnings = []
    if not run.complete:
        warnings.append(
            f"INCOMPLETE RUN: {counts['failed']} failed and {counts['missing']} missing cell(s). Rows "
            "marked † are computed from fewer folds; this is not a finished comparison."
        )
    if meta.get("split_kind") == "image-level":
        warnings.append(
            "Image-level splits (the study's protocol): images of one patient can sit on both sides of "
            "a split, which inflates every metric. Use `protocol.kind: grouped` for a leak-free result."
        )
    if run.stale:
        warnings.append(
            f"{run.stale} finished cell(s) of an earlier configuration of this suite are in the store "
            "and are ignored here."
        )
    view = load_view(opts.view)
    ctx = Context(run, with_test, {s.kind for s in view.sections})
    view_lines = []
    for section in view.sections:
        settings = section_statistics(view, section, opts.explicit)
        sopts = replace(opts, **settings) if settings else opts  # type: ignore[arg-type]
        n_before = len(ctx.tables)
        _add(ctx, section.kind, sopts, section)
        if settings:
            line = view_statistics_line(run, view, section, sopts, settings, opts.explicit)
            if line not in view_lines:
                view_lines.append(line)
            for t in ctx.tables[n_before:]:
                t.notes.append(f"Statistics {line}.")
    title = "mesbench report" if view.name == "default" else view.title
    return Report(
        f"{title} — {suite.name}",
        header + [f"View: {view.name}"] + [f"Statistics of some sections {line}" for line in view_lines],
        warnings,
        ctx.tables,
        figure_specs=ctx.figures,
    )


def _add(ctx: Context, kind: str, opts: Options, section) -> None:
    """One section of the view, then the sections that follow it where the view does not name them itself (a view
    with Table 5 but no `external` section still shows the external test sets, after it)."""
    sec = SECTIONS[kind]
    if all(ctx.has(need) for need in sec.needs):
        sec.build(ctx, opts, section)
    for other in SECTIONS.values():
        if other.follows == kind and other.name not in ctx.kinds:
            _add(ctx, other.name, opts, section)


def view_statistics_line(run: Run, view, section, sopts: Options, settings: dict, explicit) -> str:
    """Who set each of a section's statistics: the view (with its reason, only while every setting the view gives is
    still the view's) or a command-line flag that overrode it."""
    from .views import STAT_FIELDS

    source = section.statistics if section.statistics is not None else view.statistics
    overridden = [
        name
        for src in (view.statistics, section.statistics)
        if src is not None
        for name in STAT_FIELDS
        if getattr(src, name) is not None and name in explicit
    ]
    why = f" ({source.why})" if source is not None and source.why and not overridden else ""
    sdesign = Design.of(run, sopts)
    text = {
        "test": TESTS[sdesign.test],
        "correction": f"correction {CORRECTIONS[sopts.correction]}",
        "alpha": f"α = {sopts.alpha}",
        "split": f"split: {sdesign.split_text()}",
    }
    order = ("test", "correction", "alpha", "split")
    if not overridden:
        return f"set by the view{why}: {'; '.join(text[n] for n in order)}"
    by_view = [text[n] for n in order if n in settings]
    by_flag = [text[n] for n in order if n in overridden]
    rest = [text[n] for n in order if n not in settings and n not in overridden]
    line = f"set by the view{why}: {'; '.join(by_view)}"
    if by_flag:
        flags = ", ".join(f"--{n}" for n in order if n in overridden)
        line += f"; set by the command line ({flags}, overriding the view): {'; '.join(by_flag)}"
    if rest:
        line += f"; {'; '.join(rest)}"
    return line


def render_figures(rep: Report, pdf: bool = False, keep: bool = False, workers: int | None = None) -> dict[str, bytes]:
    """The view's figures as PNG bytes (drawn only for formats that show them; with their PDFs for files; with
    `keep`, each keeps its matplotlib Figure as `.figure`, for the Python API). Drawn by `workers` processes
    forked from this one (default: one per core this process may use, at most one per figure); a figure is the same
    bytes whichever process draws it."""
    from . import figures

    specs = rep.figure_specs
    n = figure_workers(len(specs), keep) if workers is None else workers
    figures.WANT_PDF, figures.KEEP_FIGURES = pdf, keep
    try:
        drawn = _drawn_by_children(specs, n) if n > 1 else [draw() for _, draw in specs]
    finally:
        figures.WANT_PDF = figures.KEEP_FIGURES = False
    return {name: png for (name, _), png in zip(specs, drawn) if png}


def figure_workers(n_figures: int, keep: bool = False) -> int:
    """Processes to draw n figures with: matplotlib draws on one core, and a paper's report has dozens of figures.
    One where a figure must stay in this process (`keep`), or where forking is not the platform's safe default."""
    import sys

    from benchmark.run.threads import available_cores

    if keep or n_figures < 2 or sys.platform != "linux":
        return 1
    return min(available_cores(), n_figures)


_SPECS: list[tuple[str, Callable[[], bytes | None]]] = []  # what forked children draw (closures do not pickle)


def _draw(i: int) -> tuple[bytes, bytes | None] | None:
    png = _SPECS[i][1]()
    return (bytes(png), getattr(png, "pdf", None)) if png else None


def _drawn_by_children(specs, n: int) -> list[bytes | None]:
    import multiprocessing

    from .figures import Rendered, pyplot

    global _SPECS
    pyplot()  # matplotlib imported and set up once, before the fork
    _SPECS = list(specs)
    try:
        with multiprocessing.get_context("fork").Pool(n) as pool:  # each takes the next figure when it is done
            results = pool.map(_draw, range(len(specs)), chunksize=1)
    finally:
        _SPECS = []
    out: list[bytes | None] = []
    for r in results:
        if r is None:
            out.append(None)
            continue
        png = Rendered(r[0])
        png.pdf = r[1]
        out.append(png)
    return out


def slug(name: str) -> str:
    text = "".join(c if c.isalnum() else "-" for c in name.lower())
    return "-".join(part for part in text.split("-") if part)[:120]


def write_figure_files(folder: Path, figs: dict[str, bytes]) -> list[Path]:
    """<folder>/<name>.png and .pdf for every figure (RUN/figures unless -o says otherwise); what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in figs.items():
        base = folder / slug(name)
        base.with_suffix(".png").write_bytes(png)
        written.append(base.with_suffix(".png"))
        pdf = getattr(png, "pdf", None)
        if pdf:
            base.with_suffix(".pdf").write_bytes(pdf)
            written.append(base.with_suffix(".pdf"))
    return written


def figure_links(folder: Path, rep: Report, relative_to: Path) -> list[tuple[str, str]]:
    """(title, relative path) of the view's figures already written as files, for the Markdown report."""
    folder = Path(folder)
    links = []
    for name, _ in rep.figure_specs:
        png = folder / f"{slug(name)}.png"
        if png.is_file():
            links.append((name, os.path.relpath(png, relative_to)))
    return links


# ---------------------------------------------------------------------------- markdown


def _md(text) -> str:
    """Text as Markdown that renders as written and runs nothing: what could open raw HTML escaped (a '<' before a
    tag's first character, an '&' that would start an entity; Markdown passes raw HTML through), line breaks folded
    (a newline would end a table row or a paragraph). Everything else stays as written: 'p < 0.05' reads as such
    in the raw file too."""
    text = re.sub(r"&(?=#?[A-Za-z0-9]+;)", "&amp;", str(text))
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return " ".join(text.replace("\r", "\n").split("\n"))


def _md_cell(text, bold):
    text = _md(text).replace("|", "\\|")
    return f"**{text}**" if bold else text


def to_markdown(rep: Report, figure_links: list[tuple[str, str]] | None = None) -> str:
    from urllib.parse import quote

    out = [f"# {_md(rep.title)}", ""]
    for w in rep.warnings:
        out += [f"> **⚠ {_md(w)}**", ""]
    out += [f"- {_md(h)}" for h in rep.header] + [""]
    for t in rep.tables:
        out += [
            f"## {_md(t.title)}",
            "",
            "| " + " | ".join(_md_cell(c, False) for c in t.columns) + " |",
            "|" + "---|" * len(t.columns),
        ]
        for i, row in enumerate(t.rows):
            out.append("| " + " | ".join(_md_cell(c, (i, j) in t.bold) for j, c in enumerate(row)) + " |")
        out.append("")
        out += [f"_{_md(n)}_" for n in t.notes]
        out.append("")
    if figure_links:
        out += ["## Figures", ""]
        for name, path in figure_links:
            label = _md(name).replace("[", "\\[").replace("]", "\\]")
            out += [f"![{label}]({quote(path)})", ""]  # a space or ")" in a path would end the link
    return "\n".join(out)


# ---------------------------------------------------------------------------- latex


# Characters LaTeX's text mode does not take as they are (or, like `<`, silently prints as something else).
TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "±": r"$\pm$",
    "→": r"$\to$",
    "†": r"$^\dagger$",
    "Δ": r"$\Delta$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "γ": r"$\gamma$",
    "κ": r"$\kappa$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "ε": r"$\varepsilon$",
    "φ": r"$\varphi$",
    "η": r"$\eta$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "−": r"$-$",
    "—": "---",
    "–": "--",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "…": r"\ldots{}",
    "≈": r"$\approx$",
    "⚠": "",
    "’": "'",
    "‘": "`",
    "“": "``",
    "”": "''",
    "é": r"\'e",
    "í": r"\'i",
    "á": r"\'a",
    "ó": r"\'o",
    "ö": r"\"o",
    "ü": r"\"u",
    "Š": r"\v{S}",
    "š": r"\v{s}",
}


def _tex(text):
    """Text as LaTeX that compiles with pdflatex and reads as written: every special and non-ASCII character
    mapped, anything left over replaced by '?' rather than breaking the build."""
    out = []
    for ch in str(text):
        if ch in TEX:
            out.append(TEX[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def latex_document(rep: Report) -> str:
    """The tables as a complete document (what `--latex --standalone` writes)."""
    body = to_latex(rep)
    return (
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\usepackage[margin=1.5cm,landscape]{geometry}\n\\begin{document}\n" + body + "\n\\end{document}\n"
    )


def to_latex(rep: Report) -> str:
    out = [f"% {_tex(rep.title)}", "% requires \\usepackage{booktabs} and \\usepackage{graphicx}"]
    for w in rep.warnings:
        out.append(f"% WARNING: {_tex(w)}")
    out += [f"% {_tex(h)}" for h in rep.header]
    for t in rep.tables:
        out += [
            "\\begin{table}[ht]",
            "\\centering",
            "\\small",
            f"\\caption{{{_tex(t.title)}}}",
            "\\resizebox{\\linewidth}{!}{%" if len(t.columns) > 6 else "{%",
            f"\\begin{{tabular}}{{{'l' * 2 + 'r' * (len(t.columns) - 2) if len(t.columns) > 1 else 'l'}}}",
            "\\toprule",
            " & ".join(_tex(c) for c in t.columns) + " \\\\",
            "\\midrule",
        ]
        for i, row in enumerate(t.rows):
            cells = [(f"\\textbf{{{_tex(c)}}}" if (i, j) in t.bold else _tex(c)) for j, c in enumerate(row)]
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}"]
        for n in t.notes:
            out.append(f"\\par\\smallskip\\footnotesize {_tex(n)}")
        out += ["\\end{table}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------- html


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,td:nth-child(2){text-align:left}.warn{background:#fff3cd;border:1px solid #e0b000;
padding:.6em 1em;margin:.5em 0;font-weight:600}.note{font-size:12px;color:#555;max-width:1100px}img{max-width:100%;
border:1px solid #ddd;margin:.5em 0}"""


def to_html(rep: Report) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(rep.title)}</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>{e(rep.title)}</h1>",
    ]
    out += [f"<div class='warn'>⚠ {e(w)}</div>" for w in rep.warnings]
    out.append("<ul>" + "".join(f"<li>{e(h)}</li>" for h in rep.header) + "</ul>")
    for t in rep.tables:
        out.append(f"<h2>{e(t.title)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
        for i, row in enumerate(t.rows):
            out.append(
                "<tr>"
                + "".join(
                    f"<td>{'<b>' + e(str(c)) + '</b>' if (i, j) in t.bold else e(str(c))}</td>"
                    for j, c in enumerate(row)
                )
                + "</tr>"
            )
        out.append("</table>" + "".join(f"<p class='note'>{e(n)}</p>" for n in t.notes))
    if rep.figures:
        out.append("<h2>Figures</h2>")
        for name, png in rep.figures.items():
            data = base64.b64encode(png).decode()
            out.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A text cell a spreadsheet will not run as a formula (OWASP's CSV injection advice: prefix a quote)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def to_csv(run: Run) -> str:
    """The long-format metric table, written safe for spreadsheets."""
    import pandas as pd

    long = metrics_frame(run)
    for col in long.columns:
        if not pd.api.types.is_numeric_dtype(long[col]):
            long[col] = long[col].astype(object).map(csv_safe)
    return long.to_csv(index=False)


def metrics_frame(run: Run):
    """The long-format metric table, in the CSV's order; `class` names the grade (or a task's class) that `cls`
    numbers."""
    long = run.long[LONG_COLUMNS].sort_values(LONG_COLUMNS[:-1])
    names = {"mes": run.scale.classes, **run.extra_tasks()}

    def class_name(task, cls):
        classes = names.get(task, ())
        return classes[int(cls)] if cls.isdigit() and int(cls) < len(classes) else cls

    long.insert(len(LONG_COLUMNS) - 1, "class", [class_name(t, c) for t, c in zip(long.task, long.cls)])
    return long.assign(value=np.round(long.value, 6)).reset_index(drop=True)
