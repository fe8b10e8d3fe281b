"""Statistics for comparing formulations across folds, blocks and shared test predictions.

Paired tests across CV folds: Wilcoxon signed-rank (scipy) and the Nadeau–Bengio corrected
resampled t (computed here: not in scipy). The study's unpaired rank-sum is offered for
faithfulness and labelled as such. Friedman + Iman–Davenport with Nemenyi's critical difference
rank formulations over blocks (backbones); McNemar (exact, statsmodels) compares two models'
predictions on the same test images; bootstrap CIs come from scipy.stats.bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

TESTS = {
    "wilcoxon": "Wilcoxon signed-rank test (paired by fold, two-sided)",
    "corrected-t": "Nadeau–Bengio corrected resampled t-test (paired by fold, two-sided)",
    "ranksum": "Wilcoxon rank-sum test (UNPAIRED, as in the study; ignores the fold pairing)",
}
CORRECTIONS = {"holm": "Holm", "fdr_bh": "Benjamini–Hochberg FDR", "bonferroni": "Bonferroni", "none": "none"}


def paired_test(a, b, test="wilcoxon", n_train=None, n_test=None) -> float:
    """Two-sided p for the difference a − b over folds; identical samples give p = 1 (no difference)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    if len(d) < 2 or np.allclose(d, 0):
        return 1.0
    if test == "wilcoxon":
        return float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue) \
            if np.count_nonzero(d) else 1.0
    if test == "ranksum":
        return float(stats.ranksums(a, b).pvalue)
    if test == "corrected-t":
        return corrected_t(a, b, n_train, n_test)[1]
    raise ValueError(f"unknown test {test!r}")


def corrected_t(a, b, n_train, n_test) -> tuple[float, float]:
    """Nadeau & Bengio (2003): t = mean(d) / sqrt((1/n + n_test/n_train) · var(d)), df = n − 1."""
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
    """The smallest two-sided p the test can give with n paired folds (exact Wilcoxon: 2 / 2^n)."""
    if test == "wilcoxon":
        return 2.0 / 2 ** n
    if test == "ranksum":
        return float(stats.ranksums(np.arange(n) + n, np.arange(n)).pvalue)
    return 0.0


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
    p_value: float
    iman_davenport_f: float
    iman_davenport_p: float
    mean_ranks: dict[str, float]
    critical_difference: float
    n_blocks: int


def friedman(scores: np.ndarray, names: list[str], alpha=0.05) -> FriedmanResult:
    """scores: (blocks N, treatments k), higher is better; rank 1 = best within a block."""
    n, k = scores.shape
    chi2, p = stats.friedmanchisquare(*scores.T)
    ranks = np.vstack([stats.rankdata(-row) for row in scores])
    denom = n * (k - 1) - chi2
    f = (n - 1) * chi2 / denom if denom > 0 else np.inf
    pf = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if np.isfinite(f) else 0.0
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    cd = q * np.sqrt(k * (k + 1) / (6 * n))
    return FriedmanResult(float(chi2), float(p), float(f), pf, dict(zip(names, ranks.mean(0))), float(cd), n)


def mcnemar_exact(y, pred_a, pred_b) -> tuple[int, int, float]:
    """(a right & b wrong, a wrong & b right, exact two-sided p)."""
    ra, rb = np.asarray(pred_a) == np.asarray(y), np.asarray(pred_b) == np.asarray(y)
    table = [[int(np.sum(ra & rb)), int(np.sum(ra & ~rb))], [int(np.sum(~ra & rb)), int(np.sum(~ra & ~rb))]]
    if table[0][1] + table[1][0] == 0:
        return 0, 0, 1.0
    from statsmodels.stats.contingency_tables import mcnemar

    return table[0][1], table[1][0], float(mcnemar(table, exact=True).pvalue)


# ---------------------------------------------------------------------------- vectorised metrics for bootstrap


def _confusion(y, p, k=4):
    """Confusion counts along the last axis: (..., n) -> (..., k, k)."""
    idx = (np.asarray(y) * k + np.asarray(p)).astype(np.int64)
    flat = idx.reshape(-1, idx.shape[-1])
    offsets = (np.arange(flat.shape[0]) * k * k)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * k * k).astype(float)
    return counts.reshape(idx.shape[:-1] + (k, k))


def confusion_metrics(cm):
    """accuracy, macro-F1, QWK, recall of MES 3 from confusion matrices (..., 4, 4)."""
    k = cm.shape[-1]
    total = cm.sum((-1, -2))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    acc = diag.sum(-1) / total
    pred_n, true_n = cm.sum(-2), cm.sum(-1)
    f1 = np.divide(2 * diag, pred_n + true_n, out=np.zeros_like(diag, dtype=float), where=(pred_n + true_n) > 0)
    macro_f1 = f1.mean(-1)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    w = (i - j) ** 2 / (k - 1) ** 2
    expected = true_n[..., :, None] * pred_n[..., None, :] / total[..., None, None]
    num = (w * cm).sum((-1, -2))
    den = (w * expected).sum((-1, -2))
    qwk = 1 - np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)
    recall3 = np.divide(diag[..., 3], true_n[..., 3], out=np.zeros_like(total, dtype=float), where=true_n[..., 3] > 0)
    return np.stack([acc, macro_f1, qwk, recall3])


ENSEMBLE_METRICS = ["accuracy", "macro-F1", "QWK", "MES 3 recall"]


def bootstrap_metrics(y, pred, n_resamples=1000, seed=0, confidence=0.95):
    """Point estimates and paired percentile bootstrap CIs for ENSEMBLE_METRICS."""
    y, pred = np.asarray(y), np.asarray(pred)
    point = confusion_metrics(_confusion(y, pred))
    res = stats.bootstrap((y, pred), lambda a, b, axis=-1: confusion_metrics(_confusion(a, b)), paired=True,
                          vectorized=True, n_resamples=n_resamples, method="percentile", confidence_level=confidence,
                          random_state=np.random.default_rng(seed))
    return point, res.confidence_interval.low, res.confidence_interval.high
