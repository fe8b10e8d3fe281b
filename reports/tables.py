"""The report's tables, each a small function of a loaded run that returns a renderer-neutral Table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import Run
from .stats import (CORRECTIONS, ENSEMBLE_METRICS, TESTS, adjust, bootstrap_metrics, friedman, mcnemar_exact,
                    paired_test, significance_possible, smallest_p, stars)

CLASSES = ["MES 0", "MES 1", "MES 2", "MES 3"]


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
    reference: str = "softmax"
    test: str = "wilcoxon"
    correction: str = "holm"
    alpha: float = 0.05
    n_resamples: int = 1000


def fmt(values) -> str:
    v = np.asarray(values, float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"




def aligned(x: pd.Series, y: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two per-(seed, fold) series restricted to the folds both have: the pairing of every paired test."""
    common = x.index.intersection(y.index)
    return x[common], y[common]


def _incomplete(run: Run, b, f):
    c = run.cells[(run.cells.backbone == b) & (run.cells.formulation == f)]
    return (c.status != "done").any()


def fold_sizes(run: Run):
    """Mean training and validation sizes of the folds (for the corrected t-test)."""
    rows = run.cells[run.cells.status == "done"]
    if rows.empty:
        return None, None
    res = run.result(rows.key.iloc[0]) or {}
    return res.get("n_train"), res.get("n_val")


def legend(opts: Options, m: int, n_folds: int) -> str:
    text = (f"Stars: paired comparison with {opts.reference} — {TESTS[opts.test]}, correction "
            f"{CORRECTIONS[opts.correction]} over the {m} comparisons of this table, α = {opts.alpha}; "
            f"* p < {opts.alpha:g}, ** p < {opts.alpha / 5:g}, *** p < {opts.alpha / 50:g}.")
    if m and not significance_possible(opts.test, n_folds, m, opts.correction, opts.alpha):
        text += (f" NOTE: with {n_folds} folds the smallest possible p of this test is "
                 f"{smallest_p(opts.test, n_folds):.4f}, so after the {CORRECTIONS[opts.correction]} correction over "
                 f"{m} comparisons no difference can reach α = {opts.alpha}: the absence of stars here says nothing "
                 "about the absence of differences.")
    return text


SUMMARY_COLUMNS = [("accuracy", "mes", "accuracy", ""), ("macro-F1", "mes", "f1", "macro"), ("QWK", "mes", "qwk", ""),
                   ("MAE", "mes", "mae", ""), ("F1 MES 2", "mes", "f1", "2"), ("F1 MES 3", "mes", "f1", "3"),
                   ("recall MES 2", "mes", "recall", "2"), ("recall MES 3", "mes", "recall", "3"),
                   ("remission-vs-active F1", "ra", "f1", "")]


def cv_summary(run: Run, opts: Options) -> Table:
    rows, marked = [], False
    for b in run.backbones:
        for f in run.formulations:
            flag = _incomplete(run, b, f)
            marked |= flag
            rows.append([b, f + (" †" if flag else "")] + [fmt(run.series(b, f, opts.split, t, m, c))
                                                           for _, t, m, c in SUMMARY_COLUMNS])
    where = "cross-validation folds (each fold's model on its validation part)" if opts.split == "val" else \
        "held-out test set (each fold's model)"
    notes = [f"Mean ± sd over {where}."]
    if marked:
        notes.append("† incomplete: some cells of this row are failed or missing; its statistics use fewer folds.")
    return Table("Table 1 — cross-validation summary" if opts.split == "val" else "Table 1 — per-fold test summary",
                 ["backbone", "formulation"] + [c[0] for c in SUMMARY_COLUMNS], rows, notes=notes, key="summary")


def default_backbone(run: Run, opts: Options) -> str:
    if opts.backbone:
        return opts.backbone
    return "densenet121" if "densenet121" in run.backbones else run.backbones[0]


def per_class_f1(run: Run, opts: Options) -> Table:
    b = default_backbone(run, opts)
    forms = run.formulations
    others = [f for f in forms if f != opts.reference]
    row_keys = [(name, str(k)) for k, name in enumerate(CLASSES)] + [("macro", "macro")]
    n_train, n_val = fold_sizes(run)
    pvals, where = [], []
    values = {}
    for i, (_, cls) in enumerate(row_keys):
        for j, f in enumerate(forms):
            values[i, j] = run.series(b, f, opts.split, "mes", "f1", cls)
    if opts.reference in forms:
        jr = forms.index(opts.reference)
        for i in range(len(row_keys)):
            for j, f in enumerate(forms):
                if f == opts.reference:
                    continue
                a, r = aligned(values[i, j], values[i, jr])
                if len(a) >= 2:
                    pvals.append(paired_test(a, r, opts.test, n_train, n_val))
                    where.append((i, j))
    adjusted = adjust(pvals, opts.correction)
    star = {w: stars(p, opts.alpha) for w, p in zip(where, adjusted)}
    rows, bold = [], set()
    for i, (name, _) in enumerate(row_keys):
        means = [values[i, j].mean() if len(values[i, j]) else -np.inf for j in range(len(forms))]
        best = np.nanmax(means)
        row = [name]
        for j in range(len(forms)):
            row.append(fmt(values[i, j]) + star.get((i, j), ""))
            if len(values[i, j]) and np.isclose(means[j], best):
                bold.add((i, j + 1))
        rows.append(row)
    n_folds = int(np.median([len(values[i, 0]) for i in range(len(row_keys))])) if forms else 0
    notes = [f"F1 per class on the {'validation folds' if opts.split == 'val' else 'test set'}, mean ± sd over folds; "
             "best per row in bold."]
    if opts.reference not in forms:
        notes.append(f"No stars: the reference formulation {opts.reference!r} is not in this run.")
    else:
        notes.append(legend(opts, len(pvals), n_folds))
    if not others:
        notes.append("Only one formulation: nothing to compare.")
    return Table(f"Table 2 — per-class F1, {b}", ["class"] + forms, rows, bold, notes, key="per_class_f1")


def mtl_tasks(run: Run, opts: Options) -> Table | None:
    forms = [f for f in run.formulations
             if any(len(run.series(b, f, opts.split, "primary", "accuracy")) for b in run.backbones)]
    if not forms:
        return None
    rows = []
    for b in run.backbones:
        for f in forms:
            rows.append([b, f] + [fmt(run.series(b, f, opts.split, t, "accuracy"))
                                  for t in ("primary", "remission", "active", "mes")])
    return Table("Table 3 — per-task accuracy of the hierarchical model",
                 ["backbone", "formulation", "primary (remission vs active)", "remission sub-task (MES 0 vs 1)",
                  "active sub-task (MES 2 vs 3)", "4-class MES"], rows,
                 notes=["Sub-task accuracies on the images of that sub-task only; mean ± sd over folds."],
                 key="mtl_tasks")


def finetune_effect(run: Run, opts: Options) -> Table | None:
    pairs = [(f.base().display, f.display) for f in run.suite.formulations if f.finetune]
    if not pairs:
        return None
    n_train, n_val = fold_sizes(run)
    rows, pvals = [], []
    for b in run.backbones:
        for before, after in pairs:
            for k, cls in enumerate(CLASSES):
                row = [b, f"{before} → {after}", cls]
                for metric in ("f1", "recall", "precision"):
                    x, y = aligned(run.series(b, before, opts.split, "mes", metric, str(k)),
                                   run.series(b, after, opts.split, "mes", metric, str(k)))
                    if len(x) == 0:
                        row += ["—", "—"]
                        continue
                    d = y - x
                    row += [f"{x.mean():.3f} → {y.mean():.3f}", f"{d.mean():+.3f}"]
                    if metric == "f1":
                        pvals.append(paired_test(y, x, opts.test, n_train, n_val) if len(x) >= 2 else np.nan)
                rows.append(row)
    valid = [p for p in pvals if not np.isnan(p)]
    adj = iter(adjust(valid, opts.correction))
    for row, p in zip(rows, pvals):
        row.append("—" if np.isnan(p) else f"{next(adj):.3g}")
    n_folds = run.meta.get("n_folds") or 0
    notes = ["Before → after inverse-F1 fine-tuning, mean over folds; Δ = after − before per fold, averaged.",
             legend(Options(**{**opts.__dict__, "reference": "the stage-1 model"}), len(valid), n_folds)
             .replace("Stars: paired comparison", "p (F1): paired comparison")]
    return Table("Table 4 — effect of inverse-F1 fine-tuning",
                 ["backbone", "formulation", "class", "F1", "ΔF1", "recall", "Δrecall", "precision", "Δprecision",
                  "p (ΔF1)"], rows, notes=notes, key="finetune")


@dataclass
class TestPredictions:
    """Test-set predictions of every cell, with image ids as integer codes, prepared once."""

    by_key: dict
    codes: np.ndarray
    image_ids: np.ndarray
    y_by_image: np.ndarray
    proba: np.ndarray  # (n, 4), NaN where the formulation has no probabilities
    score: np.ndarray

    @classmethod
    def from_frame(cls, preds: pd.DataFrame) -> "TestPredictions":
        codes, uniques = pd.factorize(preds.image_id)
        y = np.zeros(len(uniques), dtype=np.int64)
        y[codes] = preds.y_true.to_numpy()
        return cls(preds.groupby("key").indices, codes, np.asarray(uniques), y,
                   preds[["p0", "p1", "p2", "p3"]].to_numpy(dtype=float), preds.score.to_numpy(dtype=float))

    def ensemble(self, run: Run, b: str, f: str):
        """Fold-ensemble: mean of the fold models' probabilities (or scores, decoded with the mean cut points).
        Returns (image codes, true grades, predicted grades) or None."""
        keys = run.cells[(run.cells.backbone == b) & (run.cells.formulation == f)
                         & (run.cells.status == "done")].key
        keys = [k for k in keys if k in self.by_key]
        if not keys:
            return None
        pos = np.concatenate([self.by_key[k] for k in keys])
        codes = self.codes[pos]
        n = len(self.image_ids)
        count = np.bincount(codes, minlength=n)
        present = np.flatnonzero(count)
        if not np.isnan(self.proba[pos]).any():
            sums = np.stack([np.bincount(codes, self.proba[pos, j], minlength=n) for j in range(4)], 1)
            pred = sums[present].argmax(1)
        else:
            score = np.bincount(codes, self.score[pos], minlength=n)[present] / count[present]
            cuts = np.mean([(run.result(k) or {}).get("state", {}).get("cutpoints", [0.5, 1.5, 2.5]) for k in keys],
                           axis=0)
            pred = np.searchsorted(cuts, score, side="right")
        return present, self.y_by_image[present], pred


def test_ensemble(run: Run, opts: Options, preds: pd.DataFrame) -> Table | None:
    if preds.empty:
        return None
    tp = TestPredictions.from_frame(preds)
    rows = []
    for b in run.backbones:
        ref = tp.ensemble(run, b, opts.reference)
        for f in run.formulations:
            ens = tp.ensemble(run, b, f)
            if ens is None:
                rows.append([b, f] + ["—"] * (len(ENSEMBLE_METRICS) + 1))
                continue
            codes, y, pred = ens
            point, lo, hi = bootstrap_metrics(y, pred, opts.n_resamples)
            row = [b, f + (" †" if _incomplete(run, b, f) else "")]
            row += [f"{point[i]:.3f} [{lo[i]:.3f}, {hi[i]:.3f}]" for i in range(len(ENSEMBLE_METRICS))]
            if f == opts.reference:
                row.append("reference")
            elif ref is None:
                row.append("—")
            else:
                common, ia, ib = np.intersect1d(codes, ref[0], return_indices=True)
                n01, n10, p = mcnemar_exact(y[ia], pred[ia], ref[2][ib])
                row.append(f"{n01}/{n10}, p = {p:.3g}")
            rows.append(row)
    return Table("Table 5 — held-out test set, fold-ensemble",
                 ["backbone", "formulation"] + ENSEMBLE_METRICS + [f"McNemar vs {opts.reference} (b/c, exact p)"],
                 rows, notes=[f"Ensemble = mean of the fold models' class probabilities (regression: mean score, mean "
                              f"cut points). 95% paired percentile bootstrap CIs ({opts.n_resamples} resamples, "
                              "scipy.stats.bootstrap). McNemar b/c = images only this / only the reference gets "
                              "right; uncorrected."], key="test")


def friedman_table(run: Run, opts: Options) -> tuple[Table | None, object]:
    forms, bbs = run.formulations, run.backbones
    if len(forms) < 3 or len(bbs) < 2:
        return None, None
    scores = np.array([[run.series(b, f, opts.split, "mes", "f1", "macro").mean() for f in forms]
                       for b in bbs])
    if np.isnan(scores).any():
        return Table("Table 6 — Friedman ranking", ["note"], [["incomplete run: every backbone × formulation needs "
                                                                "results to rank"]], key="friedman"), None
    res = friedman(scores, forms, opts.alpha)
    rank_rows = []
    from scipy.stats import rankdata

    per_block = {b: rankdata(-scores[i]) for i, b in enumerate(bbs)}
    for f in sorted(forms, key=lambda f: res.mean_ranks[f]):
        j = forms.index(f)
        rank_rows.append([f, f"{res.mean_ranks[f]:.2f}"] + [f"{per_block[b][j]:g}" for b in bbs])
    notes = [f"Blocks: the {len(bbs)} backbones (macro-F1 averaged over folds); rank 1 = best. Friedman χ² = "
             f"{res.statistic:.3f} (p = {res.p_value:.3g}); Iman–Davenport F = {res.iman_davenport_f:.3f} "
             f"(p = {res.iman_davenport_p:.3g}); Nemenyi critical difference CD = {res.critical_difference:.3f} at "
             f"α = {opts.alpha} — formulations whose mean ranks differ by less than CD are not distinguishable."]
    return Table("Table 6 — Friedman / Nemenyi ranking of formulations", ["formulation", "mean rank"] + bbs,
                 rank_rows, notes=notes, key="friedman"), res
