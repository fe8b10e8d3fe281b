"""`bench check`'s default: is a metric worse than the baseline by more than the noise of training it again, and by
more than the smallest drop that matters (its tolerance)?

Per-value comparison fails wherever float kernels differ (another CPU, thread count or GPU flips a few predictions of
a few-epoch model); this asks the statistical question instead. The noise comes from what the run has:
- enough folds × seeds for a paired one-sided test to reach α after the family's correction: the Wilcoxon signed-rank
  test of (now − baseline) + tolerance < 0 over those pairs;
- else (the CI suite has 2 folds, with which no test over folds could ever flag anything) a paired bootstrap over the
  evaluated images — resampling patients where the data has them — of each metric's difference between this run's
  per-image predictions and the baseline's, on the same resamples.
A regression is a drop larger than the tolerance whose one-sided p, Holm-corrected over the whole family (every
backbone × formulation × split × metric tested), is below α.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .bootstrap import confusion_metrics, resample_weights, weighted_confusion

PRED_TASK, PRED_METRIC = "prediction", "grade"  # baseline rows of one image's predicted grade (cls: the image id)
N_RESAMPLES = 2000
ALPHA = 0.05
GROUP = ["backbone", "formulation", "split"]


def family(k: int) -> list[tuple[str, tuple[str, str, str], int]]:
    """The metrics tested: (name, the stored row's (task, metric, cls), +1 higher is better / −1 lower)."""
    return [
        ("accuracy", ("mes", "accuracy", ""), 1),
        ("macro-F1", ("mes", "f1", "macro"), 1),
        ("QWK", ("mes", "qwk", ""), 1),
        (f"recall@{k - 1}", ("mes", "recall", str(k - 1)), 1),
        ("MAE", ("mes", "mae", ""), -1),
    ]


def metrics_of(cm: np.ndarray) -> np.ndarray:
    """The family's values (5, ...) from confusion matrices (..., K, K): confusion_metrics' four, then MAE."""
    k = cm.shape[-1]
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    mae = (np.abs(i - j) * cm).sum((-1, -2)) / cm.sum((-1, -2))
    return np.concatenate([confusion_metrics(cm), mae[None]])


@dataclass
class Test:
    backbone: str
    formulation: str
    split: str
    metric: str
    tolerance: float
    delta: float  # now − baseline, in the metric's own direction
    low: float
    high: float
    p: float  # one-sided: the drop exceeds the tolerance
    p_better: float  # one-sided: the gain exceeds the tolerance
    detectable: float  # the smallest drop this test could flag at this design
    p_adjusted: float = 1.0
    p_better_adjusted: float = 1.0


@dataclass
class NoiseResult:
    tests: list[Test] = field(default_factory=list)
    source: str = ""
    alpha: float = ALPHA
    regressions: list[Test] = field(default_factory=list)
    improvements: list[Test] = field(default_factory=list)

    def detectable_text(self) -> str:
        d = np.array([t.detectable for t in self.tests if np.isfinite(t.detectable)])
        if not len(d):
            return "no test could flag any drop at this design"
        return f"median {np.median(d):.3f}, largest {d.max():.3f} (the metric's tolerance plus its noise)"


def predictions_long(run) -> pd.DataFrame:
    """Every finished cell's per-image predicted grade (validation and test) as baseline rows."""
    preds = per_image(run)
    return pd.DataFrame(
        {
            **{c: preds[c] for c in ("backbone", "formulation", "seed", "fold", "split")},
            "task": PRED_TASK,
            "metric": PRED_METRIC,
            "cls": preds["image_id"].astype(str),
            "value": preds["pred"].astype(float),
        }
    )


def per_image(run) -> pd.DataFrame:
    """backbone, formulation, seed, fold, split, image_id, y_true, pred of every finished cell (val and test)."""
    cells = run.cells[run.cells.status == "done"][["key", "backbone", "formulation", "seed", "fold"]]
    frames = [
        run.store.predictions_frame(s, ["key", "image_id", "y_true", "y_pred"]).assign(split=s) for s in ("val", "test")
    ]
    preds = pd.concat(frames, ignore_index=True).merge(cells, on="key").rename(columns={"y_pred": "pred"})
    return preds.drop(columns="key")


def split_baseline(base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A baseline table's metric rows and its prediction rows (as backbone … split, image_id, pred)."""
    is_pred = base.task == PRED_TASK
    preds = base[is_pred].rename(columns={"cls": "image_id", "value": "pred"})
    preds = preds[["backbone", "formulation", "seed", "fold", "split", "image_id", "pred"]]
    return base[~is_pred], preds.assign(pred=preds["pred"].round().astype(int))


def enough_pairs(n: int, m: int, alpha: float) -> bool:
    """Whether a one-sided signed-rank test over n pairs can reach α after Holm over m tests (its floor is 1/2ⁿ)."""
    return n > 0 and 0.5**n * m <= alpha


def noise_check(
    now_metrics: pd.DataFrame,
    now_preds: pd.DataFrame,
    base_metrics: pd.DataFrame,
    base_preds: pd.DataFrame,
    groups: dict,
    k: int,
    tolerance,
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
) -> NoiseResult:
    """`tolerance(task, metric, cls)` → the smallest drop that matters; `groups`: image id → patient (may be empty)."""
    from statsmodels.stats.multitest import multipletests

    fam = family(k)
    keys = sorted(set(map(tuple, now_metrics[GROUP].drop_duplicates().itertuples(index=False)))
                  & set(map(tuple, base_metrics[GROUP].drop_duplicates().itertuples(index=False))))  # fmt: skip
    pairs = now_metrics[["seed", "fold"]].drop_duplicates()
    m = len(keys) * len(fam)
    by_folds = enough_pairs(len(pairs), m, alpha)
    out = NoiseResult(alpha=alpha)
    if by_folds:
        out.source = (
            f"paired one-sided Wilcoxon signed-rank tests over the {len(pairs)} folds × seeds of each row "
            "(the noise of training the same thing again, as the run measures it)"
        )
    else:
        out.source = (
            f"a paired bootstrap over the evaluated images ({'their patients' if groups else 'each image'} resampled, "
            f"{n_resamples} resamples per fold), of each metric's difference between this run's predictions and the "
            f"baseline's on the same images: {len(pairs)} fold(s) × seed(s) are too few for a test over folds to "
            f"reach α = {alpha:g} after Holm over {m} tests"
        )
    rng = np.random.default_rng(0)
    for b, f, s in keys:
        if by_folds:
            tests = _fold_tests(now_metrics, base_metrics, (b, f, s), fam, tolerance, alpha, m)
        else:
            tests = _bootstrap_tests(
                now_preds, base_preds, (b, f, s), fam, tolerance, groups, k, n_resamples, rng, alpha / max(m, 1)
            )
        out.tests += tests
    if out.tests:
        for attr, adj in (("p", "p_adjusted"), ("p_better", "p_better_adjusted")):
            corrected = multipletests([getattr(t, attr) for t in out.tests], alpha=alpha, method="holm")[1]
            for t, p in zip(out.tests, corrected):
                setattr(t, adj, float(p))
    out.regressions = [t for t in out.tests if t.delta < -t.tolerance and t.p_adjusted < alpha]
    out.improvements = [t for t in out.tests if t.delta > t.tolerance and t.p_better_adjusted < alpha]
    return out


def _fold_tests(now, base, key, fam, tolerance, alpha, m) -> list[Test]:
    from scipy.stats import norm, wilcoxon

    b, f, s = key
    tests = []
    for name, (task, metric, cls), sign in fam:

        def sel(d, task=task, metric=metric, cls=cls):
            rows = (d.backbone == b) & (d.formulation == f) & (d.split == s) & (d.task == task)
            return d[rows & (d.metric == metric) & (d.cls == cls)].set_index(["seed", "fold"]).value

        a, c = sel(now).align(sel(base), join="inner")
        d = (sign * (a - c)).dropna().to_numpy()
        if len(d) < 2:
            continue
        tol = tolerance(task, metric, cls)
        shifted_down, shifted_up = d + tol, d - tol
        p = 1.0 if np.all(shifted_down == 0) else float(wilcoxon(shifted_down, alternative="less").pvalue)
        p_up = 1.0 if np.all(shifted_up == 0) else float(wilcoxon(shifted_up, alternative="greater").pvalue)
        se = d.std(ddof=1) / np.sqrt(len(d))
        z = norm.ppf(1 - alpha / max(m, 1))
        tests.append(
            Test(b, f, s, name, tol, float(d.mean()), float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se), p,
                 p_up, tol + z * se)
        )  # fmt: skip
    return tests


def _bootstrap_tests(now, base, key, fam, tolerance, groups, k, n_resamples, rng, level) -> list[Test]:
    """Each fold's images resampled (by patient where known), the same resamples for both prediction sets; a metric's
    difference is the mean over folds of (now − baseline)."""
    from scipy.stats import norm

    b, f, s = key
    sel = lambda d: d[(d.backbone == b) & (d.formulation == f) & (d.split == s)]
    a, c = sel(now), sel(base)
    joined = a.merge(c[["seed", "fold", "image_id", "pred"]], on=["seed", "fold", "image_id"], suffixes=("", "_base"))
    if joined.empty:
        return []
    points, dists = [], []
    for _, g in joined.groupby(["seed", "fold"], sort=True):
        y, p_now, p_base = (g[c].to_numpy(np.int64) for c in ("y_true", "pred", "pred_base"))
        units = np.array([groups.get(i, i) for i in g.image_id])
        _, inv = np.unique(units, return_inverse=True)
        n_units = int(inv.max()) + 1
        idx = rng.integers(0, n_units, size=(n_resamples, n_units))
        w = resample_weights(idx, n_units, inv)
        ones = np.ones((1, len(y)))
        with np.errstate(invalid="ignore", divide="ignore"):
            point = metrics_of(weighted_confusion(y, p_now, ones, k)) - metrics_of(
                weighted_confusion(y, p_base, ones, k)
            )
            dist = metrics_of(weighted_confusion(y, p_now, w, k)) - metrics_of(weighted_confusion(y, p_base, w, k))
        points.append(point[:, 0])
        dists.append(dist)
    import warnings

    with warnings.catch_warnings():  # a metric undefined in every fold (no image of a grade) stays NaN, not tested
        warnings.simplefilter("ignore", RuntimeWarning)
        point = np.nanmean(np.stack(points), axis=0)  # (M,)
        dist = np.nanmean(np.stack(dists), axis=0)  # (M, R)
    tests = []
    z = norm.ppf(1 - level)  # Holm's first step: the drop that would pass it
    for i, (name, (task, metric, cls), sign) in enumerate(fam):
        d = sign * dist[i][np.isfinite(dist[i])]
        if not len(d) or not np.isfinite(point[i]):
            continue
        tol = tolerance(task, metric, cls)
        p = (1 + np.sum(d >= -tol)) / (len(d) + 1)
        p_up = (1 + np.sum(d <= tol)) / (len(d) + 1)
        low, high = np.percentile(d, [2.5, 97.5])
        tests.append(
            Test(b, f, s, name, tol, float(sign * point[i]), float(low), float(high), float(p), float(p_up),
                 tol + z * float(d.std(ddof=1)))
        )  # fmt: skip
    return tests


def render(result: NoiseResult, console, markdown: bool = False, limit: int = 60) -> list[str]:
    """Print the regressions (and improvements) with their drop, CI and corrected p, then the design; returns the
    Markdown lines when `markdown`."""
    head = ["backbone", "formulation", "split", "metric", "Δ (now − baseline)", "95% CI", "p (Holm)", "tolerance"]

    def row(t: Test, p: float) -> list[str]:
        return [t.backbone, t.formulation, t.split, t.metric, f"{t.delta:+.4f}", f"[{t.low:+.4f}, {t.high:+.4f}]",
                f"{p:.3g}", f"{t.tolerance:g}"]  # fmt: skip

    summary = (
        f"{len(result.tests)} tests (backbone × formulation × split × metric; the metrics' drops in their own "
        f"direction), Holm over the family, α = {result.alpha:g}; noise from {result.source}. Smallest drop it could "
        f"flag at this design: {result.detectable_text()}."
    )
    if markdown:
        lines = []
        for title, tests, attr in (
            ("Regressions", result.regressions, "p_adjusted"),
            ("Improvements", result.improvements, "p_better_adjusted"),
        ):
            if tests:
                lines += [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += [
                    "| " + " | ".join(x.replace("|", "\\|") for x in row(t, getattr(t, attr))) + " |" for t in tests
                ]
                lines.append("")
        lines.append(summary)
        return lines
    from rich.markup import escape
    from rich.table import Table

    for title, tests, attr, style in (
        (f"REGRESSIONS: {len(result.regressions)} drop(s) beyond noise and tolerance", result.regressions,
         "p_adjusted", "bold red"),
        (f"improvements: {len(result.improvements)}", result.improvements, "p_better_adjusted", "green"),
    ):  # fmt: skip
        if not tests:
            continue
        t = Table(title=title, title_style=style)
        for col in head:
            t.add_column(col, no_wrap=True)
        for test in tests[:limit]:
            t.add_row(*(escape(x) for x in row(test, getattr(test, attr))))
        console.print(t)
    for (b, f), n in pd.Series([(t.backbone, t.formulation) for t in result.regressions]).value_counts().items():
        metrics = sorted({t.metric for t in result.regressions if (t.backbone, t.formulation) == (b, f)})
        console.print(f"[red]regressed:[/] formulation {escape(f)} on {escape(b)}: {', '.join(metrics)} ({n} tests)")
    console.print(escape(summary), highlight=False)
    return []
