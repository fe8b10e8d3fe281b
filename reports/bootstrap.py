"""The held-out test set's estimates: confusion metrics vectorised over bootstrap resamples, percentile CIs by
scipy.stats.bootstrap over images or patients (clusters), paired and independent differences, and a patient's grade
from their images'."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from benchmark.labels import MES, Scale


def _confusion(y, p, k=MES.k):
    """Confusion counts along the last axis: (..., n) -> (..., k, k)."""
    idx = (np.asarray(y) * k + np.asarray(p)).astype(np.int64)
    flat = idx.reshape(-1, idx.shape[-1])
    offsets = (np.arange(flat.shape[0]) * k * k)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * k * k).astype(float)
    return counts.reshape(idx.shape[:-1] + (k, k))


def confusion_metrics(cm):
    """accuracy, macro-F1, QWK, recall of the highest grade (MES 3) from confusion matrices (..., K, K).

    A grade with no true image in a (resampled) set has no defined recall or F1: macro-F1 averages over the
    grades present (as scikit-learn's f1_score with labels=np.unique(y)), and the highest grade's recall is NaN
    where no image of it is present — never a 0 that would drag a confidence interval down."""
    k = cm.shape[-1]
    total = cm.sum((-1, -2))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    acc = diag.sum(-1) / total
    pred_n, true_n = cm.sum(-2), cm.sum(-1)
    present = true_n > 0
    f1 = np.divide(2 * diag, pred_n + true_n, out=np.zeros_like(diag, dtype=float), where=(pred_n + true_n) > 0)
    n_present = present.sum(-1)
    macro_f1 = np.divide(
        np.where(present, f1, 0.0).sum(-1),
        n_present,
        out=np.full(np.shape(total), np.nan, dtype=float),
        where=n_present > 0,
    )
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    w = (i - j) ** 2 / (k - 1) ** 2
    expected = true_n[..., :, None] * pred_n[..., None, :] / total[..., None, None]
    num = (w * cm).sum((-1, -2))
    den = (w * expected).sum((-1, -2))
    qwk = 1 - np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)
    top = k - 1
    recall_top = np.divide(
        diag[..., top], true_n[..., top], out=np.full(np.shape(total), np.nan, dtype=float), where=true_n[..., top] > 0
    )
    return np.stack([acc, macro_f1, qwk, recall_top])


def ensemble_metrics(classes) -> list[str]:
    """The names of confusion_metrics' values on a scale with these grades (MES: '… MES 3 recall')."""
    return ["accuracy", "macro-F1", "QWK", f"{classes[-1]} recall"]


def weighted_confusion(y, p, weights, k=MES.k):
    """Confusion counts (R, k, k) with per-image weights (R, n)."""
    cell = (np.asarray(y) * k + np.asarray(p)).astype(np.int64)
    r = weights.shape[0]
    offsets = (np.arange(r) * k * k)[:, None]
    counts = np.bincount((cell[None, :] + offsets).ravel(), weights=weights.ravel(), minlength=r * k * k)
    return counts.reshape(r, k, k)


def resample_weights(idx, n_units: int, units=None) -> np.ndarray:
    """Each image's weight (R, n_images) in each of R resamples of unit indices: how often the resample drew the
    image's unit (`units[i]`: image i's cluster code; None: every image is its own unit)."""
    idx = np.atleast_2d(idx).astype(np.int64)
    counts = np.stack([np.bincount(row, minlength=n_units) for row in idx])
    return (counts if units is None else counts[:, units]).astype(float)


@dataclass
class BootstrapResult:
    """Point estimates and percentile CIs, each (len(preds), 2, n_metrics): [:, 0] the metric, [:, 1] its
    difference to preds[0]. `undefined` counts, per entry, the resamples on which the statistic was undefined
    (a grade absent from the resample) and that were left out of its CI."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    undefined: np.ndarray
    n_resamples: int

    def __iter__(self):  # point, low, high = result
        return iter((self.point, self.low, self.high))


def cluster_bootstrap(
    y, preds: list, clusters, n_resamples=1000, seed=0, confidence=0.95, k: int = MES.k
) -> BootstrapResult:
    """Point estimates and percentile CIs of confusion_metrics for each prediction vector in `preds`, and of
    the difference of each to preds[0], all on the same resamples of clusters (patients): resampling
    patients, not images, because images of one patient are correlated. With every image its own
    cluster this is the ordinary paired image bootstrap. A resample on which a statistic is undefined (no
    image of the highest grade for its recall) is left out of that statistic's CI and counted, never scored as 0.
    `k`: the scale's number of grades."""

    y = np.asarray(y)
    codes, clusters = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = len(codes)
    preds = [np.asarray(p) for p in preds]

    def statistic(idx, axis=-1):
        single = np.ndim(idx) == 1
        w = resample_weights(idx, n_clusters, clusters)
        values = np.stack([confusion_metrics(weighted_confusion(y, p, w, k)) for p in preds])  # (P, M, R)
        out = np.stack([values, values - values[:1]], axis=1)  # (P, 2, M, R)
        return out[..., 0] if single else out

    point = statistic(np.arange(n_clusters))
    return BootstrapResult(point, *_percentile_intervals(statistic, n_clusters, n_resamples, seed, confidence))


def _percentile_intervals(statistic, n_units: int | tuple[int, ...], n_resamples, seed, confidence):
    """(low, high, undefined, n_resamples) of a vectorised statistic of resampled unit indices: percentile
    intervals over the resamples on which it is defined, and how many it was not (a grade absent). `n_units`: one
    sample's size, or the sizes of samples resampled independently of each other (the statistic takes one index
    array per sample)."""
    import warnings

    sizes = n_units if isinstance(n_units, tuple) else (n_units,)
    with warnings.catch_warnings():  # scipy's own interval is NaN where a resample is undefined; recomputed below
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            tuple(np.arange(n) for n in sizes),
            statistic,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            confidence_level=confidence,
            random_state=np.random.default_rng(seed),
            batch=200,
        )
    dist = res.bootstrap_distribution
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():  # an all-NaN slice (a grade absent everywhere) stays NaN, said by `undefined`
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(dist, tail, axis=-1)
        high = np.nanpercentile(dist, 100 - tail, axis=-1)
    return low, high, np.isnan(dist).sum(-1), n_resamples


def bootstrap_metrics(y, pred, n_resamples=1000, seed=0, confidence=0.95, k: int = MES.k):
    """Point estimates and paired percentile bootstrap CIs for confusion_metrics, images independent."""
    y, pred = np.asarray(y), np.asarray(pred)
    point = confusion_metrics(_confusion(y, pred, k))
    res = stats.bootstrap(
        (y, pred),
        lambda a, b, axis=-1: confusion_metrics(_confusion(a, b, k)),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        method="percentile",
        confidence_level=confidence,
        random_state=np.random.default_rng(seed),
    )
    return point, res.confidence_interval.low, res.confidence_interval.high


def patient_metric_names(scale: Scale) -> list[str]:
    """The names of patient_metrics' values: accuracy, QWK, each grade's recall, and the binary split's accuracy
    where the scale has one (MES: 'remission vs active accuracy')."""
    names = ["accuracy", "QWK", *(f"recall {c}" for c in scale.classes)]
    if scale.binary_cut is not None:
        low, high = scale.binary_short
        names.append(f"{low} vs {high} accuracy")
    return names


@dataclass
class Difference:
    """confusion_metrics of set B − of set A: point estimates and percentile CI bounds, each (n_metrics,)."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


def independent_difference(
    y_a, pred_a, clusters_a, y_b, pred_b, clusters_b, k: int, n_resamples=1000, seed=0, confidence=0.95
) -> Difference:
    """confusion_metrics(B) − confusion_metrics(A) for two sets that share no unit (an internal and an external test
    set), with a percentile CI from resampling each set's clusters (patients, or images) independently
    (scipy.stats.bootstrap with paired=False). A resample on which a statistic is undefined is left out of its CI."""
    y_a, pred_a, y_b, pred_b = map(np.asarray, (y_a, pred_a, y_b, pred_b))
    _, inv_a = np.unique(np.asarray(clusters_a), return_inverse=True)
    _, inv_b = np.unique(np.asarray(clusters_b), return_inverse=True)
    n_a, n_b = int(inv_a.max()) + 1, int(inv_b.max()) + 1

    def metrics(idx, inverse, n, y, pred):
        return confusion_metrics(weighted_confusion(y, pred, resample_weights(idx, n, inverse), k))  # (M, R)

    def statistic(ia, ib, axis=-1):
        single = np.ndim(ia) == 1
        out = metrics(ib, inv_b, n_b, y_b, pred_b) - metrics(ia, inv_a, n_a, y_a, pred_a)
        return out[..., 0] if single else out

    low, high, _, _ = _percentile_intervals(statistic, (n_a, n_b), n_resamples, seed, confidence)
    point = confusion_metrics(_confusion(y_b, pred_b, k)) - confusion_metrics(_confusion(y_a, pred_a, k))
    return Difference(point, low, high)


def patient_grades(patients, grades, quantile: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids, one grade per patient): a colonoscopy's MES is its worst segment's, so by default the
    maximum of the image grades; `quantile` < 1 takes that quantile instead (an actual grade: the next one up),
    which one outlying image cannot move."""
    patients = np.asarray(patients)
    grades = np.asarray(grades)
    ids, inverse = np.unique(patients, return_inverse=True)
    out = np.empty(len(ids), dtype=np.int64)
    for i in range(len(ids)):
        out[i] = int(np.quantile(grades[inverse == i], quantile, method="higher"))
    return ids, out


def patient_metrics(cm, binary_cut: int | None = 2):
    """patient_metric_names' values from confusion matrices (..., k, k) of patient grades: a grade no patient has
    leaves its recall NaN (absent, never 0); the binary accuracy splits the grades at `binary_cut` (MES: 0–1 vs
    2–3; None: not computed)."""
    total = cm.sum((-1, -2))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    true_n = cm.sum(-1)
    acc, _, qwk, _ = confusion_metrics(cm)
    nan = np.full(np.shape(total), np.nan, dtype=float)
    recalls = [
        np.divide(diag[..., k], true_n[..., k], out=nan.copy(), where=true_n[..., k] > 0) for k in range(cm.shape[-1])
    ]
    if binary_cut is None:
        return np.stack([acc, qwk, *recalls])
    low = cm[..., :binary_cut, :binary_cut].sum((-1, -2))
    high = cm[..., binary_cut:, binary_cut:].sum((-1, -2))
    return np.stack([acc, qwk, *recalls, (low + high) / total])


def patient_bootstrap(y, pred, n_resamples=1000, seed=0, confidence=0.95, scale: Scale = MES) -> BootstrapResult:
    """Point estimates and percentile CIs of patient_metrics, resampling patients (one unit each)."""

    y, pred = np.asarray(y), np.asarray(pred)
    n = len(y)

    def statistic(idx, axis=-1):
        single = np.ndim(idx) == 1
        values = patient_metrics(weighted_confusion(y, pred, resample_weights(idx, n), scale.k), scale.binary_cut)
        return values[..., 0] if single else values

    point = statistic(np.arange(n))
    return BootstrapResult(point, *_percentile_intervals(statistic, n, n_resamples, seed, confidence))
