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
from benchmark.labels import Scale

from .axes import AXES
from .design import Design, legend, stars_allowed
from .load import Run
from .protocol import IN_SAMPLE_MARK, in_sample, mark_in_sample, protocol_notes
from .stats import BAYES_SAMPLES, BAYES_SEED, CORRECTIONS, TESTS, BayesResult, adjust, smallest_p, stars
from .table import WIDE, Options, Table, fmt, spread_text, transposed


def class_rows(scale: Scale) -> list[tuple[str, str]]:
    """(row name, stored cls) of a per-class table: each grade of the run's scale, then the macro mean."""
    return [(name, str(k)) for k, name in enumerate(scale.classes)] + [("macro", "macro")]


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
    along: str | None = None  # an ablation axis: the items are its variants of `fixed` (one formulation)
    fixed: str = ""

    def along_axis(self, axis: str, fixed: str) -> Comparison:
        """Say that the items are the variants of one ablation axis, everything else held fixed."""
        self.along, self.fixed = axis, fixed
        return self

    def subject(self) -> str:
        """What is compared, in words: 'formulations within backbone X', or an axis's variants of one row."""
        if self.along:
            return f"the {self.along} variants of {self.fixed}, within backbone {self.within}"
        return ("formulations within backbone " if self.axis == "formulations" else "backbones within formulation ") + (
            self.within
        )

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
        unit = "pair" if self.reference is None else "comparison"
        return f"every class × {unit} of {self.metric} among {self.subject()}"


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
    for _, cls in class_rows(run.scale):
        for item in items:
            cmp.values[cls, item] = series(run, axis, within, item, opts.split, metric, cls)
    keys, raw = [], []
    for _, cls in class_rows(run.scale):
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
    for i, (name, cls) in enumerate(class_rows(run.scale)):
        means = [cmp.values[cls, it].mean() if len(cmp.values[cls, it]) else -np.inf for it in cmp.items]
        best = np.nanmax(means) if means else np.nan
        row = [name]
        tops = [j for j, it in enumerate(cmp.items) if len(cmp.values[cls, it]) and np.isclose(means[j], best)]
        if len(tops) == len(cmp.items):
            tops = []  # every item ties: none is best, and a row of bold cells would say nothing
        for j, it in enumerate(cmp.items):
            star = cmp.stars.get((cls, it, cmp.reference), "") if cmp.reference else ""
            row.append(fmt(cmp.values[cls, it]) + star)
            if j in tops:
                bold.add((i, j + 1))
        rows.append(row)
    notes = [
        f"{label} per class on the {cmp.design.split_text()}, {spread_text(run)}; best per class in bold (none where "
        "every one ties). Compared: "
        f"{cmp.subject()}"
        + (
            " — the rows differ only in that axis (same splits, normalisation, initial weights and data order)."
            if cmp.along
            else "."
        )
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
    tables = [transposed(table, cmp.axis[:-1]) if len(cmp.items) > WIDE else table]
    if cmp.reference is None and cmp.pairs:
        prow = []
        for name, cls in class_rows(run.scale):
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
                f"{tables[0].title}: adjusted p-values"
                if tables[0].title.rstrip(" ‡").endswith("every pair")
                else f"{tables[0].title}: every pair",
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
    if panels > 1:
        family = (
            f"{CORRECTIONS[cmp.opts.correction]} within each metric panel separately (a panel is one family: its "
            f"{m} comparisons, every class × {'pair' if cmp.reference is None else 'comparison'} among "
            f"{cmp.subject()})"
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


# ---------------------------------------------------------------------------- Bayesian comparison (--test bayes)


@dataclass
class BayesComparison:
    """Every pair's posterior within each block (the correlated t-test over that block's resamples) and across the
    blocks (the signed-rank test over the per-block means): what Table 2b and its figures both read."""

    axis: str
    metric: str
    rope: float
    blocks: list[str]
    pairs: list[tuple[str, str]]  # (x, y): P(left) = x better, P(right) = y better
    within: dict[tuple[str, str, str], BayesResult] = field(default_factory=dict)  # (block, x, y) -> BayesResult
    means: dict[tuple[str, str], float] = field(default_factory=dict)  # (block, item) -> mean over resamples
    n_units: dict[str, int] = field(default_factory=dict)  # block -> resamples used
    corrected: set[str] = field(default_factory=set)  # blocks whose posterior used the run's own size ratio
    across: dict[tuple[str, str], BayesResult] = field(default_factory=dict)  # (x, y) -> BayesResult over blocks


MIN_BAYES_BLOCKS = 3
BAYES_SAMPLES_TEXT = f"{BAYES_SAMPLES} posterior samples, seed {BAYES_SEED}"


def bayes_compare(
    run: Run, opts: Options, axis: str, items: list[str] | None = None, reference: str | None = None, pairs="reference"
) -> BayesComparison:
    """Bayesian comparison of the macro average of `opts.metric` on the validation folds (cross-validation
    resamples: the held-out test set is one dataset scored by every fold's model, which no correlated t-test over
    resamples describes)."""
    from dataclasses import replace

    from .stats import bayes_correlated, bayes_signed_rank

    if opts.split != "val":
        raise BenchError(
            "--test bayes with --split test: the Bayesian correlated t-test models the scores of cross-validation "
            "resamples (overlapping training sets, disjoint validation parts); the fold models' scores on the one "
            "held-out test set are not such resamples. Use --split val (the default) with --test bayes, and Table 5's "
            "bootstrap CIs for the test set."
        )
    universe = run.formulations if axis == "formulations" else run.backbones
    items = [i for i in (items or universe) if i in universe]
    blocks = run.backbones if axis == "formulations" else run.formulations
    if pairs == "all":
        pair_list = list(combinations(items, 2))
    else:
        reference = reference or (run.reference if axis == "formulations" else items[0])
        pair_list = [(reference, i) for i in items if i != reference]
    design = Design.of(run, replace(opts, test="corrected-t"))
    out = BayesComparison(axis, opts.metric, opts.rope, list(blocks), pair_list)
    block_means: dict[tuple[str, str], float] = {}
    for block in blocks:
        for x, y in pair_list:
            sx = series(run, axis, block, x, "val", opts.metric, "macro")
            sy = series(run, axis, block, y, "val", opts.metric, "macro")
            a, b, ratio = design.units(sx, sy)
            if len(a) < 2:
                continue
            out.means[block, x], out.means[block, y] = float(a.mean()), float(b.mean())
            complete = not design.monte_carlo and len(a) == design.k * design.repeats
            if complete:  # baycomp's own correction, 1/(k − 1)
                res = bayes_correlated(a, b, opts.rope, runs=design.repeats)
            else:
                if ratio is None:
                    raise BenchError(
                        "the Bayesian correlated t-test of an incomplete or Monte-Carlo design needs each fold's "
                        "training and validation sizes, which this run does not record; finish the run, or rerun it "
                        "with this mesbench to record them."
                    )
                res = bayes_correlated(a, b, opts.rope, ratio=ratio)
                out.corrected.add(block)
            out.within[block, x, y] = res
            out.n_units[block] = len(a)
            block_means[block, x], block_means[block, y] = out.means[block, x], out.means[block, y]
    if len(blocks) >= MIN_BAYES_BLOCKS:
        for x, y in pair_list:
            have = [bl for bl in blocks if (bl, x) in block_means and (bl, y) in block_means]
            if len(have) >= MIN_BAYES_BLOCKS:
                out.across[x, y] = bayes_signed_rank(
                    [block_means[bl, x] for bl in have], [block_means[bl, y] for bl in have], opts.rope
                )
    return out


def bayes_table(cmp: BayesComparison, run: Run) -> Table:
    """Table 2b: P(x better), P(practically equivalent), P(y better) per block and across blocks."""
    from .stats import BAYES_TESTS

    rope = f"{cmp.rope:g}"
    label = "F1" if cmp.metric == "f1" else cmp.metric
    block_kind = "backbone" if cmp.axis == "formulations" else "formulation"
    rows = []

    def name(item: str) -> str:
        return mark_in_sample(run, "val", item) if cmp.axis == "formulations" else item

    for block in cmp.blocks:
        for x, y in cmp.pairs:
            res = cmp.within.get((block, x, y))
            label_xy = f"{name(x)} vs {name(y)}"
            if res is None:
                rows.append(
                    [mark_in_sample(run, "val", block) if cmp.axis == "backbones" else block, label_xy] + ["—"] * 6
                )
                continue
            mx, my = cmp.means[block, x], cmp.means[block, y]
            rows.append(
                [mark_in_sample(run, "val", block) if cmp.axis == "backbones" else block, label_xy]
                + [f"{mx:.3f} vs {my:.3f}", f"{my - mx:+.3f}"]
                + [f"{p:.3f}" for p in (res.left, res.rope, res.right)]
                + [res.decision(x, y)]
            )
    for (x, y), res in cmp.across.items():
        rows.append(
            [f"all {len(cmp.blocks)} {block_kind}s (signed-rank)", f"{name(x)} vs {name(y)}", "—", "—"]
            + [f"{p:.3f}" for p in (res.left, res.rope, res.right)]
            + [res.decision(x, y)]
        )
    n = sorted(set(cmp.n_units.values()))
    notes = [
        f"Bayesian comparison of macro {label} on the validation folds (each fold's model on its own validation "
        f"part). ROPE (region of practical equivalence): |Δ| < {rope} — a difference smaller than {rope} in macro "
        f"{label} counts as practically equivalent (--rope). P(x better) = P(Δ < −{rope}), P(equivalent) = "
        f"P(|Δ| < {rope}), P(y better) = P(Δ > {rope}), with Δ = y − x.",
        f"Within each {block_kind}: {BAYES_TESTS['correlated']}, over n = {', '.join(map(str, n)) or '—'} resamples "
        "(each the mean over seeds). The resamples' scores are correlated (overlapping training sets): the "
        "correlation is ρ = n_test/n_total, and the variance factor 1/n + ρ/(1 − ρ) uses ρ/(1 − ρ) = n_test/n_train"
        + (
            f", the run's own sizes for {', '.join(sorted(cmp.corrected))} (incomplete or Monte-Carlo)."
            if cmp.corrected
            else ", which for k-fold is ρ = 1/k and ρ/(1 − ρ) = 1/(k − 1)."
        ),
        "Decision: a probability ≥ 0.95 decides (practically equivalent, or one better); else undecided. "
        "Posterior probabilities are not p-values: no multiple-comparison correction applies, and each reads alone.",
    ]
    if cmp.across:
        notes.append(
            f"Across {block_kind}s: {BAYES_TESTS['signed-rank']}, each {block_kind}'s mean over resamples one "
            f"observation ({len(cmp.blocks)} {block_kind}s); {BAYES_SAMPLES_TEXT}. These {block_kind}s share one "
            f"dataset and its splits, so they are not independent samples of data sets as the test assumes (Benavoli "
            f"et al. 2017 rank over data sets): read it as a summary over {block_kind}s on this dataset, not as "
            "evidence that generalises to other data."
        )
    else:
        notes.append(
            f"No comparison across {block_kind}s: the signed-rank test over blocks needs at least "
            f"{MIN_BAYES_BLOCKS} {block_kind}s; this run has {len(cmp.blocks)}."
        )
    notes += [n for n in protocol_notes(run, "val") if n.startswith("‡")]
    return Table(
        f"Table 2b — Bayesian comparison of macro {label} (ROPE ±{rope})",
        [
            block_kind,
            "x vs y",
            f"mean macro {label}",
            "Δ = y − x",
            "P(x better)",
            f"P(equivalent, |Δ| < {rope})",
            "P(y better)",
            "decision (≥ 0.95)",
        ],
        rows,
        notes=notes,
        key="bayes",
    )
