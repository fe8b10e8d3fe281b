"""Statistics for comparing formulations across folds, blocks and shared test predictions.

Paired tests across CV folds: Wilcoxon signed-rank (scipy) and the Nadeau–Bengio corrected
resampled t (computed here: not in scipy). The study's unpaired rank-sum is offered for
faithfulness and labelled as such. Friedman + Iman–Davenport with Nemenyi's critical difference
rank formulations over blocks (backbones); McNemar (exact, statsmodels) compares two models'
predictions on the same test images; bootstrap CIs come from scipy.stats.bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from benchmark.labels import MES, Scale

TESTS = {
    "wilcoxon": "Wilcoxon signed-rank test (paired, two-sided, exact)",
    "permutation": "exact paired permutation test (sign flips of the paired differences, two-sided)",
    "corrected-t": "corrected resampled t-test (paired, two-sided; Nadeau–Bengio, Bouckaert–Frank for repeats)",
    "ranksum": "Wilcoxon rank-sum test (UNPAIRED, as in the study; ignores the fold pairing; exact at small n)",
}
CORRECTIONS = {"holm": "Holm", "fdr_bh": "Benjamini–Hochberg FDR", "bonferroni": "Bonferroni", "none": "none"}


_P_MEMO: dict[tuple, float] = {}  # a report asks for the same pair in a table and in its figure: test it once


def paired_test(a, b, test="wilcoxon", n_train=None, n_test=None) -> float:
    """Two-sided p for the difference a − b over paired units; identical samples give p = 1.

    For `corrected-t`, `n_test / n_train` is the test-to-training size ratio of the resamples (the
    mean over them when their sizes differ)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    key = (test, a.tobytes(), b.tobytes(), n_train, n_test)
    if key not in _P_MEMO:
        if len(_P_MEMO) > 20_000:
            _P_MEMO.clear()
        _P_MEMO[key] = _paired_test(a, b, test, n_train, n_test)
    return _P_MEMO[key]


def _paired_test(a, b, test, n_train, n_test) -> float:
    d = a - b
    if len(d) < 2 or np.allclose(d, 0):
        return 1.0
    if test == "wilcoxon":
        return (
            float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
            if np.count_nonzero(d)
            else 1.0
        )
    if test == "permutation":
        return sign_flip_p(d)
    if test == "ranksum":
        return rank_sum_p(a, b)
    if test == "corrected-t":
        return corrected_t(a, b, n_train, n_test)[1]
    raise ValueError(f"unknown test {test!r}")


EXACT_RANKSUM_SPLITS = 4_000  # ties: enumerate the splits of the pooled values up to this many (7 vs 7)


def rank_sum_p(a, b) -> float:
    """Two-sided p of the unpaired Wilcoxon rank-sum (Mann–Whitney U) test, exact at small n, where the normal
    approximation is far too liberal (0.0495 instead of 0.10 at 3 vs 3). Without ties scipy's exact null
    distribution; with ties the permutation distribution of U (every split of the pooled values) while there
    are at most EXACT_RANKSUM_SPLITS splits, else the tie-corrected normal approximation."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.concatenate([a, b])
    if len(np.unique(pooled)) == len(pooled):
        return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)
    if math.comb(len(pooled), len(a)) <= EXACT_RANKSUM_SPLITS:
        method = stats.PermutationMethod(n_resamples=np.inf)
        return float(stats.mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue)
    return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue)


def sign_flip_p(d) -> float:
    """Exact two-sided paired permutation p of mean(d): all 2^n sign flips (scipy.stats.permutation_test)."""
    d = np.asarray(d, float)
    res = stats.permutation_test(
        (d,),
        lambda x, axis=-1: np.mean(x, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=np.inf if len(d) <= 20 else 100_000,
        vectorized=True,
        random_state=0,
    )
    return float(res.pvalue)


def corrected_t(a, b, n_train, n_test) -> tuple[float, float]:
    """Nadeau & Bengio (2003) / Bouckaert & Frank (2004): t = mean(d) / sqrt((1/n + n_test/n_train) · var(d)),
    df = n − 1, with n the number of resamples (k folds × r repeats)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    var = d.var(ddof=1)
    if var == 0:
        return (0.0, 1.0) if np.isclose(d.mean(), 0) else (float(np.sign(d.mean()) * np.inf), 0.0)
    t = d.mean() / np.sqrt((1 / n + n_test / n_train) * var)
    return float(t), float(2 * stats.t.sf(abs(t), df=n - 1))


def adjust(pvalues, method="holm") -> np.ndarray:
    p = np.asarray(pvalues, float)
    if method == "none" or len(p) == 0:
        return p
    from statsmodels.stats.multitest import multipletests  # imported here: it costs ~0.3 s at start-up

    return multipletests(p, method=method)[1]


def smallest_p(test: str, n: int) -> float:
    """The smallest two-sided p reachable with n paired units. Rank and permutation tests: 2 / 2^n
    (exact). A t-test has no floor, but below the distribution-free floor 2 / 2^n its small p-values rest
    on the normality of n differences alone, so the same floor is used to decide whether stars may be
    drawn at all."""
    if test == "ranksum":
        return rank_sum_p(np.arange(n) + n, np.arange(n))  # complete separation: 2 / C(2n, n) when exact
    return 2.0 / 2**n


def significance_possible(test, n, m, method, alpha) -> bool:
    """Could any of m corrected comparisons reach alpha, even if every one had the smallest p?"""
    best = smallest_p(test, n)
    return bool((adjust(np.full(m, best), method) < alpha).any()) if m else False


def stars(p, alpha=0.05) -> str:
    if p is None or np.isnan(p):
        return ""
    return "***" if p < alpha / 50 else "**" if p < alpha / 5 else "*" if p < alpha else ""


@dataclass
class FriedmanResult:
    statistic: float
    p_value: float  # chi-square approximation (scipy), or exact where `exact` says so
    iman_davenport_f: float  # nan when undefined (every block ranks the treatments identically)
    iman_davenport_p: float  # nan when undefined
    mean_ranks: dict[str, float]
    critical_difference: float
    n_blocks: int
    exact: bool = False  # p_value is the exact permutation p (small designs)
    note: str = ""
    alpha: float = 0.05  # the level of the critical difference and of the diagram's cliques
    # Demšar's (2006) formulas have no tie correction; scipy's χ² (and so F) divides by 1 − Σ(t³ − t)/(N·k(k² − 1)).
    # The uncorrected values, which differ only where some block has tied scores.
    statistic_uncorrected: float = float("nan")
    iman_davenport_f_uncorrected: float = float("nan")

    @property
    def ties(self) -> bool:
        return not math.isclose(self.statistic, self.statistic_uncorrected, rel_tol=1e-9, abs_tol=1e-12)

    def text(self) -> str:
        """χ², its p and Iman–Davenport's F in words, naming the tie correction where it changes them."""
        p = f"p = {self.p_value:.3g}{', exact' if self.exact else ', χ² approximation'}"
        if np.isnan(self.iman_davenport_f):
            f_text = "Iman–Davenport F undefined"
        else:
            f_text = f"Iman–Davenport F = {self.iman_davenport_f:.3f} (p = {self.iman_davenport_p:.3g})"
        if not self.ties:
            return f"Friedman χ² = {self.statistic:.3f} ({p}); {f_text}"
        f_plain = (
            "undefined" if np.isnan(self.iman_davenport_f_uncorrected) else f"{self.iman_davenport_f_uncorrected:.3f}"
        )
        return (
            f"Friedman χ² = {self.statistic:.3f} ({p}); {f_text} — both corrected for tied ranks, as scipy and "
            f"autorank compute them (χ² divided by 1 − Σ(t³ − t)/(N·k(k² − 1))); without the correction, as in "
            f"Demšar (2006): χ² = {self.statistic_uncorrected:.3f}, F = {f_plain}"
        )


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman–Davenport's F from Friedman's χ², and its p; NaN where undefined (complete agreement of the blocks)."""
    denom = n * (k - 1) - chi2
    if denom <= 1e-12:
        return float("nan"), float("nan")
    f = (n - 1) * chi2 / denom
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


EXACT_FRIEDMAN_LIMIT = 200_000


def friedman_exact_p(ranks: np.ndarray) -> float | None:
    """Exact permutation p of the Friedman statistic: under H0 each block's own ranks (ties included) are
    equally likely in any order, independently of the other blocks. None when there are more than
    EXACT_FRIEDMAN_LIMIT assignments."""
    import itertools

    n, k = ranks.shape
    if math.factorial(k) ** n > EXACT_FRIEDMAN_LIMIT:
        return None
    observed = _friedman_q(ranks.sum(0), n, k)
    # Blocks differ in their tie patterns, so every block permutes its own rank vector. The first block can be
    # held fixed: applying one permutation of the treatments to every block leaves the statistic unchanged.
    orders = list(itertools.permutations(range(k)))
    sums = ranks[0][None, :]
    for i in range(1, n):
        perms = np.array([np.take(ranks[i], p) for p in orders])
        sums = (sums[:, None, :] + perms[None, :, :]).reshape(-1, k)
    q = _friedman_q(sums, n, k)
    return float(np.mean(q >= observed - 1e-9))


def _friedman_q(rank_sums, n, k):
    rank_sums = np.asarray(rank_sums, float)
    return 12.0 / (n * k * (k + 1)) * (rank_sums**2).sum(-1) - 3 * n * (k + 1)


def friedman(scores: np.ndarray, names: list[str], alpha=0.05) -> FriedmanResult:
    """scores: (blocks N, treatments k), higher is better; rank 1 = best within a block.

    Iman–Davenport's F is undefined when every block ranks the treatments identically (its denominator
    is 0): then it is reported as undefined, never as F = inf, p = 0. For small designs the Friedman p is
    the exact permutation p, since the chi-square approximation is poor there."""
    n, k = scores.shape
    chi2, p = stats.friedmanchisquare(*scores.T)
    ranks = np.vstack([stats.rankdata(-row) for row in scores])
    exact = friedman_exact_p(ranks)
    note = ""
    if exact is not None:
        p = exact
        note = f"Friedman p is the exact permutation p ({math.factorial(k)}^{n} within-block orderings)."
    f, pf = iman_davenport(chi2, n, k)
    plain = float(_friedman_q(ranks.sum(0), n, k))
    if np.isnan(f):
        note += (
            " Iman–Davenport F is undefined: every block ranks the formulations identically (complete "
            "agreement); the Friedman p stands alone."
        )
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    cd = q * np.sqrt(k * (k + 1) / (6 * n))
    return FriedmanResult(
        float(chi2),
        float(p),
        float(f),
        pf,
        dict(zip(names, ranks.mean(0))),
        float(cd),
        n,
        exact is not None,
        note.strip(),
        alpha,
        plain,
        iman_davenport(plain, n, k)[0],
    )


def nemenyi_matrix(scores: np.ndarray, names: list[str]):
    """Pairwise Nemenyi p-values after Friedman (scikit-posthocs), as a DataFrame indexed by name."""
    import pandas as pd
    import scikit_posthocs as sp

    m = sp.posthoc_nemenyi_friedman(pd.DataFrame(scores, columns=names))
    m.index, m.columns = names, names
    return m


def mcnemar_exact(y, pred_a, pred_b) -> tuple[int, int, float]:
    """(a right & b wrong, a wrong & b right, exact two-sided p)."""
    ra, rb = np.asarray(pred_a) == np.asarray(y), np.asarray(pred_b) == np.asarray(y)
    table = [[int(np.sum(ra & rb)), int(np.sum(ra & ~rb))], [int(np.sum(~ra & rb)), int(np.sum(~ra & ~rb))]]
    if table[0][1] + table[1][0] == 0:
        return 0, 0, 1.0
    from statsmodels.stats.contingency_tables import mcnemar

    return table[0][1], table[1][0], float(mcnemar(table, exact=True).pvalue)


# ---------------------------------------------------------------------------- vectorised metrics for bootstrap


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


def _weighted_confusion(y, p, weights, k=MES.k):
    """Confusion counts (R, k, k) with per-image weights (R, n)."""
    cell = (np.asarray(y) * k + np.asarray(p)).astype(np.int64)
    r = weights.shape[0]
    offsets = (np.arange(r) * k * k)[:, None]
    counts = np.bincount((cell[None, :] + offsets).ravel(), weights=weights.ravel(), minlength=r * k * k)
    return counts.reshape(r, k, k)


def _resample_weights(idx, n_units: int, units=None) -> np.ndarray:
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
        w = _resample_weights(idx, n_clusters, clusters)
        values = np.stack([confusion_metrics(_weighted_confusion(y, p, w, k)) for p in preds])  # (P, M, R)
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
        return confusion_metrics(_weighted_confusion(y, pred, _resample_weights(idx, n, inverse), k))  # (M, R)

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
        values = patient_metrics(_weighted_confusion(y, pred, _resample_weights(idx, n), scale.k), scale.binary_cut)
        return values[..., 0] if single else values

    point = statistic(np.arange(n))
    return BootstrapResult(point, *_percentile_intervals(statistic, n, n_resamples, seed, confidence))


# ---------------------------------------------------------------------------- Bayesian comparisons (baycomp)

BAYES_TESTS = {
    "correlated": "Bayesian correlated t-test for repeated cross-validation (Corani & Benavoli 2015; baycomp)",
    "signed-rank": "Bayesian signed-rank test over blocks (Benavoli et al. 2017; baycomp, Dirichlet-process prior 0.5)",
}
BAYES_SAMPLES = 50_000
BAYES_SEED = 0


@dataclass
class BayesResult:
    """P(left), P(rope), P(right) for y − x: left = x better by more than the ROPE, right = y better."""

    left: float
    rope: float
    right: float
    posterior: object  # baycomp's posterior: what its plots draw

    def decision(self, x: str, y: str, threshold: float = 0.95) -> str:
        if self.rope >= threshold:
            return "practically equivalent"
        if self.left >= threshold:
            return f"{x} better"
        if self.right >= threshold:
            return f"{y} better"
        return "undecided"


def bayes_correlated(x, y, rope: float, runs: int = 1, ratio: float | None = None) -> BayesResult:
    """Posterior of the mean difference y − x over resamples of one dataset. k-fold: baycomp's CorrelatedTTest with
    `runs` repeats (its correction 1/(k − 1) is the k-fold test-to-train ratio). Monte-Carlo splits, whose ratio is
    not 1/(k − 1): baycomp's posterior with the Nadeau–Bengio variance (1/n + n_test/n_train) · var(d)."""
    from baycomp.single import CorrelatedTTest, Posterior

    x, y = np.asarray(x, float), np.asarray(y, float)
    if ratio is None:
        post = CorrelatedTTest(x, y, rope=rope, runs=runs)
    else:
        d = y - x
        post = Posterior(d.mean(), d.var(ddof=1) * (1 / len(d) + ratio), len(d) - 1, rope, x.mean(), y.mean())
    left, within, right = (float(p) for p in post.probs())
    return BayesResult(left, within, right, post)


def bayes_signed_rank(x, y, rope: float, seed: int = BAYES_SEED) -> BayesResult:
    """Posterior of y − x over blocks (one value per block), sampled with a fixed seed so a report is reproducible."""
    from baycomp.multiple import SignedRankTest

    post = SignedRankTest(np.asarray(x, float), np.asarray(y, float), rope, nsamples=BAYES_SAMPLES, random_state=seed)
    left, within, right = (float(p) for p in post.probs())
    return BayesResult(left, within, right, post)
