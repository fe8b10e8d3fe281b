"""The console summary printed at the end of `bench run`: mean ± sd over folds per backbone × formulation."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from .table import fmt, spread_text


def print_summary(run_dir, console, store=None):
    from .load import load_run

    run = load_run(run_dir, store)
    counts = run.counts
    title = (
        f"{run.suite.name}: {counts['done']} of {len(run.cells)} cells finished"
        + (f", {counts['failed']} FAILED" if counts["failed"] else "")
        + (f", {counts['missing']} MISSING" if counts["missing"] else "")
        + f" · {run.meta.get('split_kind')} splits · {run.meta.get('n_folds')} folds · {disk_size(run.path)} on disk"
    )
    folds = run.cells[run.cells.status == "done"].groupby(["backbone", "formulation"]).size()
    spread = spread_text(run) if len(folds) and folds.max() > 1 else "one fold per row: its value itself"
    table = Table(title=escape(title), caption=escape(f"{spread}; acc = accuracy, f1@macro = macro-F1"))
    cols = [
        ("val", "accuracy", ""),
        ("val", "f1", "macro"),
        ("val", "qwk", ""),
        ("val", "f1", str(run.scale.k - 1)),  # the highest grade (MES 3): the costly one to miss
        ("test", "accuracy", ""),
        ("test", "f1", "macro"),
    ]
    for name in ("backbone", "formulation", "n"):
        table.add_column(name, no_wrap=True)
    for split, metric, cls in cols:
        grade = f" {run.scale.classes[int(cls)]}" if cls.isdigit() else ""  # a grade by its name, not its index
        table.add_column(
            f"{split}\n{ {'accuracy': 'acc'}.get(metric, metric) }{'@macro' if cls == 'macro' else grade}",
            justify="right",
            no_wrap=True,
        )
    for b in run.backbones:
        for f in run.formulations:
            cells = run.cells[(run.cells.backbone == b) & (run.cells.formulation == f)]
            n_done = int((cells.status == "done").sum())
            row = [escape(b), escape(f), f"{n_done}/{len(cells)}"]
            for split, metric, cls in cols:
                vals = run.series(b, f, split, "mes", metric, cls)
                row.append(fmt(vals))
            table.add_row(*row)
    console.print(table)


def disk_size(path) -> str:
    from pathlib import Path

    total = float(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
    for unit in ("B", "kB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""
