"""Table 1: the cross-validation summary, one row per backbone × formulation; its columns are a summary view
(`--summary`, a view's `columns:`) on the run's scale."""

from __future__ import annotations

from benchmark.errors import BenchError
from benchmark.labels import Scale

from ..load import Run
from ..protocol import mark_in_sample, protocol_notes
from ..table import Options, Table, fmt, incomplete, missing_note, spread_text
from .base import Context, register_section


def summary_columns(name: str, scale: Scale) -> list[tuple[str, str, str, str]]:
    """(header, task, metric, cls) of each column of a summary view, on the run's scale: the two highest grades
    where the default view singles out severe disease (MES 2 and 3), the binary split where the scale has one."""
    c, top = scale.classes, scale.k - 1
    binary = scale.binary_cut is not None
    low, high = scale.binary_short if binary else ("", "")
    accuracy, macro_f1 = ("accuracy", "mes", "accuracy", ""), ("macro-F1", "mes", "f1", "macro")
    qwk, mae = ("QWK", "mes", "qwk", ""), ("MAE", "mes", "mae", "")
    if name == "default":
        return [
            accuracy,
            macro_f1,
            qwk,
            mae,
            (f"F1 {c[top - 1]}", "mes", "f1", str(top - 1)),
            (f"F1 {c[top]}", "mes", "f1", str(top)),
            (f"recall {c[top - 1]}", "mes", "recall", str(top - 1)),
            (f"recall {c[top]}", "mes", "recall", str(top)),
        ] + ([(f"{scale.binary_label} F1", "ra", "f1", "")] if binary else [])
    if name == "ordinal":
        return (
            [
                qwk,
                mae,
                ("AMAE", "mes", "amae", ""),
                ("MMAE", "mes", "mmae", ""),
                ("RPS", "mes", "rps", ""),
                ("ECE", "mes", "ece", ""),
                ("AUC (macro, one-vs-rest)", "mes", "auc", "macro"),
            ]
            + ([(f"{scale.binary_label} AUC", "ra", "auc", "")] if binary else [])
            + [accuracy, macro_f1]
        )
    if name == "polat":
        return [
            accuracy,
            ("macro precision", "mes", "precision", "macro"),
            ("macro recall", "mes", "recall", "macro"),
            ("macro F1", "mes", "f1", "macro"),
            qwk,
            ("κ", "mes", "kappa", ""),
        ]
    if not binary:
        raise BenchError(
            f"summary view {name!r}: the binary split's columns, but this run's scale ({scale.name}: "
            f"{', '.join(c)}) has no binary split. Name one in the suite (`scale: {{binary_cut: …}}`), or pick the "
            "default, ordinal or polat summary."
        )
    return [
        ("accuracy", "ra", "accuracy", ""),
        ("κ", "ra", "kappa", ""),
        (f"precision ({high})", "ra", "precision", ""),
        (f"recall ({high})", "ra", "recall", ""),
        (f"F1 ({high})", "ra", "f1", ""),
        ("specificity", "ra", "specificity", ""),
    ]


SUMMARIES = ("default", "ordinal", "polat", "ra")


def cv_summary(
    run: Run, opts: Options, columns_name: str | None = None, items: list[str] | None = None, title: str | None = None
) -> Table:
    name = columns_name or opts.summary
    if name == "ra" and run.scale.binary_cut is None and columns_name:  # a view's section, on a scale without one
        return Table(
            title or "Table 1 — binary split",
            ["note"],
            [[f"this run's scale ({run.scale.name}: {', '.join(run.scale.classes)}) has no binary split, so this "
              "section has nothing to show; a suite names one with scale: {binary_cut: …}"]],
            key="summary",
        )  # fmt: skip
    columns = summary_columns(name, run.scale)
    rows, marked = [], False
    for b in run.backbones:
        for f in [f for f in run.formulations if items is None or f in items]:
            flag = incomplete(run, b, f)
            marked |= flag
            rows.append(
                [b, mark_in_sample(run, opts.split, f) + (" †" if flag else "")]
                + [fmt(run.series(b, f, opts.split, t, m, c)) for _, t, m, c in columns]
            )
    where = (
        "validation folds (each fold's model on its validation part)"
        if opts.split == "val"
        else "held-out test set (each fold's model)"
    )
    seeds = len(run.suite.training.seeds)
    over = (
        f"Mean ± sd over the {where}; {run.meta.get('n_folds')} resamples × {seeds} seed(s)."
        if seeds == 1
        else f"{spread_text(run).capitalize()}, on the {where}."
    )
    notes = [over] + protocol_notes(run, opts.split)
    if opts.summary == "ordinal":
        notes.append(
            "Ordinal view: MAE, AMAE (mean over grades of the per-grade MAE), MMAE (their maximum), RPS (ranked "
            "probability score) and ECE (expected calibration error, 10 bins) are lower-is-better; RPS, ECE and "
            "AUC need class probabilities (— for formulations without them)."
        )
    if marked:
        notes.append("† incomplete: some cells of this row are failed or missing; its statistics use fewer folds.")
    return Table(
        title or ("Table 1 — cross-validation summary" if opts.split == "val" else "Table 1 — per-fold test summary"),
        ["backbone", "formulation"] + [c[0] for c in columns],
        rows,
        notes=notes,
        key="summary",
    )


@register_section("summary")
def summary(ctx: Context, opts: Options, section) -> None:
    """Table 1 — mean ± sd of each summary column over the folds, every backbone × formulation."""
    t = cv_summary(ctx.run, opts, section.columns, section.items, section.title)
    t.notes += missing_note(section.items, ctx.run.formulations, "formulations")
    ctx.table(t)
