"""--test bayes: the Bayesian correlated t-test per block and the signed-rank test across blocks, with a ROPE.

Every probability is recomputed here from the run's own long table with baycomp's public functions, and the
signed-rank ones with autorank, an independent user of baycomp; the printed words are tested against them."""

import re

import numpy as np
import pandas as pd
import pytest
from fake_run import write_fake_run

from benchmark.cli import main
from benchmark.errors import BenchError
from reports.compare import bayes_compare, bayes_table
from reports.load import load_run
from reports.render import build, to_html, to_latex, to_markdown
from reports.table import Options

FORMS = ("softmax", "coral", "corn", "mtl")
BACKBONES = ("resnet18", "resnet50", "densenet121", "inception_v3", "mobilenetv3_large_100")


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_bayes")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = write_fake_run(
        tmp_path_factory.mktemp("bayes") / "run",
        backbones=BACKBONES,
        formulations=FORMS,
        folds=5,
        n_val=120,
        n_test=80,
        skill={"softmax": 0.70, "coral": 0.705, "corn": 0.74, "mtl": 0.80},
    )
    return load_run(path)


def fold_values(run, b, f):
    """Macro F1 per fold straight from the long table (one seed here)."""
    long = run.long
    sel = long[
        (long.backbone == b)
        & (long.formulation == f)
        & (long.split == "val")
        & (long.task == "mes")
        & (long.metric == "f1")
        & (long.cls == "macro")
    ]
    return sel.sort_values("fold").value.to_numpy()


def test_within_block_probabilities_equal_baycomp_on_the_fold_values(run):
    import baycomp

    cmp = bayes_compare(run, Options(rope=0.01), "formulations", reference="softmax")
    assert cmp.pairs == [("softmax", f) for f in FORMS[1:]]
    for b in BACKBONES:
        x = fold_values(run, b, "softmax")
        for f in FORMS[1:]:
            y = fold_values(run, b, f)
            assert len(x) == len(y) == 5
            expected = baycomp.two_on_single(x, y, rope=0.01, runs=1)
            got = cmp.within[b, "softmax", f]
            np.testing.assert_allclose([got.left, got.rope, got.right], expected, atol=1e-12)
            # left is the first (the reference) better: the sign convention the table's headers print
            if y.mean() - x.mean() > 0.05:
                assert got.right > got.left


def test_across_blocks_equals_autorank_and_baycomp(run):
    from autorank import autorank
    from baycomp import two_on_multiple

    cmp = bayes_compare(run, Options(rope=0.01), "formulations", reference="softmax")
    means = pd.DataFrame({f: [fold_values(run, b, f).mean() for b in BACKBONES] for f in FORMS}, index=BACKBONES)
    ranked = autorank(
        means, alpha=0.05, verbose=False, approach="bayesian", rope=0.01, rope_mode="absolute", nsamples=50000,
        random_state=0, order="descending",
    )  # fmt: skip
    for f in FORMS[1:]:
        got = cmp.across["softmax", f]
        direct = two_on_multiple(means["softmax"].to_numpy(), means[f].to_numpy(), rope=0.01, random_state=0)
        np.testing.assert_allclose([got.left, got.rope, got.right], direct, atol=1e-12)
        if ("softmax" in ranked.posterior_matrix.index) and (f in ranked.posterior_matrix.columns):
            pm = ranked.posterior_matrix.loc["softmax", f]
            if isinstance(pm, tuple):
                np.testing.assert_allclose([got.left, got.rope, got.right], pm, atol=1e-12)
                continue
        pm = ranked.posterior_matrix.loc[f, "softmax"]  # autorank stores each pair once: then x and y swap
        np.testing.assert_allclose([got.right, got.rope, got.left], pm, atol=1e-12)


def test_table_prints_what_was_computed_and_names_its_rope(run):
    cmp = bayes_compare(run, Options(rope=0.02), "formulations", reference="softmax")
    t = bayes_table(cmp, run)
    assert "ROPE ±0.02" in t.title
    assert "P(equivalent, |Δ| < 0.02)" in t.columns
    text = " ".join(t.notes)
    assert "|Δ| < 0.02" in text and "Corani & Benavoli" in text and "signed-rank" in text
    rows = {(r[0], r[1]): r for r in t.rows}
    for b in BACKBONES:
        r = rows[b, "softmax vs corn"]
        res = cmp.within[b, "softmax", "corn"]
        assert r[4:7] == [f"{p:.3f}" for p in (res.left, res.rope, res.right)]
        assert float(r[3]) == pytest.approx(cmp.means[b, "corn"] - cmp.means[b, "softmax"], abs=5e-4)
        assert r[7] == res.decision("softmax", "corn")
    across = rows["all 5 backbones (signed-rank)", "softmax vs mtl"]
    res = cmp.across["softmax", "mtl"]
    assert across[4:7] == [f"{p:.3f}" for p in (res.left, res.rope, res.right)]
    # mtl is far better on every backbone: the decision says so; a wider ROPE moves mass into equivalence
    assert res.right > 0.95 and across[7] == "mtl better"
    wide = bayes_compare(run, Options(rope=0.2), "formulations", reference="softmax")
    assert wide.within[BACKBONES[0], "softmax", "coral"].rope > cmp.within[BACKBONES[0], "softmax", "coral"].rope


def test_decision_rule():
    from reports.stats import BayesResult

    assert BayesResult(0.01, 0.97, 0.02, None).decision("a", "b") == "practically equivalent"
    assert BayesResult(0.96, 0.03, 0.01, None).decision("a", "b") == "a better"
    assert BayesResult(0.0, 0.04, 0.96, None).decision("a", "b") == "b better"
    assert BayesResult(0.5, 0.2, 0.3, None).decision("a", "b") == "undecided"


def test_fewer_than_three_blocks_say_so(tmp_path):
    run2 = load_run(write_fake_run(tmp_path / "r", backbones=("resnet18", "resnet50"), formulations=FORMS[:2], folds=3))
    cmp = bayes_compare(run2, Options(), "formulations", reference="softmax")
    assert not cmp.across and len(cmp.within) == 2
    assert any("needs at least 3 backbones; this run has 2" in n for n in bayes_table(cmp, run2).notes)


def test_bayes_on_the_test_split_is_refused(run):
    with pytest.raises(BenchError, match="--split val"):
        bayes_compare(run, Options(split="test"), "formulations")


def test_report_in_every_format_names_the_rope_and_draws_baycomp_figures(run, tmp_path, capsys):
    rep = build(run, Options(test="bayes", rope=0.01))
    titles = [t.title for t in rep.tables]
    assert "Table 2b — Bayesian comparison of macro F1 (ROPE ±0.01)" in titles
    assert any("with ROPE ±0.01" in line for line in rep.header)
    md, html, tex = to_markdown(rep), to_html(rep), to_latex(rep)
    assert "ROPE ±0.01" in md and "ROPE ±0.01" in html
    assert re.search(r"ROPE \$?\\pm\$?0\.01|ROPE ±0\.01", tex)
    names = [name for name, _ in rep.figure_specs]
    assert sum(n.startswith("bayes posterior densities") for n in names) == len(BACKBONES)
    assert sum(n.startswith("bayes posterior simplex") for n in names) == len(FORMS) - 1
    only_bayes = tmp_path / "bayes-view.yaml"  # the per-class section alone: its Bayesian figures, not every figure
    only_bayes.write_text("name: bayes-only\nsections:\n  - {kind: per_class}\n")
    figures_only = ["--figures-only", "--view", str(only_bayes), "-o", str(tmp_path / "f")]
    assert main(["report", str(run.path), "--test", "bayes", *figures_only]) == 0
    written = {p.name for p in (tmp_path / "f").glob("bayes-*.png")}
    assert "bayes-posterior-simplex-softmax-vs-mtl.png" in written
    assert "bayes-posterior-densities-resnet18.png" in written
    # without --test bayes there is no Bayesian table, and --rope alone is refused rather than ignored
    assert not any("Bayesian" in t for t in [t.title for t in build(run, Options()).tables])
    assert main(["report", str(run.path), "--rope", "0.05"]) == 2
    assert "changes only the Bayesian comparison" in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(run.path), "--test", "bayes", "--split", "test"]) == 2
    assert "--split val" in capsys.readouterr().err
