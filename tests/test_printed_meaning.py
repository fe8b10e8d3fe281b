"""The second audit: what a report prints must say what was computed. Each test checks a printed p-value, legend,
interval or rate against an independent computation (brute force, scipy, scikit-learn, the formula written out)."""

import itertools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from fake_run import write_fake_run
from scipy import stats
from sklearn.metrics import f1_score

from benchmark.cli import main
from benchmark.errors import BenchError
from reports.bootstrap import cluster_bootstrap, confusion_metrics
from reports.design import Design
from reports.load import load_run
from reports.stats import friedman, friedman_exact_p, paired_test, smallest_p
from reports.table import Options

# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_printed_meaning")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """3 backbones × 4 formulations (one `+f1`) × 6 folds, test predictions from 8 test patients."""
    return write_fake_run(
        tmp_path_factory.mktemp("meaning") / "run",
        backbones=("resnet18", "resnet50", "densenet121"),
        formulations=("softmax", "regression", "mtl", "mtl+f1"),
        folds=6,
        n_val=80,
        n_test=120,
        n_patients=8,
    )


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


# ---------------------------------------------------------------------------- 1. legends name their reference


def test_compare_backbones_legend_names_the_backbone_reference(small_run, capsys):
    capsys.readouterr()
    assert main(["report", str(small_run), "--compare", "backbones"]) == 0
    md = capsys.readouterr().out
    table2 = _section(md, "Table 2")
    assert "paired comparison with resnet18 on" in table2  # the first backbone, what the stars were computed against
    assert "comparison with softmax" not in table2


def test_kim_lee_table2_legend_names_regression(small_run, capsys):
    capsys.readouterr()
    assert main(["report", str(small_run), "--view", "kim-lee-2025"]) == 0
    md = capsys.readouterr().out
    table2 = _section(md, "Table 2 — DenseNet121")
    assert "comparison with regression on" in table2 and "with softmax" not in table2


# ---------------------------------------------------------------------------- 2. exact Friedman with ties


def _brute_force_friedman_p(scores):
    """Every block permutes its own ranks (ties included), all blocks independently: k!^n assignments."""
    ranks = np.vstack([stats.rankdata(-row) for row in scores])
    n, k = ranks.shape

    def q(r):
        s = r.sum(0)
        return 12.0 / (n * k * (k + 1)) * (s**2).sum() - 3 * n * (k + 1)

    observed = q(ranks)
    orders = list(itertools.permutations(range(k)))
    hits = total = 0
    for choice in itertools.product(orders, repeat=n):
        perm = np.vstack([ranks[i][list(o)] for i, o in enumerate(choice)])
        hits += q(perm) >= observed - 1e-9
        total += 1
    return hits / total


@pytest.mark.parametrize(
    "scores",
    [
        [[0.7, 0.7, 0.8], [0.6, 0.65, 0.7], [0.5, 0.55, 0.52], [0.9, 0.8, 0.85]],  # the audit's design
        [[0.6, 0.65, 0.7], [0.7, 0.7, 0.8], [0.5, 0.5, 0.5], [0.9, 0.8, 0.85]],  # ties in other blocks
        [[0.1, 0.2, 0.2, 0.3], [0.4, 0.4, 0.1, 0.3], [0.3, 0.2, 0.1, 0.0]],
    ],
)
def test_exact_friedman_p_equals_brute_force_with_different_tie_patterns(scores):
    scores = np.array(scores)
    res = friedman(scores, [f"f{j}" for j in range(scores.shape[1])])
    assert res.exact
    assert res.p_value == pytest.approx(_brute_force_friedman_p(scores), abs=1e-12)


def test_the_audits_friedman_design_gives_0_5278():
    scores = np.array([[0.7, 0.7, 0.8], [0.6, 0.65, 0.7], [0.5, 0.55, 0.52], [0.9, 0.8, 0.85]])
    ranks = np.vstack([stats.rankdata(-row) for row in scores])
    assert friedman_exact_p(ranks) == pytest.approx(0.5278, abs=1e-4)


# ---------------------------------------------------------------------------- 3. --alpha reaches the CD diagram

# Three formulations over 10 blocks whose Nemenyi p of a vs c is 0.065: separated at α = 0.1, joined at 0.05.
CD_SCORES = np.array(
    [
        [0.578, 0.615, 0.515],
        [0.741, 0.522, 0.409],
        [0.822, 0.615, 0.64],
        [0.735, 0.483, 0.564],
        [0.799, 0.564, 0.346],
        [0.753, 0.589, 0.522],
        [0.485, 0.637, 0.28],
        [0.631, 0.671, 0.354],
        [0.551, 0.564, 0.632],
        [0.829, 0.551, 0.58],
    ]
)


def test_the_cd_diagram_is_the_same_png_in_every_process():
    """scikit-posthocs draws a crossbar through its clique in set order, which follows the per-process string hash:
    these names under hash seeds 1 and 2 gave two different PNGs before the bars were put in rank order."""
    code = (
        "import hashlib, numpy as np\n"
        "from reports.stats import friedman\n"
        "from reports.sections.friedman import cd_diagram\n"
        "rng = np.random.default_rng(0)\n"
        "s = np.column_stack([0.7 + 0.01 * rng.random(8), 0.7 + 0.01 * rng.random(8), 0.69 + 0.01 * rng.random(8),"
        " 0.5 + 0.01 * rng.random(8), 0.3 + 0.01 * rng.random(8)])\n"
        "res = friedman(s, ['softmax', 'coral', 'corn', 'mtl', 'mtl+f1'])\n"
        "print(hashlib.sha256(cd_diagram((res, s, []))).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(digests) == 1 and "" not in digests, digests


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_cd_diagram_cliques_and_title_follow_alpha(alpha):
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    from reports.sections.friedman import cd_diagram, draw_cd

    names = ["a", "b", "c"]
    res = friedman(CD_SCORES, names, alpha)
    nemenyi = sp.posthoc_nemenyi_friedman(CD_SCORES)  # independent of ours: its own column numbering
    p_ac = float(nemenyi.iloc[0, 2])
    assert 0.05 < p_ac < 0.1
    # The CD at α separates a and c exactly when Nemenyi's p is below α (the same studentized range).
    gap = abs(res.mean_ranks["a"] - res.mean_ranks["c"])
    assert (gap > res.critical_difference) == (p_ac < alpha)
    fig, ax = plt.subplots()
    elements = draw_cd(ax, res, CD_SCORES)
    spans = [(min(line.get_xdata()), max(line.get_xdata())) for group in elements["crossbars"] for line in group]
    lo_r, hi_r = sorted((res.mean_ranks["a"], res.mean_ranks["c"]))
    joined = any(lo <= lo_r + 1e-9 and hi >= hi_r - 1e-9 for lo, hi in spans)
    assert joined == (p_ac >= alpha)
    plt.close(fig)
    png = cd_diagram((res, CD_SCORES, []))
    assert png[:4] == b"\x89PNG"
    fig_title = _cd_title(res)
    assert f"α = {alpha:g}" in fig_title and f"CD = {res.critical_difference:.2f}" in fig_title


def _cd_title(res):
    import matplotlib.pyplot as plt

    from reports.sections import friedman

    captured = {}
    real = plt.Axes.set_title

    def spy(self, label, *a, **k):
        captured["title"] = label
        return real(self, label, *a, **k)

    plt.Axes.set_title = spy
    try:
        friedman.cd_diagram((res, CD_SCORES, []))
    finally:
        plt.Axes.set_title = real
    return captured["title"]


def test_alpha_reaches_table6_and_the_diagram_in_a_report(tmp_path, capsys):
    run = write_fake_run(
        tmp_path / "run", backbones=("resnet18", "resnet50", "densenet121"), formulations=("softmax", "coral", "corn")
    )
    capsys.readouterr()
    assert main(["report", str(run), "--alpha", "0.1"]) == 0
    md = capsys.readouterr().out
    table6 = _section(md, "Table 6")
    q = stats.studentized_range.ppf(0.9, 3, np.inf) / np.sqrt(2)
    assert f"CD = {q * np.sqrt(3 * 4 / (6 * 3)):.3f} at α = 0.1" in table6


# ---------------------------------------------------------------------------- 4. rank-sum: exact, per fold index


def test_rank_sum_is_exact_at_small_n():
    a, b = [0.71, 0.74, 0.78], [0.61, 0.64, 0.69]
    assert paired_test(a, b, "ranksum") == pytest.approx(0.1)  # 2 / C(6, 3); the normal approximation: 0.0495
    assert paired_test(a, b, "ranksum") == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue)
    for n in (3, 5, 10):
        assert smallest_p("ranksum", n) == pytest.approx(2 / math.comb(2 * n, n))
    tied_a, tied_b = [0.7, 0.7, 0.8, 0.75], [0.6, 0.7, 0.65, 0.6]
    perm = stats.permutation_test(
        (tied_a, tied_b),
        lambda x, y: stats.mannwhitneyu(x, y).statistic,
        permutation_type="independent",
        n_resamples=np.inf,
        alternative="two-sided",
    )
    assert paired_test(tied_a, tied_b, "ranksum") == pytest.approx(perm.pvalue)


def test_rank_sum_at_three_folds_draws_no_stars(tmp_path, capsys):
    run = write_fake_run(tmp_path / "run", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3)
    capsys.readouterr()
    assert main(["report", str(run), "--test", "ranksum", "--correction", "none"]) == 0
    table2 = _section(capsys.readouterr().out, "Table 2")
    assert "NO STARS POSSIBLE" in table2 and "0.1000" in table2
    cells = "".join(line for line in table2.splitlines() if line.startswith("| MES")).replace("**", "")
    assert "*" not in cells


def test_rank_sum_uses_one_value_per_fold_index_and_is_refused_on_monte_carlo(small_run):
    run = load_run(small_run)
    design = Design.of(run, Options(test="ranksum"))
    assert design.n_units == design.k == 6
    design.repeats, design.seeds = 2, 2  # 2 repeats × 3 folds × 2 seeds: units are the 3 fold indices
    design.k = 3
    assert design.n_units == 3
    run.suite.protocol.kind = "polat"
    with pytest.raises(BenchError, match="ranksum"):
        Design.of(run, Options(test="ranksum"))


# ---------------------------------------------------------------------------- 6. undefined bootstrap statistics


def test_macro_f1_over_present_grades_and_undefined_recall_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)  # no MES 3
    p = np.clip(y + rng.integers(-1, 2, 200), 0, 3)
    cm = np.zeros((4, 4))
    np.add.at(cm, (y, p), 1)
    acc, macro_f1, _, recall3 = confusion_metrics(cm)
    assert macro_f1 == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0))
    assert np.isnan(recall3)


def test_bootstrap_leaves_out_resamples_where_a_grade_is_absent():
    # 8 patients, every MES 3 image from patient 7, all of them recognised: MES 3 recall is 1 wherever defined.
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(8), 20)
    y = np.where(patients == 7, 3, rng.integers(0, 3, len(patients)))
    pred = np.where(rng.random(len(y)) < 0.8, y, np.clip(y + 1, 0, 2))
    pred[y == 3] = 3
    boot = cluster_bootstrap(y, [pred], patients, n_resamples=2000)
    point, lo, hi = boot
    assert point[0, 0, 3] == 1.0 and lo[0, 0, 3] == 1.0 and hi[0, 0, 3] == 1.0  # was [0.000, 1.000]
    expected = 2000 * (7 / 8) ** 8  # resamples without patient 7
    sd = math.sqrt(2000 * (7 / 8) ** 8 * (1 - (7 / 8) ** 8))
    assert abs(boot.undefined[0, 0, 3] - expected) < 4 * sd
    assert boot.undefined[0, 0, 0] == 0  # accuracy is always defined
    # macro-F1 over the grades present: never dragged down by the absent grade's 0
    assert lo[0, 0, 1] > 0.5


def test_table5_says_how_many_resamples_were_left_out_and_warns_on_few_patients(tmp_path, capsys):
    run = write_fake_run(
        tmp_path / "run", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3, n_test=60, n_patients=3
    )
    capsys.readouterr()
    assert main(["report", str(run), "--markdown"]) == 0
    table5 = _section(capsys.readouterr().out, "Table 5")
    run_ = load_run(run)
    groups = run_.meta["test_groups"]
    preds = run_.store.predictions_frame("test", ["image_id", "y_true"]).drop_duplicates("image_id")
    for k in range(4):  # every grade's patient count, as the warning must state it
        n = len({groups[i] for i in preds.image_id[preds.y_true == k]})
        assert f"of MES {k} come from only {n} patient(s)" in table5
    assert re.search(r"Resamples left out — .*MES 3 recall: up to \d+ of 1000", table5)
    assert "left out of the statistic's CI (not scored as 0)" in table5


# ---------------------------------------------------------------------------- one fold: no "± 0.000"


def test_a_one_fold_mean_prints_the_value_alone(make_suite, tmp_path, capsys):
    from rich.console import Console

    from reports.summary import print_summary

    suite = make_suite(name="onefold")
    assert main(["run", str(suite), "--out", str(tmp_path / "one"), "--only", "fold=0", "--quiet"]) == 0
    console = Console(record=True, width=200)
    print_summary(tmp_path / "one", console)
    text = console.export_text()
    assert "±" not in text and re.search(r"\b0\.\d{3}\b", text)  # was "0.573±0.000"


# ---------------------------------------------------------------------------- +f1 validation numbers are marked


def test_inverse_f1_validation_numbers_are_marked_in_sample(small_run, capsys):
    capsys.readouterr()
    assert main(["report", str(small_run)]) == 0
    md = capsys.readouterr().out
    table1 = _section(md, "Table 1")
    assert "| mtl+f1 ‡ |" in table1 and "| mtl |" in table1
    assert "IN-SAMPLE" in table1 and "No number is in-sample" not in table1
    assert "mtl+f1 ‡" in _section(md, "Table 2")
    assert main(["report", str(small_run), "--split", "test"]) == 0
    md = capsys.readouterr().out
    assert "‡" not in _section(md, "Table 1") and "No number is in-sample" in _section(md, "Table 1")


# ---------------------------------------------------------------------------- a view sets its statistics


def test_kim_lee_view_states_its_own_test_and_split_and_a_flag_overrides_it(small_run, capsys):
    capsys.readouterr()
    assert main(["report", str(small_run), "--view", "kim-lee-2025"]) == 0
    md = capsys.readouterr().out
    table2 = _section(md, "Table 2 — DenseNet121")
    assert "Wilcoxon rank-sum test (UNPAIRED" in table2 and "held-out test set" in table2
    assert "unpaired comparison with regression" in table2 and "as in the study" in table2
    run = load_run(small_run)
    res = run.series("densenet121", "regression", "test", "mes", "f1", "3")
    other = run.series("densenet121", "mtl+f1", "test", "mes", "f1", "3")
    expected = stats.permutation_test(  # exact over every split of the 12 fold values, ties included
        (other.to_numpy(), res.to_numpy()),
        lambda x, y: stats.mannwhitneyu(x, y).statistic,
        permutation_type="independent",
        n_resamples=np.inf,
        alternative="two-sided",
    ).pvalue
    assert paired_test(other.to_numpy(), res.to_numpy(), "ranksum") == pytest.approx(expected)
    assert main(["report", str(small_run), "--view", "kim-lee-2025", "--test", "wilcoxon", "--split", "val"]) == 0
    md = capsys.readouterr().out
    table2 = _section(md, "Table 2 — DenseNet121")
    assert "signed-rank" in table2 and "validation folds" in table2 and "rank-sum" not in table2


def test_figure_legend_names_the_family_per_panel(small_run):
    from reports.compare import compare, figure_legend

    run = load_run(small_run)
    cmp = compare(run, Options(reference="softmax"), "formulations", "resnet18", "f1", reference="softmax")
    text = figure_legend(cmp, panels=4)
    assert "within each metric panel separately" in text and f"its {len(cmp.p_adjusted)} comparisons" in text


# ---------------------------------------------------------------------------- 7. Table 7 times inference alone


def test_evaluation_rate_excludes_decoding_fit_which_has_its_own_column(make_suite, tmp_path, monkeypatch, capsys):
    import time

    from formulations.regression import Regression

    real = Regression.fit_decoding
    delay = 1.5  # well above the inference of 120 tiny images even on a loaded CI machine

    def slow_fit(self, outputs, y):
        time.sleep(delay)
        return real(self, outputs, y)

    monkeypatch.setattr(Regression, "fit_decoding", slow_fit)
    tuned = {"name": "regression", "label": "regression[tuned]", "options": {"tune_cutpoints": True}}
    suite = make_suite(name="t7", formulations=[tuned])
    assert main(["run", str(suite), "--out", str(tmp_path / "t7"), "--quiet"]) == 0
    run = load_run(tmp_path / "t7")
    for key in run.cells.key:
        t = run.result(key).timings
        assert t["fit_seconds"] >= 3 * delay  # the whole-fold fit and the two cross-fit halves
        assert t["eval_seconds"] < delay  # inference of 120 tiny images, with none of the fitting in it
    capsys.readouterr()
    assert main(["report", str(tmp_path / "t7")]) == 0
    table7 = _section(capsys.readouterr().out, "Table 7")
    assert "decoding fit (s)" in table7
    row = next(line for line in table7.splitlines() if line.startswith("| tiny |"))
    assert float(row.split("|")[-3]) >= 3 * delay


# ---------------------------------------------------------------------------- 8. peak memory per cell


def test_peak_memory_is_reset_per_cell_with_a_fake_cuda_memory_api(monkeypatch):
    import torch

    from benchmark.train.device import DevicePlan

    class FakeCuda:  # CUDA's semantics: the peak is per process until reset_peak_memory_stats
        def __init__(self):
            self.current = self.peak = 0

        def alloc(self, n):
            self.current += n
            self.peak = max(self.peak, self.current)

        def free(self, n):
            self.current -= n

        def reset_peak_memory_stats(self, device=None):
            self.peak = self.current

        def max_memory_allocated(self, device=None):
            return self.peak

    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", fake.max_memory_allocated)
    plan = DevicePlan(torch.device("cuda"), None)
    peaks = []
    for size in (4 << 30, 1 << 20):  # a large cell, then a small one
        plan.reset_peak_memory()
        fake.alloc(size)
        peaks.append(plan.peak_memory())
        fake.free(size)
    assert peaks == [4 << 30, 1 << 20]  # without the reset the small cell would report 4 GiB
    assert DevicePlan(torch.device("cpu"), None).peak_memory() is None


def test_every_cell_starts_its_own_peak_memory_window(make_suite, tmp_path, monkeypatch):
    from benchmark.train.device import DevicePlan

    calls = []
    real = DevicePlan.peak_memory
    monkeypatch.setattr(DevicePlan, "reset_peak_memory", lambda self: calls.append("reset"))
    monkeypatch.setattr(DevicePlan, "peak_memory", lambda self: calls.append("read") or real(self))
    suite = make_suite(name="peaks", formulations=["softmax", "coral"])
    assert main(["run", str(suite), "--out", str(tmp_path / "peaks"), "--quiet"]) == 0
    assert calls == ["reset", "read"] * 4  # 2 formulations × 2 folds, each reset before it is read
