"""Comparisons along either axis: formulations within a backbone, or backbones within a formulation.

One `Comparison` computes every per-class value and every paired p-value of a family (all classes × the
pairs compared), corrects them once, and decides the stars; the table and the figure of that family both
draw from it, so their asterisks cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from benchmark.errors import BenchError
from benchmark.labels import CLASS_NAMES, GRADES

from .load import Run
from .stats import CORRECTIONS, TESTS, adjust, smallest_p, stars
from .tables import (
    IN_SAMPLE_MARK,
    Design,
    Options,
    Table,
    fmt,
    in_sample,
    legend,
    mark_in_sample,
    protocol_notes,
    stars_allowed,
    transposed,
)

AXES = ("formulations", "backbones")
ROWS = [(name, str(k)) for k, name in zip(GRADES, CLASS_NAMES)] + [("macro", "macro")]


@dataclass
class Comparison:
    axis: str  # what is compared: "formulations" or "backbones"
    within: str  # the fixed backbone (axis formulations) or formulation (axis backbones)
    items: list[str]
    metric: str
    reference: str | None  # None with pairs = all
    pairs: list[tuple[str, str]]
    values: dict[tuple[str, str], pd.Series] = field(default_factory=dict)  # (cls, item) -> per-fold values
    p_adjusted: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (cls, a, b) -> adjusted p
    stars: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (cls, a, b) -> '*', '**', ... or ''
    allowed: bool = True
    design: Design | None = None
    opts: Options | None = None
    in_sample: list[str] = field(default_factory=list)  # compared formulations whose numbers here are in-sample

    def legend(self) -> str:
        assert self.opts is not None and self.design is not None
        m = len(self.p_adjusted)
        family = f"the {{m}} comparisons of one family ({self.family_text()}; table and figure)"
        if self.reference is not None:
            return legend(self.opts, self.design, m, self.reference, family=family)
        return legend(self.opts, self.design, m, None, subject="Stars: every pair compared ({paired})", family=family)

    def family_text(self) -> str:
        """Which comparisons are corrected together: every class × pair of one metric within one backbone (or
        formulation) — a figure with several metric panels has one such family per panel."""
        axis = "backbone" if self.axis == "formulations" else "formulation"
        unit = "pair" if self.reference is None else "comparison"
        return f"every class × {unit} of {self.metric} within {axis} {self.within}"


def series(run: Run, axis: str, within: str, item: str, split: str, metric: str, cls: str) -> pd.Series:
    b, f = (within, item) if axis == "formulations" else (item, within)
    return run.series(b, f, split, "mes", metric, cls)


def compare(
    run: Run,
    opts: Options,
    axis: str,
    within: str,
    metric: str,
    items: list[str] | None = None,
    reference: str | None = None,
    pairs: str = "reference",
) -> Comparison:
    if axis not in AXES:
        raise BenchError(f"--compare {axis!r}: one of {', '.join(AXES)}.")
    universe = run.formulations if axis == "formulations" else run.backbones
    items = [i for i in (items or universe) if i in universe]
    if pairs == "all":
        reference = None
        pair_list = list(combinations(items, 2))
    else:
        if reference is None:
            reference = (run.reference if axis == "formulations" else items[0]) if items else None
        pair_list = [(i, reference) for i in items if reference is not None and i != reference]
    design = Design.of(run, opts)
    cmp = Comparison(axis, within, items, metric, reference, pair_list, design=design, opts=opts)
    cmp.in_sample = sorted(in_sample(run, opts.split) & set(items if axis == "formulations" else [within]))
    for _, cls in ROWS:
        for item in items:
            cmp.values[cls, item] = series(run, axis, within, item, opts.split, metric, cls)
    keys, raw = [], []
    for _, cls in ROWS:
        for a, b in pair_list:
            p = design.p_value(cmp.values[cls, a], cmp.values[cls, b])
            if not np.isnan(p):
                keys.append((cls, a, b))
                raw.append(p)
    adjusted = adjust(raw, opts.correction)
    cmp.allowed = stars_allowed(opts, design, len(raw))
    for key, p in zip(keys, adjusted):
        cmp.p_adjusted[key] = float(p)
        cmp.stars[key] = stars(p, opts.alpha) if cmp.allowed else ""
    return cmp


def comparison_table(cmp: Comparison, run: Run, title: str | None = None) -> list[Table]:
    """The values table (stars on the cells compared with the reference) and, for all pairs, the pairwise
    table of adjusted p-values."""
    assert cmp.opts is not None and cmp.design is not None
    label = {"f1": "F1", "auc": "one-vs-rest AUC"}.get(cmp.metric, cmp.metric)
    rows, bold = [], set()
    for i, (name, cls) in enumerate(ROWS):
        means = [cmp.values[cls, it].mean() if len(cmp.values[cls, it]) else -np.inf for it in cmp.items]
        best = np.nanmax(means) if means else np.nan
        row = [name]
        for j, it in enumerate(cmp.items):
            star = cmp.stars.get((cls, it, cmp.reference), "") if cmp.reference else ""
            row.append(fmt(cmp.values[cls, it]) + star)
            if len(cmp.values[cls, it]) and np.isclose(means[j], best):
                bold.add((i, j + 1))
        rows.append(row)
    across = "formulations within backbone" if cmp.axis == "formulations" else "backbones within formulation"
    notes = [
        f"{label} per class on the {cmp.design.split_text()}, mean ± sd over folds; best per class in bold. Compared: "
        f"{across} {cmp.within}."
    ]
    if len(cmp.items) < 2:
        notes.append(f"Only one of the {cmp.axis} in this run: nothing to compare.")
    elif cmp.reference is None and cmp.opts.reference and cmp.axis == "formulations" and not cmp.pairs:
        notes.append(f"No stars: the reference {cmp.opts.reference!r} is not in this run.")
    else:
        notes.append(cmp.legend())
    split = cmp.opts.split
    names = [mark_in_sample(run, split, it) for it in cmp.items] if cmp.axis == "formulations" else list(cmp.items)
    title = title or f"Table 2 — per-class {label}, {cmp.within}"
    if cmp.axis == "backbones" and cmp.within in in_sample(run, split):
        title += IN_SAMPLE_MARK
    table = Table(
        title,
        ["class"] + names,
        rows,
        bold,
        notes + protocol_notes(run, split),
        key="per_class",
    )
    tables = [transposed(table, cmp.axis[:-1]) if len(cmp.items) > 8 else table]
    if cmp.reference is None and cmp.pairs:
        prow = []
        for name, cls in ROWS:
            for a, b in cmp.pairs:
                if (cls, a, b) in cmp.p_adjusted:
                    d = (cmp.values[cls, a] - cmp.values[cls, b]).dropna()
                    prow.append(
                        [
                            name,
                            f"{a} vs {b}",
                            f"{d.mean():+.3f}",
                            f"{cmp.p_adjusted[cls, a, b]:.3g}",
                            cmp.stars[cls, a, b] or "—",
                        ]
                    )
        tables.append(
            Table(
                f"{tables[0].title}: every pair",
                ["class", "pair", "Δ (mean over folds)", f"p ({CORRECTIONS[cmp.opts.correction]})", "stars"],
                prow,
                notes=[cmp.legend()],
                key="pairs",
            )
        )
    return tables


def figure_legend(cmp: Comparison, panels: int = 1) -> str:
    """What the asterisks on a figure mean — or that none can be drawn at this n. With several metric panels,
    each panel is its own correction family, and the legend says so."""
    assert cmp.opts is not None and cmp.design is not None
    m = len(cmp.p_adjusted)
    what = f"vs {cmp.reference}" if cmp.reference else "every pair"
    axis = "backbone" if cmp.axis == "formulations" else "formulation"
    if panels > 1:
        family = (
            f"{CORRECTIONS[cmp.opts.correction]} within each metric panel separately (a panel is one family: its "
            f"{m} comparisons, every class × {'pair' if cmp.reference is None else 'comparison'} within {axis} "
            f"{cmp.within})"
        )
    else:
        family = f"{CORRECTIONS[cmp.opts.correction]} over {m} comparisons ({cmp.family_text()})"
    text = (
        f"* p < {cmp.opts.alpha:g}, ** p < {cmp.opts.alpha / 5:g}, *** p < {cmp.opts.alpha / 50:g} ({what}); "
        f"{TESTS[cmp.design.test]}; pairing: {cmp.design.unit_text()}; {family}; α = {cmp.opts.alpha}"
    )
    if cmp.in_sample:
        text += (
            f". ‡ IN-SAMPLE: the validation numbers of {', '.join(cmp.in_sample)} are partly in-sample (inverse-F1 "
            "weights from the same validation fold); compare them on the held-out test set"
        )
    if m and not cmp.allowed:
        text += (
            f". NO ASTERISKS CAN BE DRAWN: with n = {cmp.design.n_units} the smallest possible p is "
            f"{smallest_p(cmp.design.test, cmp.design.n_units):.4f}"
        )
    return text


def per_class_f1(run: Run, opts: Options) -> Table:
    """Table 2 of the default view: the per-class metric of every formulation within one backbone."""
    from .tables import default_backbone, resolve

    opts = resolve(run, opts)
    cmp = compare(
        run, opts, "formulations", default_backbone(run, opts), opts.metric, reference=opts.reference, pairs=opts.pairs
    )
    if opts.reference not in run.formulations:
        cmp.reference = None
    table = comparison_table(cmp, run)[0]
    if opts.reference not in run.formulations:
        table.notes.insert(1, f"No stars: the reference formulation {opts.reference!r} is not in this run.")
    return table
