"""Statistics for comparing formulations across folds, blocks and shared test predictions.

Paired tests across CV folds: Wilcoxon signed-rank (scipy) and the Nadeau–Bengio corrected
resampled t (computed here: not in scipy). The study's unpaired rank-sum is offered for
faithfulness and labelled as such. Friedman + Iman–Davenport with Nemenyi's critical difference
rank formulations over blocks (backbones); McNemar (exact, statsmodels) compares two models'
predictions on the same test images. The test set's bootstrap CIs are bootstrap.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

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
    import gc

    from statsmodels.stats.multitest import multipletests  # imported here: it costs ~0.3 s at start-up

    # multipletests runs gc.collect(): with a paper-sized run loaded a full collection costs ~0.2 s a call, and a
    # report adjusts hundreds of families. Objects frozen before it are not scanned; nothing of them is garbage here.
    if gc.get_freeze_count():
        return multipletests(p, method=method)[1]
    gc.freeze()
    try:
        return multipletests(p, method=method)[1]
    finally:
        gc.unfreeze()


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
