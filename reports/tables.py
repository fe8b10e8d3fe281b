"""The report's tables, each a small function of a loaded run that returns a renderer-neutral Table.

Every table note says what its numbers are: which split, which pairing unit, which test and
correction, which kind of confidence interval, and that nothing is scored in-sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmark.errors import BenchError
from benchmark.labels import Scale

from .load import Run
from .stats import (
    CORRECTIONS,
    TESTS,
    adjust,
    cluster_bootstrap,
    ensemble_metrics,
    friedman,
    mcnemar_exact,
    paired_test,
    patient_bootstrap,
    patient_grades,
    patient_metric_names,
    significance_possible,
    smallest_p,
)


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


def _incomplete(run: Run, b, f):
    c = run.cells[(run.cells.backbone == b) & (run.cells.formulation == f)]
    return (c.status != "done").any()


# ---------------------------------------------------------------------------- the design of a comparison


@dataclass
class Design:
    """Which values of a run are independent pairing units, and how a paired test must treat them.

    A value in the long table is indexed by (seed, fold), where `fold` numbers every resample of the
    run: repeat r, fold j of a repeated k-fold is fold r·k + j; a Monte-Carlo protocol (polat) numbers its
    overlapping random splits. Seeds and repeats re-use the same images, so they are not independent:
    rank and permutation tests get one value per fold index (the mean over seeds and repeats), and the
    corrected t-test gets one value per resample (mean over seeds) with the Bouckaert–Frank correction."""

    split: str
    test: str  # resolved: never "auto"
    monte_carlo: bool
    k: int  # folds per repeat (k-fold) or number of splits (Monte-Carlo)
    repeats: int
    seeds: int
    sizes: dict[int, tuple[int, int]]  # resample -> (n_train, n_val)
    n_test: int

    @classmethod
    def of(cls, run: Run, opts: Options) -> Design:
        proto = run.suite.protocol
        monte_carlo = proto.kind == "polat"
        n_folds = int(run.meta.get("n_folds") or 0)
        repeats = 1 if monte_carlo else proto.repeats
        k = n_folds if monte_carlo else max(n_folds // max(repeats, 1), 1)
        test = opts.test
        if test in ("auto", "bayes"):  # bayes adds posterior tables; the stars stay frequentist (auto)
            test = "corrected-t" if monte_carlo else "wilcoxon"
        if monte_carlo and test in ("wilcoxon", "permutation", "ranksum"):
            raise BenchError(
                f"--test {test}: this run uses Monte-Carlo splits (protocol 'polat'), whose validation "
                "sets overlap, so no set of them is independent and a rank or permutation test over "
                "them would be anticonservative. Use --test corrected-t (Nadeau–Bengio), or auto."
            )
        sizes = {int(f): (int(a), int(b)) for f, (a, b) in (run.meta.get("fold_sizes") or {}).items()}
        if not sizes:  # runs written before fold sizes were recorded: read them from the cells
            for r in run.cells[run.cells.status == "done"].drop_duplicates("fold").itertuples():
                res = run.result(r.key)
                if res.n_train:
                    sizes[int(r.fold)] = (res.n_train, res.n_val)
        n_test = int((run.meta.get("dataset") or {}).get("n_test") or 0)
        return cls(opts.split, test, monte_carlo, k, repeats, len(run.suite.training.seeds), sizes, n_test)

    def units(self, x: pd.Series, y: pd.Series):
        """Paired vectors for the test, and the test-to-train size ratio for the corrected t."""
        x, y = aligned(x, y)
        if len(x) == 0:
            return np.array([]), np.array([]), None
        folds = x.index.get_level_values("fold").to_numpy()
        if self.test == "corrected-t":
            a, b = x.groupby(level="fold").mean(), y.groupby(level="fold").mean()
            ratios = [self._ratio(int(f)) for f in a.index]
            ratios = [r for r in ratios if r is not None]
            return a.to_numpy(), b.to_numpy(), (float(np.mean(ratios)) if ratios else None)
        unit = folds % self.k
        a = x.groupby(unit).mean()
        b = y.groupby(unit).mean()
        return a.to_numpy(), b.to_numpy(), None

    def _ratio(self, fold):
        if fold not in self.sizes:
            return None
        n_train, n_val = self.sizes[fold]
        n_eval = n_val if self.split == "val" else self.n_test
        return n_eval / n_train if n_train else None

    def p_value(self, x: pd.Series, y: pd.Series) -> float:
        a, b, ratio = self.units(x, y)
        if len(a) < 2:
            return np.nan
        if self.test == "corrected-t":
            if ratio is None:
                raise BenchError(
                    "the corrected t-test needs each fold's training and validation sizes, which this "
                    "run does not record; use --test wilcoxon or permutation."
                )
            return paired_test(a, b, "corrected-t", 1.0, ratio)
        return paired_test(a, b, self.test)

    @property
    def n_units(self) -> int:
        if self.test == "corrected-t":
            return self.k * self.repeats
        return self.k

    def unit_text(self) -> str:
        extra = []
        if self.repeats > 1:
            extra.append(f"{self.repeats} repeats")
        if self.seeds > 1:
            extra.append(f"{self.seeds} seeds")
        if self.test == "ranksum":
            per = f", each the mean over {' × '.join(extra)} of that fold index" if extra else ""
            return (
                f"none — unpaired: the two samples are the per-fold-index values of each side (n = {self.k} "
                f"each{per}); the fold pairing is ignored"
            )
        if self.test == "corrected-t":
            if self.monte_carlo:
                return (
                    f"Monte-Carlo split (n = {self.k} overlapping splits"
                    + (f", each the mean over {self.seeds} seeds" if self.seeds > 1 else "")
                    + "); variance corrected for the overlap (Nadeau–Bengio), df = n − 1"
                )
            core = f"resample (n = {self.k * self.repeats} = {self.repeats} × {self.k} folds"
            return (
                core
                + (f", each the mean over {self.seeds} seeds" if self.seeds > 1 else "")
                + "); variance corrected for overlapping training sets ("
                + ("Bouckaert–Frank repeated k-fold" if self.repeats > 1 else "Nadeau–Bengio")
                + "), df = n − 1"
            )
        if extra:
            return f"fold index (n = {self.k}; each value the mean over {' × '.join(extra)} of that fold index)"
        return f"fold (n = {self.k})"

    def split_text(self) -> str:
        return (
            "validation folds (each fold's model on its own validation part)"
            if self.split == "val"
            else "held-out test set (each fold's model on the same test images)"
        )


def legend(
    opts: Options,
    design: Design,
    m: int,
    reference: str | None,
    subject="Stars: {paired} comparison with",
    family="the {m} comparisons of this table",
) -> str:
    """What a star means in this table, and when stars are impossible or unreliable at this n. `reference` is
    what the stars were computed against (None: every pair, or each row's own reference, said by `subject`)."""
    subject = subject.format(paired="unpaired" if design.test == "ranksum" else "paired")
    head = f"{subject} {reference}" if reference is not None else subject
    text = (
        f"{head} on the {design.split_text()}. Pairing unit: {design.unit_text()}. "
        f"Test: {TESTS[design.test]}; correction: {CORRECTIONS[opts.correction]} over "
        f"{family.format(m=m)}; α = {opts.alpha}; * p < {opts.alpha:g}, ** p < {opts.alpha / 5:g}, "
        f"*** p < {opts.alpha / 50:g}."
    )
    if m and not stars_allowed(opts, design, m):
        n = design.n_units
        floor = smallest_p(design.test, n)
        if design.test == "corrected-t":
            text += (
                f" NO STARS DRAWN: with n = {n} pairing units no distribution-free paired test can give p below "
                f"{floor:.4f}, so after the {CORRECTIONS[opts.correction]} correction over {m} comparisons no "
                f"difference could reach α = {opts.alpha} without resting wholly on the normality of {n} "
                "differences: significance is unreliable at this n, and the absence of stars says nothing about "
                "the absence of differences."
            )
        else:
            text += (
                f" NO STARS POSSIBLE: with n = {n} pairing units the smallest possible p of this test is "
                f"{floor:.4f}, so after the {CORRECTIONS[opts.correction]} correction over {m} comparisons no "
                f"difference can reach α = {opts.alpha}: the absence of stars says nothing about the absence of "
                "differences."
            )
    return text


def stars_allowed(opts: Options, design: Design, m: int) -> bool:
    return significance_possible(design.test, design.n_units, m, opts.correction, opts.alpha)


IN_SAMPLE_MARK = " ‡"


def in_sample(run: Run, split: str) -> set[str]:
    """Formulations whose numbers on this split are partly in-sample: a fine-tuning stage whose class weights
    come from the stage-1 model's F1 on the validation fold is then scored on that same fold."""
    if split != "val":
        return set()
    return {f.display for f in run.suite.formulations if f.finetune == "inverse_f1"}


def mark_in_sample(run: Run, split: str, name: str) -> str:
    """A formulation's name, with ‡ where its numbers on this split are partly in-sample."""
    return name + IN_SAMPLE_MARK if name in in_sample(run, split) else name


def protocol_notes(run: Run, split: str = "val") -> list[str]:
    """In-sample status and provenance: cross-fitted decoding, in-sample fine-tuning weights, tuned formulations."""
    notes = []
    fitted = [f.display for f in run.suite.formulations if run.fits_decoding(f.display)]
    leaky = sorted(in_sample(run, split))
    if fitted:
        notes.append(
            f"Fitted decoding ({', '.join(fitted)}): validation metrics are "
            "cross-fitted (parameters fitted on one half of the fold's validation images, scored on the "
            "other, and swapped; halves stratified and patient-grouped where the protocol groups); the test "
            "set is decoded with the parameters fitted on the whole validation fold."
        )
    if leaky:
        notes.append(
            f"‡ IN-SAMPLE: the validation numbers of {', '.join(leaky)} are partly in-sample — the inverse-F1 class "
            "weights of its fine-tuning stage come from the stage-1 model's F1 on the same validation fold they "
            "are then scored on. Compare them on the held-out test set (--split test, Table 5), where they are not."
        )
    else:
        notes.append(
            "No number is in-sample" + (" (the fitted decoding is cross-fitted, as above)." if fitted else ".")
        )
    for f in run.suite.formulations:
        if f.tuned:
            notes.append(f"{f.display}: options tuned — {f.tuned}")
    return notes


# ---------------------------------------------------------------------------- tables


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
PER_CLASS_METRICS = ("f1", "recall", "precision", "specificity", "auc")


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
            flag = _incomplete(run, b, f)
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


def default_backbone(run: Run, opts: Options) -> str:
    if opts.backbone:
        return opts.backbone
    return "densenet121" if "densenet121" in run.backbones else run.backbones[0]


WIDE = 8  # more formulations than this: tables that put them in columns are transposed to stay readable


def transposed(table: Table, corner: str) -> Table:
    """Rows become columns (bold cells follow); the first column's values become the header."""
    header = [corner] + [row[0] for row in table.rows]
    rows = [[table.columns[j]] + [row[j] for row in table.rows] for j in range(1, len(table.columns))]
    bold = {(j - 1, i + 1) for i, j in table.bold}
    return Table(table.title, header, rows, bold, table.notes, table.key)


def mtl_tasks(run: Run, opts: Options, items: list[str] | None = None, title: str | None = None) -> Table | None:
    tasks = run.extra_tasks()
    forms = [
        f
        for f in run.formulations
        if (items is None or f in items)
        and any(len(run.series(b, f, opts.split, t, "accuracy")) for b in run.backbones for t in tasks)
    ]
    if not forms:
        return None
    rows = []
    for b in run.backbones:
        for f in forms:
            rows.append(
                [b, mark_in_sample(run, opts.split, f)]
                + [fmt(run.series(b, f, opts.split, t, "accuracy")) for t in list(tasks) + ["mes"]]
            )
    return Table(
        title or "Table 3 — per-task accuracy of the multi-task formulations",
        ["backbone", "formulation"]
        + [f"{t} ({' vs '.join(c)})" for t, c in tasks.items()]
        + [f"{run.scale.k}-class {run.scale.name}"],
        rows,
        notes=[
            "Each task's accuracy on the images that belong to that task only (sub-task labels −1 "
            f"excluded); {spread_text(run)}, on the {Design.of(run, opts).split_text()}."
        ]
        + protocol_notes(run, opts.split),
        key="mtl_tasks",
    )


def finetune_comparisons(run: Run) -> list[tuple[str, str, str]]:
    """(before, after, what the difference isolates) for every fine-tuned formulation, and +f1 vs +ft where
    both exist: the control separates re-weighting from extra epochs at a new learning rate."""
    out = []
    forms = run.suite.formulations
    what = {
        "inverse_f1": "re-weighting + extra training",
        "drw": "effective-number re-weighting + extra training",
        "plain": "extra training alone",
    }
    for f in forms:
        if f.finetune:
            out.append((f.base().display, f.display, what[f.finetune]))
    alone = {"inverse_f1": "re-weighting alone", "drw": "effective-number re-weighting alone"}
    for f in forms:
        if f.finetune in alone:
            for g in forms:
                if g.finetune == "plain" and g.base().display == f.base().display:
                    out.append((g.display, f.display, alone[f.finetune]))
    # the two re-weightings from the same stage 1, same stage 2 schedule: only the weights differ
    for f in forms:
        if f.finetune == "drw":
            for g in forms:
                if g.finetune == "inverse_f1" and g.base().display == f.base().display:
                    out.append((f.display, g.display, "inverse-F1 vs effective-number weights"))
    return out


def finetune_effect(run: Run, opts: Options) -> Table | None:
    opts = resolve(run, opts)
    pairs = finetune_comparisons(run)
    if not pairs:
        return None
    design = Design.of(run, opts)
    rows, pvals = [], []
    for b in run.backbones:
        for before, after, what in pairs:
            for k, cls in enumerate(run.scale.classes):
                row = [b, f"{before} → {mark_in_sample(run, opts.split, after)}", what, cls]
                for metric in ("f1", "recall", "precision"):
                    x, y = aligned(
                        run.series(b, before, opts.split, "mes", metric, str(k)),
                        run.series(b, after, opts.split, "mes", metric, str(k)),
                    )
                    if len(x) == 0:
                        row += ["—", "—"]
                        if metric == "f1":
                            pvals.append(np.nan)
                        continue
                    d = y - x
                    row += [f"{x.mean():.3f} → {y.mean():.3f}", f"{d.mean():+.3f}"]
                    if metric == "f1":
                        pvals.append(design.p_value(y, x))
                rows.append(row)
    valid = [p for p in pvals if not np.isnan(p)]
    adj = iter(adjust(valid, opts.correction))
    allowed = stars_allowed(opts, design, len(valid))
    for row, p in zip(rows, pvals):
        row.append("—" if np.isnan(p) else f"{next(adj):.3g}" + ("" if allowed else " (n.s. at this n)"))
    weights_note = (
        "Inverse-F1 weights: w ∝ 1/max(F1, ε) per class on the stage-1 model's validation fold, capped at "
        "max_weight × the smallest and normalised to mean 1 (stored per cell). Stage 2 of `+f1` and of its "
        "control `+ft` is identical (same start, epochs, learning rate) except the weights; model "
        "selection in stage 2 monitors the unweighted validation loss, as in stage 1."
    )
    if any(f.finetune == "drw" for f in run.suite.formulations):
        weights_note += (
            " `+drw` (deferred re-weighting, Cao et al. 2019) is the same stage 2 with effective-number weights of "
            "the fold's training class counts, w ∝ (1 − β)/(1 − β^n), normalised to mean 1 (β = finetune_options.beta, "
            "0.999 unless set); they use no validation data, so `+drw` is never in-sample."
        )
    notes = [
        "Before → after fine-tuning, mean over folds; Δ = after − before per fold, averaged.",
        weights_note,
        legend(
            opts,
            design,
            len(valid),
            None,
            subject="p (ΔF1): {paired} comparison of after with before (the 'reference' of each row)",
        ),
    ]
    notes += [n for n in protocol_notes(run, opts.split) if n.startswith("‡")]
    if not any(f.finetune == "plain" for f in run.suite.formulations):
        notes.append(
            "No `+ft` control in this suite: '+f1 vs stage 1' mixes re-weighting with extra training. Add "
            "`X+ft` next to `X+f1` to separate them."
        )
    return Table(
        "Table 4 — effect of fine-tuning",
        [
            "backbone",
            "comparison",
            "isolates",
            "class",
            "F1",
            "ΔF1",
            "recall",
            "Δrecall",
            "precision",
            "Δprecision",
            "p (ΔF1)",
        ],
        rows,
        notes=notes,
        key="finetune",
    )


# ---------------------------------------------------------------------------- held-out test: fold-ensembles


@dataclass
class FoldPredictions:
    """Test-set outputs of every cell, aligned by image, prepared once."""

    by_key: dict
    codes: np.ndarray
    image_ids: np.ndarray
    y_by_image: np.ndarray
    outputs: list  # per row: float64 outputs of the formulation

    @classmethod
    def from_frame(cls, preds: pd.DataFrame) -> FoldPredictions:
        codes, uniques = pd.factorize(preds.image_id)
        y = np.zeros(len(uniques), dtype=np.int64)
        y[codes] = preds.y_true.to_numpy()
        return cls(preds.groupby("key").indices, codes, np.asarray(uniques), y, preds.outputs.tolist())

    def stacked(self, keys):
        """(models, images, m) outputs of these cells on the images all of them predicted, and those images."""
        per_key = []
        for k in keys:
            pos = self.by_key[k]
            order = np.argsort(self.codes[pos], kind="stable")
            pos = pos[order]
            per_key.append((self.codes[pos], pos))
        common = per_key[0][0]
        for c, _ in per_key[1:]:
            common = np.intersect1d(common, c)
        mats = []
        for c, pos in per_key:
            sel = pos[np.isin(c, common)]
            mats.append(np.stack([np.frombuffer(self.outputs[i], dtype=np.float64) for i in sel]))
        return np.stack(mats), common


def ensemble(run: Run, tp: FoldPredictions, b: str, f: str):
    """The fold-ensemble of backbone b × formulation f by the formulation's own rule: (image codes, true
    grades, predicted grades, number of models) or None."""
    keys = [
        k
        for k in run.cells[(run.cells.backbone == b) & (run.cells.formulation == f) & (run.cells.status == "done")].key
        if k in tp.by_key
    ]
    if not keys:
        return None
    formulation = run.formulation(f)
    stacked, codes = tp.stacked(keys)
    states = [state or formulation.initial_state() for state in run.states(keys)]
    pred = formulation.ensemble_predict(stacked, states)
    return codes, tp.y_by_image[codes], np.asarray(pred), len(keys)


def reference_variant(run: Run, opts: Options, axis: str) -> str:
    """The variant of an ablation axis the others are compared with: the one `--reference` names, else the first."""
    names = list(run.stored_suite.variants[axis])
    return opts.reference if opts.reference in names else names[0]


def row_references(run: Run, opts: Options) -> tuple[dict[str, str], str | None]:
    """Each row's reference for a paired difference, and the ablation axis it is taken along (None: one reference
    for every row, the run's --reference). Along an axis (`--compare AXIS`) a row is compared with the reference
    variant of its own group, the rows that differ from it only in that axis."""
    from .load import variant_groups

    if opts.compare in run.stored_suite.variants:
        axis = opts.compare
        wanted = reference_variant(run, opts, axis)
        refs = {}
        for _, items, names in variant_groups(run, axis):
            ref = items[names.index(wanted)]
            refs.update({item: ref for item in items})
        return refs, axis
    one = opts.reference
    if one is not None and one in run.formulations:
        return {f: one for f in run.formulations}, None
    return {}, None


def external_sets(run: Run) -> dict[str, dict]:
    """The run's external test sets (`test_sets:`): name -> what `bench run` recorded of it."""
    return run.meta.get("test_sets") or {}


def _ci(point: float, low: float, high: float, signed: bool = False) -> str:
    """'0.812 [0.790, 0.833]'; a statistic undefined on this set (a grade it lacks) is 'absent', never 0."""
    if np.isnan(point):
        return "absent"
    f = "+.3f" if signed else ".3f"
    return f"{point:{f}} [{low:{f}}, {high:{f}}]"


def test_ensemble(run: Run, opts: Options, preds: pd.DataFrame, external: str | None = None) -> Table | None:
    """Table 5: the fold-ensemble on the held-out test set, or (`external`) on that external test set."""
    opts = resolve(run, opts)
    title = (
        "Table 5 — held-out test set, fold-ensemble"
        if external is None
        else f"Table 5c — external test set {external!r}, fold-ensemble"
    )
    if preds.empty:
        return None
    if preds.outputs.isna().any():
        return Table(
            title,
            ["note"],
            [
                [
                    "this run's test predictions carry no formulation outputs (written by an older mesbench): "
                    "no ensemble "
                    "can be decoded by the formulations' own rules, so none is shown"
                ]
            ],
            key="test",
        )
    tp = FoldPredictions.from_frame(preds)
    groups = (run.meta.get("test_groups") if external is None else run.meta.get(f"external_groups:{external}")) or {}
    clustered = bool(groups)
    rows = []
    dropped: dict[str, int] = {}  # metric -> most resamples on which it was undefined (a grade absent)
    refs, along = row_references(run, opts)
    metric_names = ensemble_metrics(run.scale.classes)
    for b in run.backbones:
        ensembles = {f: ensemble(run, tp, b, f) for f in run.formulations}
        for f in run.formulations:
            ref_name = refs.get(f)
            ref = ensembles.get(ref_name) if ref_name else None
            ens = ensembles[f]
            n_cols = len(metric_names) + 3 + (0 if clustered else 1)
            if ens is None:
                rows.append([b, f] + ["—"] * n_cols)
                continue
            codes, y, pred, n_models = ens
            row = [b, f + (" †" if _incomplete(run, b, f) else "")]
            if ref is not None and f != ref_name:
                common, ia, ib = np.intersect1d(codes, ref[0], return_indices=True)
                yc, preds_list = y[ia], [ref[2][ib], pred[ia]]
            else:
                common, yc, preds_list = codes, y, [pred]
            clusters = [groups.get(i, i) for i in tp.image_ids[common]] if clustered else np.arange(len(common))
            boot = cluster_bootstrap(yc, preds_list, clusters, opts.n_resamples, k=run.scale.k)
            point, lo, hi = boot
            me = len(preds_list) - 1
            for i, name in enumerate(metric_names):
                if boot.undefined[me, 0, i]:
                    dropped[name] = max(dropped.get(name, 0), int(boot.undefined[me, 0, i]))
            row += [_ci(point[me, 0, i], lo[me, 0, i], hi[me, 0, i]) for i in range(len(metric_names))]
            if f == ref_name:
                row += ["reference", "reference"]
            elif me == 0:
                row += ["—", "—"]
            else:
                row += [_ci(point[1, 1, i], lo[1, 1, i], hi[1, 1, i], signed=True) for i in (0, 1)]
            if not clustered:
                if f == ref_name:
                    row.append("reference")
                elif me == 0:
                    row.append("—")
                else:
                    n01, n10, p = mcnemar_exact(yc, preds_list[1], preds_list[0])
                    row.append(f"{n01}/{n10}, p = {p:.3g}")
            row.insert(2, str(n_models))
            rows.append(row)
    by_rule: dict[str, list[str]] = {}
    for f in run.formulations:
        by_rule.setdefault(run.formulation(f).ensemble_rule, []).append(f)
    rules = "; ".join(f"{', '.join(fs)}: {rule}" for rule, fs in by_rule.items())
    if clustered:
        n_pat = len(set(groups.values()))
        ci = (
            f"95% percentile CIs from a patient-level (cluster) bootstrap: the {n_pat} test patients are resampled "
            f"with replacement ({opts.n_resamples} resamples, scipy.stats.bootstrap), since images of one patient are "
            "correlated. Δ = this formulation − the reference, computed on the same resamples (a paired CI of the "
            "difference). McNemar's test is not shown: it assumes independent images."
        )
    else:
        ci = (
            f"This dataset has no patient ids: 95% paired percentile bootstrap CIs over images ({opts.n_resamples} "
            "resamples, scipy.stats.bootstrap); Δ = this − reference on the same resamples. McNemar b/c = images "
            "only this / only the reference gets right; exact, uncorrected."
        )
    notes = [
        f"{'Held-out test set' if external is None else external_text(run, external)}; ensemble = the fold models "
        f"(column 'models') combined and decoded by each formulation's own rule — {rules}.",
        ci,
    ]
    if along:
        notes.append(
            f"Δ{'' if clustered else ' and McNemar'} along the ablation axis {along!r}: each row against the {along} "
            "variant "
            f"{reference_variant(run, opts, along)!r} of its own formulation and backbone (every other setting "
            "identical); the reference rows say 'reference'."
        )
    notes += undefined_notes(dropped, opts.n_resamples, "patient" if clustered else "image")
    if clustered:
        notes += few_patient_notes(tp, groups, run.scale)
    notes += protocol_notes(run, "test")
    against = f"its {along} reference" if along else opts.reference
    columns = (
        ["backbone", "formulation", "models"] + metric_names + [f"Δ accuracy vs {against}", f"Δ macro-F1 vs {against}"]
    )
    if not clustered:
        columns.append(f"McNemar vs {against} (b/c, exact p)")
    return Table(title, columns, rows, notes=notes, key="test" if external is None else f"external:{external}")


def external_text(run: Run, name: str) -> str:
    """What an external set is, in words: its size, what label_map dropped, and the grades it lacks."""
    info = external_sets(run).get(name, {})
    scale = run.scale
    mapping = info.get("mapping") or {}
    mapped = ", ".join(f"{k} → {'dropped' if v is None else scale.classes[v]}" for k, v in mapping.items())
    text = (
        (
            f"External test set {name!r}: "
            if info.get("in_sample")
            else f"External test set {name!r} (another centre; never used for training, model selection or decoding): "
        )
        + f"{info.get('images', '?')} images"
        + (f" of {info['patients']} patients" if info.get("patients") else ", no patient ids")
        + (f", {info['dropped']} more dropped by its label_map" if info.get("dropped") else "")
        + (f"; its classes mapped {mapped}" if mapped else "")
        + ", normalised with each fold's own training statistics as the internal test set"
    )
    if info.get("in_sample"):
        text += (
            f". IN-SAMPLE: {info['in_sample']} of its images are images of the suite's own dataset (identical "
            "pixels), which the models were trained, selected and decoded on, so these numbers are partly in-sample"
        )
    absent = info.get("absent") or []
    if absent:
        text += (
            f". Grades absent from it: {', '.join(absent)} — their recall is absent, not 0, and macro-F1 averages "
            "over the grades present"
        )
    return text


DROP_METRICS = ("accuracy", "macro-F1", "QWK")


def external_drop(run: Run, opts: Options, internal: pd.DataFrame, external: pd.DataFrame, name: str) -> Table | None:
    """The drop from the internal to an external test set: for each backbone × formulation, the fold-ensemble's
    metric on the external set minus that on the internal one, with a CI from resampling the two sets independently
    (each by its patients where it has them, else by image)."""
    from .stats import independent_difference

    opts = resolve(run, opts)
    if internal.empty or external.empty or internal.outputs.isna().any() or external.outputs.isna().any():
        return None
    ti, te = FoldPredictions.from_frame(internal), FoldPredictions.from_frame(external)
    gi = run.meta.get("test_groups") or {}
    ge = run.meta.get(f"external_groups:{name}") or {}
    rows = []
    for b in run.backbones:
        for f in run.formulations:
            a, e = ensemble(run, ti, b, f), ensemble(run, te, b, f)
            if a is None or e is None:
                rows.append([b, f] + ["—"] * len(DROP_METRICS))
                continue
            ca = [gi.get(i, i) for i in ti.image_ids[a[0]]] if gi else np.arange(len(a[0]))
            ce = [ge.get(i, i) for i in te.image_ids[e[0]]] if ge else np.arange(len(e[0]))
            res = independent_difference(a[1], a[2], ca, e[1], e[2], ce, run.scale.k, opts.n_resamples)
            rows.append(
                [b, f + (" †" if _incomplete(run, b, f) else "")]
                + [_ci(res.point[i], res.low[i], res.high[i], signed=True) for i in range(len(DROP_METRICS))]
            )
    units = ("patients" if gi else "images", "patients" if ge else "images")
    notes = [
        f"Δ = the fold-ensemble's metric on the external test set {name!r} − on the held-out (internal) test set, each "
        "decoded by the formulation's own rule; negative: worse at the other centre.",
        f"95% percentile CIs from {opts.n_resamples} bootstrap resamples drawn independently from the two sets "
        f"(internal by {units[0]}, external by {units[1]}; scipy.stats.bootstrap, paired=False): the sets share no "
        "image or patient.",
    ]
    return Table(
        f"Table 5d — from the internal to the external test set {name!r}",
        ["backbone", "formulation"] + [f"Δ {m}" for m in DROP_METRICS],
        rows,
        notes=notes,
        key=f"external_drop:{name}",
    )


def patient_level(run: Run, opts: Options, preds: pd.DataFrame) -> Table | None:
    """Clinically a patient's (a colonoscopy's) MES is its worst segment's: each test patient's predicted grade is
    the maximum (or `opts.patient_quantile`) of the fold-ensemble's image grades, against the maximum of the true
    image grades; metrics with a bootstrap over patients. Absent, with a note, where the data has no patients."""
    title = "Table 5b — patient-level scores (held-out test set, fold-ensemble)"
    if preds.empty:
        return None
    groups = run.meta.get("test_groups") or {}
    if not groups:
        return Table(
            title,
            ["note"],
            [["this dataset has no patient ids (a folder tree without them): no patient-level scores"]],
            key="patient",
        )
    if preds.outputs.isna().any():
        return None  # said by Table 5: no ensemble can be decoded from this run's stored predictions
    tp = FoldPredictions.from_frame(preds)
    rule = "maximum" if opts.patient_quantile >= 1 else f"{opts.patient_quantile:g} quantile (next grade up)"
    rows = []
    n_patients = 0
    per_grade: np.ndarray | None = None
    absent: set[str] = set()
    dropped: dict[str, int] = {}  # metric -> most resamples on which it was undefined (a grade absent)
    scale = run.scale
    metric_names = patient_metric_names(scale)
    for b in run.backbones:
        for f in run.formulations:
            ens = ensemble(run, tp, b, f)
            if ens is None:
                rows.append([b, f, "—"] + ["—"] * len(metric_names))
                continue
            codes, y, pred, _ = ens
            patients = [groups.get(i, i) for i in tp.image_ids[codes]]
            ids, true_grade = patient_grades(patients, y, 1.0)
            _, pred_grade = patient_grades(patients, pred, opts.patient_quantile)
            n_patients = len(ids)
            per_grade = np.bincount(true_grade, minlength=scale.k)
            boot = patient_bootstrap(true_grade, pred_grade, opts.n_resamples, scale=scale)
            cells = []
            for i, name in enumerate(metric_names):
                if boot.undefined[i] and not np.isnan(boot.point[i]):
                    dropped[name] = max(dropped.get(name, 0), int(boot.undefined[i]))
                if np.isnan(boot.point[i]):
                    cells.append("absent")
                    absent.add(name)
                else:
                    cells.append(f"{boot.point[i]:.3f} [{boot.low[i]:.3f}, {boot.high[i]:.3f}]")
            rows.append([b, f + (" †" if _incomplete(run, b, f) else ""), str(n_patients)] + cells)
    if scale.binary_cut is not None:
        low, high = scale.binary_names
        binary = f" {' vs '.join(scale.binary_short).capitalize()}: {low} against {high} at patient level."
    else:
        binary = ""
    notes = [
        f"Patient level: each test patient's predicted {scale.name} is the {rule} of the fold-ensemble's grades of "
        f"their images (each formulation decoded by its own rule, as in Table 5), its true {scale.name} the maximum "
        f"of the true image grades.{binary}",
        f"95% percentile CIs from a bootstrap over the {n_patients} test patients ({opts.n_resamples} resamples, "
        "scipy.stats.bootstrap); every patient counts once, whatever their number of images.",
    ]
    if per_grade is not None:
        notes.append(
            "Test patients per true patient grade: "
            + ", ".join(f"{c}: {int(n)}" for c, n in zip(scale.classes, per_grade))
            + (
                f" — a grade with fewer than {MIN_PATIENTS_PER_GRADE} patients has a recall resting on that few."
                if any(0 < n < MIN_PATIENTS_PER_GRADE for n in per_grade)
                else "."
            )
        )
    if absent:
        notes.append(
            f"absent: no test patient has that true grade ({', '.join(sorted(absent))}), so its recall is undefined "
            "(not 0)."
        )
    notes += undefined_notes(dropped, opts.n_resamples, "patient", scored="patient")
    notes += protocol_notes(run, "test")
    return Table(title, ["backbone", "formulation", "patients"] + metric_names, rows, notes=notes, key="patient")


MIN_PATIENTS_PER_GRADE = 5


def undefined_notes(dropped: dict[str, int], n_resamples: int, unit: str, scored: str = "image") -> list[str]:
    """Say which statistics were undefined on some resamples and left out of their CI there (`scored`: what the
    metrics count, images or patients)."""
    if not dropped:
        return []
    parts = [f"{name}: up to {n} of {n_resamples}" for name, n in dropped.items()]
    return [
        f"Some {unit} resamples contain no {scored} of a grade, on which that grade's recall and F1 are undefined: "
        "those resamples are left out of the statistic's CI (not scored as 0), and macro-F1 averages over the "
        f"grades present in each resample. Resamples left out — {'; '.join(parts)}."
    ]


def few_patient_notes(tp: FoldPredictions, groups: dict, scale: Scale) -> list[str]:
    """Warn where a grade's test images come from so few patients that a patient-level CI is fragile."""
    notes = []
    for k, cls in enumerate(scale.classes):
        ids = tp.image_ids[tp.y_by_image == k]
        n = len({groups.get(i, i) for i in ids})
        if 0 < n < MIN_PATIENTS_PER_GRADE:
            notes.append(
                f"WARNING: the {len(ids)} test images of {cls} come from only {n} patient(s) (fewer than "
                f"{MIN_PATIENTS_PER_GRADE}): every statistic of {cls} rests on {n} patient(s), and its interval "
                "says little."
            )
    return notes


# ---------------------------------------------------------------------------- ranking over blocks


MIN_FRIEDMAN_BLOCKS = 3


def friedman_table(run: Run, opts: Options, axis: str | None = None) -> tuple[Table | None, object]:
    if axis is not None:
        return axis_friedman_table(run, opts, axis)
    forms, bbs = run.formulations, run.backbones
    if len(forms) < 3 or len(bbs) < 2:
        return None, None
    if len(bbs) < MIN_FRIEDMAN_BLOCKS:
        return Table(
            "Table 6 — Friedman ranking",
            ["note"],
            [
                [
                    "not shown: the Friedman test ranks formulations within blocks (here backbones) and needs at "
                    f"least {MIN_FRIEDMAN_BLOCKS}; this run has {len(bbs)}, with which no ranking difference can be "
                    "significant. "
                    "Folds of one dataset are not independent blocks."
                ]
            ],
            key="friedman",
        ), None
    scores = np.array([[run.series(b, f, opts.split, "mes", opts.metric, "macro").mean() for f in forms] for b in bbs])
    if np.isnan(scores).any():
        return Table(
            "Table 6 — Friedman ranking",
            ["note"],
            [["incomplete run: every backbone × formulation needs results to rank"]],
            key="friedman",
        ), None
    res = friedman(scores, forms, opts.alpha)
    rank_rows = []
    from scipy.stats import rankdata

    per_block = {b: rankdata(-scores[i]) for i, b in enumerate(bbs)}
    for f in sorted(forms, key=lambda f: res.mean_ranks[f]):
        j = forms.index(f)
        rank_rows.append(
            [mark_in_sample(run, opts.split, f), f"{res.mean_ranks[f]:.2f}"] + [f"{per_block[b][j]:g}" for b in bbs]
        )
    notes = [
        f"Blocks: the {len(bbs)} backbones (macro {opts.metric} on the {Design.of(run, opts).split_text()}, "
        "averaged over "
        f"folds); rank 1 = best. {res.text()}; Nemenyi critical difference CD = "
        f"{res.critical_difference:.3f} at α = {opts.alpha} — formulations whose mean ranks differ by less than "
        "CD are not distinguishable." + (f" {res.note}" if res.note else "")
    ] + [n for n in protocol_notes(run, opts.split) if n.startswith("‡")]
    return Table(
        "Table 6 — Friedman / Nemenyi ranking of formulations",
        ["formulation", "mean rank"] + bbs,
        rank_rows,
        notes=notes,
        key="friedman",
    ), (res, scores, sorted(in_sample(run, opts.split) & set(forms)))


def axis_friedman_table(run: Run, opts: Options, axis: str) -> tuple[Table | None, object]:
    """Table 6 along an ablation axis (`--compare AXIS`): the axis's variants ranked within every setting held fixed
    (backbone × formulation × the other axes' variants)."""
    from .load import variant_groups

    groups = [(b, fixed, items) for b in run.backbones for fixed, items, _ in variant_groups(run, axis)]
    names = list(run.stored_suite.variants[axis])
    title = f"Table 6 — Friedman / Nemenyi ranking of the {axis} variants"
    if len(names) < 3:
        note = (
            f"not shown: a Friedman ranking needs at least three variants to rank, and the axis {axis!r} has "
            f"{len(names)} ({', '.join(names)}); Table 2 compares them pairwise, within each backbone and setting."
        )
        return Table(title, ["note"], [[note]], key="friedman"), None
    if len(groups) < MIN_FRIEDMAN_BLOCKS:
        note = (
            f"not shown: the Friedman test ranks the {axis} variants within blocks (here backbone × the settings "
            f"held fixed) and needs at least {MIN_FRIEDMAN_BLOCKS}; this run has {len(groups)}."
        )
        return Table(title, ["note"], [[note]], key="friedman"), None
    scores = np.array(
        [[run.series(b, it, opts.split, "mes", opts.metric, "macro").mean() for it in items] for b, _, items in groups]
    )
    if np.isnan(scores).any():
        note = f"incomplete run: every backbone × setting × {axis} variant needs results to rank"
        return Table(title, ["note"], [[note]], key="friedman"), None
    res = friedman(scores, names, opts.alpha)
    from scipy.stats import rankdata

    ranks = np.vstack([rankdata(-row) for row in scores])
    blocks = [f"{b} · {fixed}" for b, fixed, _ in groups]
    rows = [
        [n, f"{res.mean_ranks[n]:.2f}"] + [f"{r:g}" for r in ranks[:, names.index(n)]]
        for n in sorted(names, key=lambda n: res.mean_ranks[n])
    ]
    notes = [
        f"Blocks: the {len(groups)} settings the {axis} variants share (backbone × formulation"
        + (" × the other axes' variants" if len(run.stored_suite.variants) > 1 else "")
        + f"; macro {opts.metric} on the {Design.of(run, opts).split_text()}, averaged over folds); rank 1 = best. "
        f"{res.text()}; Nemenyi critical difference CD = {res.critical_difference:.3f} at α = {opts.alpha} — variants "
        "whose mean ranks differ by less than CD are not distinguishable. These blocks share one dataset and its "
        "folds, so they are not the independent data sets the test assumes: read the ranking as a summary of "
        "consistency across settings, not as evidence about new data." + (f" {res.note}" if res.note else "")
    ]
    table = Table(title, [axis, "mean rank"] + blocks, rows, notes=notes, key="friedman")
    leak = in_sample(run, opts.split)
    leaky = [n for i, n in enumerate(names) if any(items[i] in leak for _, _, items in groups)]
    others = " × other axes" if len(run.stored_suite.variants) > 1 else ""
    return table, (res, scores, leaky, f"settings (backbone × formulation{others})", f"{axis} variants")


def throughput(run: Run, opts: Options) -> Table | None:
    """Per backbone × formulation: where it ran, with which numerics, and how fast — a starved GPU shows as a
    low training rate next to a high evaluation rate."""
    rows = []
    for b in run.backbones:
        for f in run.formulations:
            keys = run.cells[
                (run.cells.backbone == b) & (run.cells.formulation == f) & (run.cells.status == "done")
            ].key
            results = [run.result(k) for k in keys]
            results = [r for r in results if r.timings]
            if not results:
                continue
            train = [r.timings.get("train_images_per_s") or 0.0 for r in results]
            evals = [r.timings.get("eval_images_per_s") or 0.0 for r in results]
            peaks = [int(r.timings["peak_memory_bytes"]) for r in results if r.timings.get("peak_memory_bytes")]
            fits = [r.timings["fit_seconds"] for r in results if r.timings.get("fit_seconds") is not None]
            first = results[0]
            params = first.timings.get("params")
            flops = first.timings.get("flops_per_image")
            rows.append(
                [
                    b,
                    f,
                    f"{params / 1e6:,.2f}" if params else "—",
                    f"{flops / 1e9:,.3f}" if flops else "—",
                    first.device_name or first.device or "—",
                    first.amp,
                    "yes" if first.compiled else "no",
                    "yes" if first.deterministic else "no",
                    f"{np.median(train):,.1f}",
                    f"{np.median(evals):,.1f}",
                    (f"{np.median(fits):.2f}" if any(fits) else "0") if fits else "—",
                    f"{max(peaks) / 2**20:,.0f}" if peaks else "—",
                ]
            )
    if not rows:
        return None
    return Table(
        "Table 7 — where and how fast each cell ran",
        [
            "backbone",
            "formulation",
            "parameters (M)",
            "GFLOPs / image",
            "device",
            "AMP",
            "compiled",
            "deterministic",
            "train images/s",
            "eval images/s",
            "decoding fit (s)",
            "peak device memory (MiB)",
        ],
        rows,
        notes=[
            "Parameters: backbone and head; GFLOPs: one forward pass of one image at the size the model saw, "
            "counted by torch's FlopCounterMode (a multiply-add counts 2; — where an operation has no FLOP formula "
            "or for runs recorded before it was counted). "
            "Median over the cells of each row; training rate over each epoch's training pass; evaluation rate "
            "over the model's inference on the validation and test images of the best epoch alone (loading the "
            "checkpoint and fitting the decoding are not in it); decoding fit: seconds spent fitting decoding "
            "parameters such as cut points, cross-fitting included (0 for formulations without fitted decoding; "
            "— for runs recorded before it was measured); peak memory is CUDA's max_memory_allocated since the "
            "cell started (— on the CPU)."
        ],
        key="throughput",
    )


# ---------------------------------------------------------------------------- calibration


@dataclass
class CalibrationData:
    """Per cell: validation and test (image ids, grades, class probabilities), each split read from the store once
    (the test split only when a table or figure asks for it); cells of formulations without class probabilities are
    absent. The cross-fitted temperature scaling of a cell's validation images is computed once, for the table and
    the figures alike."""

    run: Run
    val: dict
    _test: dict | None = None
    _scaled: dict = field(default_factory=dict)

    @classmethod
    def load(cls, run: Run) -> CalibrationData:
        return cls(run, cls._read(run, "val"))

    @staticmethod
    def _read(run: Run, split: str) -> dict:
        out = {}
        columns = list(run.scale.proba_columns)
        frame = run.store.predictions_frame(split, ["key", "image_id", "y_true", *columns])
        for key, g in frame.groupby("key", sort=False):
            proba = g[columns].to_numpy(float)
            if not np.isnan(proba).any():
                out[key] = (g.image_id.to_numpy(), g.y_true.to_numpy(np.int64), proba)
        return out

    @property
    def test(self) -> dict:
        if self._test is None:
            self._test = self._read(self.run, "test")
        return self._test

    def patients(self, ids) -> np.ndarray | None:
        """The patient of each validation image, where the run recorded them (None: split by image)."""
        groups = self.run.meta.get("val_groups")
        if not groups or any(i not in groups for i in ids):
            return None
        return np.array([groups[i] for i in ids])

    @property
    def halves_unit(self) -> str:
        return "patient" if self.run.meta.get("val_groups") else "image"

    def cells(self, run: Run, b: str, f: str) -> list[str]:
        c = run.cells
        keys = c[(c.backbone == b) & (c.formulation == f) & (c.status == "done")].key
        return [k for k in keys if k in self.val]

    def pooled_val(self, keys, temperature: bool = False):
        """Every validation image of these cells (out-of-fold: each fold's model on its own validation part); with
        `temperature`, each cell's probabilities cross-fitted-scaled on its own validation images."""
        from .calibration import cross_fitted_temperature

        ys, ps = [], []
        for k in keys:
            ids, y, p = self.val[k]
            if temperature:
                if k not in self._scaled:
                    self._scaled[k] = cross_fitted_temperature(y, p, groups=self.patients(ids))[0]
                p = self._scaled[k]
            ys.append(y)
            ps.append(p)
        return np.concatenate(ys), np.concatenate(ps)

    def test_ensemble(self, keys, temperatures: dict | None = None):
        """Fold-ensemble class probabilities on the test images every cell predicted: the mean of the fold models'
        probabilities (each scaled by its own validation temperature when given)."""
        from .calibration import with_temperature

        keys = [k for k in keys if k in self.test]
        if not keys:
            return None
        frames = []
        for k in keys:
            ids, y, p = self.test[k]
            if temperatures is not None:
                p = with_temperature(p, temperatures[k])
            frames.append(pd.DataFrame(p, index=ids).assign(_y=y))
        common = frames[0].index
        for fr in frames[1:]:
            common = common.intersection(fr.index)
        y = frames[0].loc[common, "_y"].to_numpy(np.int64)
        mean = np.mean([fr.loc[common].drop(columns="_y").to_numpy() for fr in frames], axis=0)
        return y, mean


def calibration_table(run: Run, opts: Options, data: CalibrationData, with_test: bool = True) -> Table | None:
    """ECE, adaptive ECE and Brier before → after temperature scaling, on validation (cross-fitted) and on the
    held-out test set (T of each fold model fitted on its whole validation fold, never on test); `with_test`
    False leaves the test columns empty without reading the test predictions."""
    from .calibration import N_BINS, calibration_scores, fit_temperature

    if not data.val:
        return None
    names = ["ECE", "adaptive ECE", "Brier"]
    rows = []
    without = []
    for b in run.backbones:
        for f in run.formulations:
            keys = data.cells(run, b, f)
            if not keys:
                if f not in without:
                    without.append(f)
                continue
            temps = {k: fit_temperature(data.val[k][1], data.val[k][2]) for k in keys}
            before = calibration_scores(*data.pooled_val(keys))
            after = calibration_scores(*data.pooled_val(keys, temperature=True))
            row = [b, mark_in_sample(run, "val", f), f"{np.median(list(temps.values())):.2f}"]
            row += [f"{before[n]:.3f} → {after[n]:.3f}" for n in names]
            ens = data.test_ensemble(keys) if with_test else None
            ens_t = data.test_ensemble(keys, temps) if with_test else None
            if ens is None or ens_t is None:
                row += ["—"] * len(names)
            else:
                tb, ta = calibration_scores(*ens), calibration_scores(*ens_t)
                row += [f"{tb[n]:.3f} → {ta[n]:.3f}" for n in names]
            rows.append(row)
    if not rows:
        return None
    notes = [
        f"Calibration of the top-class confidence: ECE with {N_BINS} equal-width bins, adaptive ECE with {N_BINS} "
        "equal-mass bins, multi-class Brier score (Σ over grades of the squared error of each probability; 0 best); "
        "each before → after temperature scaling (Guo et al. 2017: p ∝ p^(1/T), T minimising the validation NLL; the "
        "predicted grade of the mode is unchanged).",
        "Validation: every fold model's validation images pooled (out-of-fold). After-scaling numbers are "
        "cross-fitted: each fold's validation images are split into two grade-stratified halves"
        + (
            ", each patient's images in one half,"
            if data.halves_unit == "patient"
            else " of images (this run records no patient ids),"
        )
        + " each scaled with the T fitted on the other. T (median over fold models) is fitted on a model's whole "
        "validation fold.",
        "Test: the fold-ensemble's class probabilities (the mean of the fold models' probabilities) on the held-out "
        "test set; after scaling, each fold model's probabilities are scaled with its own validation T before the "
        "mean. The test set never fits anything.",
    ]
    if without:
        notes.append(f"Not shown (no class probabilities): {', '.join(without)}.")
    own = [f for f in run.formulations if run.formulation(f).options.get("calibration") == "temperature"]
    if own:
        notes.append(
            f"{', '.join(own)}: `calibration: temperature` — their stored probabilities are already temperature-scaled "
            "by their own decoding step (cross-fitted on validation), so 'before' is after that step and 'after' "
            "scales them once more."
        )
    notes += [n for n in protocol_notes(run, "val") if n.startswith("‡")]
    return Table(
        "Table 8 — calibration before → after temperature scaling",
        ["backbone", "formulation", "T"] + [f"val {n}" for n in names] + [f"test {n}" for n in names],
        rows,
        notes=notes,
        key="calibration",
    )


def operating_points(run: Run, opts: Options, data: CalibrationData) -> Table | None:
    """Sensitivity of each grade (one vs the rest, score = its class probability) at a fixed specificity: the
    threshold is read off the pooled validation ROC (the highest sensitivity whose validation specificity reaches
    the target), then the held-out test fold-ensemble is scored at it — its realised specificity printed beside,
    since a threshold chosen elsewhere need not hold it exactly."""
    from sklearn.metrics import roc_curve

    if not data.val or not data.test:
        return None
    target = opts.specificity
    rows = []
    unreachable: set[str] = set()
    for b in run.backbones:
        for f in run.formulations:
            keys = data.cells(run, b, f)
            ens = data.test_ensemble(keys) if keys else None
            if ens is None:
                continue
            yv, pv = data.pooled_val(keys)
            yt, pt = ens
            row = [b, mark_in_sample(run, "val", f)]
            for k in run.scale.grades:
                if not (yv == k).any() or (yv == k).all() or not (yt == k).any() or (yt == k).all():
                    row.append("—")
                    continue
                fpr, tpr, thr = roc_curve(yv == k, pv[:, k])
                ok = np.flatnonzero(fpr <= 1 - target + 1e-12)
                t = thr[ok[np.argmax(tpr[ok])]]
                hit = pt[:, k] >= t
                sens = hit[yt == k].mean()
                spec = 1 - hit[yt != k].mean()
                if np.isinf(t):  # roc_curve's first point: no threshold reaches the specificity but flagging none
                    unreachable.add(run.scale.classes[k])
                row.append(f"{sens:.3f} (spec {spec:.3f}, t = {'none' if np.isinf(t) else f'{t:.3f}'})")
            rows.append(row)
    if not rows:
        return None
    extra = []
    if unreachable:
        extra.append(
            f"t = none ({', '.join(sorted(unreachable))}): on validation no threshold reaches specificity {target:g} "
            "except one above every score, so no test image is called that grade (sensitivity 0, specificity 1): at "
            "this specificity the model cannot flag it. A lower --specificity finds an operating point."
        )
    return Table(
        f"Table 8b — sensitivity per grade at specificity {target:g} (held-out test set, fold-ensemble)",
        ["backbone", "formulation"] + [f"{c} sensitivity" for c in run.scale.classes],
        rows,
        notes=[
            f"One grade against the rest, scored by its class probability. Operating point: the threshold t with the "
            f"highest validation sensitivity among those whose validation specificity is at least {target:g} (every "
            "validation image of the fold models pooled; --specificity). At t, the fold-ensemble's probabilities (the "
            "mean of the fold models') on the held-out test set give the sensitivity shown, with the test "
            "specificity realised beside it: the test set chooses nothing.",
            f"For {run.scale.classes[-1]} a false negative (a severe case graded lower) is the costly error: its "
            "column is the sensitivity a screening use would get at this specificity.",
        ]
        + extra
        + [n for n in protocol_notes(run, "val") if n.startswith("‡")],
        key="operating_point",
    )
