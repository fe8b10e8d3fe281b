"""A report's renderer-neutral table, the report's options, and the small formatting helpers every table uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import Run


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    key: str = ""


@dataclass
class Options:
    split: str = "val"
    backbone: str | None = None
    reference: str | None = None  # None: the run's baseline (Run.reference)
    test: str = "auto"
    correction: str = "holm"
    alpha: float = 0.05
    n_resamples: int = 1000
    metric: str = "f1"  # Table 2's per-class metric (and the Friedman ranking's macro average)
    summary: str = "default"  # Table 1's columns: default, or ordinal (QWK, MAE, AMAE, MMAE, RPS, ECE, AUC)
    view: str = "default"  # a view name in reports/views/ or the path of a view YAML
    compare: str = "formulations"  # the axis of comparison sections: formulations or backbones
    pairs: str = "reference"  # compare each with the reference, or all pairs
    patient_quantile: float = 1.0  # a patient's predicted grade: this quantile of their image grades (1 = maximum)
    specificity: float = 0.9  # Table 8b: the specificity at which each grade's sensitivity is read
    rope: float = 0.01  # --test bayes: the region of practical equivalence, in units of the compared metric
    explicit: frozenset[str] = frozenset()  # statistics fields given on the command line: a view never overrides them


def resolve(run: Run, opts: Options) -> Options:
    """Options with the reference filled in (the run's baseline when none was asked for)."""
    if opts.reference is None:
        from dataclasses import replace

        return replace(opts, reference=run.reference)
    return opts


def fmt(values) -> str:
    v = np.asarray(values, float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def spread_text(run: Run) -> str:
    """What a table's ± is over: the folds, or with several seeds every fold × seed value (not the sd of the
    per-fold means over seeds)."""
    seeds, folds = len(run.suite.training.seeds), run.meta.get("n_folds")
    if seeds == 1:
        return "mean ± sd over folds"
    return (
        f"mean ± sd over the {folds} folds × {seeds} seeds (one value per fold and seed: the sd mixes the spread "
        "between folds and between seeds)"
    )


def aligned(x: pd.Series, y: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two per-(seed, fold) series restricted to the folds both have."""
    common = x.index.intersection(y.index)
    return x[common], y[common]


def incomplete(run: Run, b, f):
    c = run.cells[(run.cells.backbone == b) & (run.cells.formulation == f)]
    return (c.status != "done").any()


WIDE = 8  # more formulations than this: tables that put them in columns are transposed to stay readable


def transposed(table: Table, corner: str) -> Table:
    """Rows become columns (bold cells follow); the first column's values become the header."""
    header = [corner] + [row[0] for row in table.rows]
    rows = [[table.columns[j]] + [row[j] for row in table.rows] for j in range(1, len(table.columns))]
    bold = {(j - 1, i + 1) for i, j in table.bold}
    return Table(table.title, header, rows, bold, table.notes, table.key)


def ci_text(point: float, low: float, high: float, signed: bool = False) -> str:
    """'0.812 [0.790, 0.833]'; a statistic undefined on this set (a grade it lacks) is 'absent', never 0."""
    if np.isnan(point):
        return "absent"
    f = "+.3f" if signed else ".3f"
    return f"{point:{f}} [{low:{f}}, {high:{f}}]"


def missing_note(names, present, what) -> list[str]:
    gone = [n for n in (names or []) if n not in present]
    return [f"{', '.join(gone)}: not {what} of this run, left out."] if gone else []
