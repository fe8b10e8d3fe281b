"""Each statistic against scipy / statsmodels directly, or its formula on fixed numbers."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from reports.bootstrap import _confusion, bootstrap_metrics, confusion_metrics
from reports.stats import (
    adjust,
    corrected_t,
    friedman,
    mcnemar_exact,
    paired_test,
    significance_possible,
    smallest_p,
    stars,
)

A = np.array([0.71, 0.74, 0.69, 0.77, 0.73, 0.70, 0.75, 0.72, 0.76, 0.74])
B = np.array([0.68, 0.70, 0.70, 0.71, 0.69, 0.66, 0.72, 0.70, 0.71, 0.69])


def test_wilcoxon_and_ranksum_equal_scipy():
    assert paired_test(A, B, "wilcoxon") == pytest.approx(stats.wilcoxon(A, B).pvalue)
    # 10 vs 10 with ties: past the exact enumeration, scipy's tie-corrected normal approximation
    assert paired_test(A, B, "ranksum") == pytest.approx(stats.mannwhitneyu(A, B, method="asymptotic").pvalue)


def test_ties_and_all_zero_differences_mean_no_difference():
    assert paired_test(A, A, "wilcoxon") == 1.0
    assert paired_test(A, A, "corrected-t", 90, 10) == 1.0
    assert paired_test(A, A, "ranksum") == 1.0


def test_corrected_t_on_fixed_numbers():
    d = A - B
    n, n_train, n_test = 10, 900, 100
    t_expected = d.mean() / np.sqrt((1 / n + n_test / n_train) * d.var(ddof=1))
    t, p = corrected_t(A, B, n_train, n_test)
    assert t == pytest.approx(t_expected)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_expected), n - 1))
    # the same formula through the standard library, on the differences written out
    import statistics

    diffs = [0.03, 0.04, -0.01, 0.06, 0.04, 0.04, 0.03, 0.02, 0.05, 0.05]
    by_hand = statistics.mean(diffs) / ((1 / 10 + 100 / 900) * statistics.variance(diffs)) ** 0.5
    assert t == pytest.approx(by_hand, rel=1e-9)
    assert corrected_t(A, B, n_train, n_test)[1] > stats.ttest_rel(A, B).pvalue  # more conservative


@pytest.mark.parametrize("method", ["holm", "fdr_bh", "bonferroni"])
def test_adjust_equals_multipletests_with_named_method(method):
    p = np.array([0.001, 0.02, 0.03, 0.2, 0.5])
    assert np.allclose(adjust(p, method), multipletests(p, method=method)[1])
    assert np.allclose(adjust(p, "none"), p)


def test_holm_over_many_pairs_can_be_impossible_with_ten_folds():
    assert smallest_p("wilcoxon", 10) == pytest.approx(2 / 1024)
    # 5 formulations × 5 rows = 25 comparisons: 25 × 0.00195 = 0.049 < 0.05 just possible; 30 not
    assert significance_possible("wilcoxon", 10, 25, "holm", 0.05)
    assert not significance_possible("wilcoxon", 10, 30, "holm", 0.05)
    assert not significance_possible("wilcoxon", 3, 1, "none", 0.05)  # 2/8 = 0.25


def test_friedman_equals_scipy_and_iman_davenport_formula():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 4)) + np.array([0.3, 0.1, 0.0, 0.2])
    res = friedman(scores, list("abcd"))
    chi2, p = stats.friedmanchisquare(*scores.T)
    assert res.statistic == pytest.approx(chi2) and res.p_value == pytest.approx(p)
    n, k = scores.shape
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert res.iman_davenport_f == pytest.approx(f)
    assert res.iman_davenport_p == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    assert sum(res.mean_ranks.values()) == pytest.approx(k * (k + 1) / 2)
    # Demšar (2006), Table 5: q_0.05 for k = 4 is 2.569
    assert res.critical_difference == pytest.approx(2.569 * np.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)


def _brute_friedman_p(scores):
    """Every combination of within-block orderings, enumerated directly."""
    import itertools

    n, k = scores.shape
    ranks = np.vstack([stats.rankdata(-row) for row in scores])
    q = lambda r: 12 / (n * k * (k + 1)) * (r.sum(0) ** 2).sum() - 3 * n * (k + 1)
    observed = q(ranks)
    perms = [np.array(p) for p in itertools.permutations(range(k))]
    hits = total = 0
    for combo in itertools.product(perms, repeat=n):
        total += 1
        hits += q(np.vstack([ranks[i][c] for i, c in enumerate(combo)])) >= observed - 1e-9
    return hits / total


def test_identical_rankings_give_no_infinite_f_and_the_exact_p():
    scores = np.array([[0.7, 0.75, 0.8], [0.6, 0.65, 0.7]])
    res = friedman(scores, ["a", "b", "c"])
    assert np.isnan(res.iman_davenport_f) and np.isnan(res.iman_davenport_p)  # undefined, not inf / 0
    assert res.p_value == pytest.approx(1 / 6) == pytest.approx(_brute_friedman_p(scores))
    assert stats.friedmanchisquare(*scores.T).pvalue == pytest.approx(0.135, abs=1e-3)  # the approximation
    assert res.exact and "undefined" in res.note
    rng = np.random.default_rng(2)
    small = rng.random((3, 3))
    assert friedman(small, list("abc")).p_value == pytest.approx(_brute_friedman_p(small))


def test_mcnemar_exact_equals_statsmodels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    a = np.where(rng.random(300) < 0.8, y, (y + 1) % 4)
    b = np.where(rng.random(300) < 0.7, y, (y + 1) % 4)
    n01, n10, p = mcnemar_exact(y, a, b)
    ra, rb = a == y, b == y
    table = [[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]]
    assert p == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert (n01, n10) == (table[0][1], table[1][0])
    assert mcnemar_exact(y, a, a)[2] == 1.0


def test_vectorised_metrics_equal_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 250)
    p = np.clip(y + rng.integers(-1, 2, 250), 0, 3)
    acc, mf1, qwk, r3 = confusion_metrics(_confusion(y, p))
    assert acc == pytest.approx(accuracy_score(y, p))
    assert mf1 == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2, 3], zero_division=0))
    assert qwk == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert r3 == pytest.approx(recall_score(y, p, labels=[3], average="macro"))


def test_bootstrap_ci_coverage_on_a_known_case():
    # accuracy of a classifier that is right with probability 0.7: the 95% CI must cover 0.7 ~95% of the time
    rng = np.random.default_rng(3)
    hits = 0
    trials = 60
    for t in range(trials):
        y = rng.integers(0, 4, 200)
        pred = np.where(rng.random(200) < 0.7, y, (y + 1) % 4)
        _, lo, hi = bootstrap_metrics(y, pred, n_resamples=400, seed=t)
        hits += lo[0] <= 0.7 <= hi[0]
    assert 0.85 <= hits / trials <= 1.0


def test_stars():
    assert [stars(p) for p in (0.2, 0.04, 0.009, 0.0009, float("nan"))] == ["", "*", "**", "***", ""]
