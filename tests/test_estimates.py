"""The meaning of every estimate: what data, what rule, what pairing — checked against independent
implementations (sklearn, scipy, scikit-posthocs) or the formula written out here."""

import itertools

import matplotlib
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedGroupKFold

from benchmark.cli import main
from benchmark.result import CellResult
from benchmark.run.store import Store
from benchmark.suite.cells import expand_cells, protocol_hash
from benchmark.suite.schema import BackboneConfig, Suite
from formulations import FORMULATIONS, create_formulation
from formulations.regression import decode_scores, fit_cutpoints
from reports.bootstrap import bootstrap_metrics, cluster_bootstrap
from reports.design import Design
from reports.ensembles import FoldPredictions, ensemble
from reports.load import load_run
from reports.render import build, to_markdown
from reports.sections.finetune import finetune_effect
from reports.sections.per_class import per_class_f1
from reports.stats import corrected_t, sign_flip_p
from reports.table import Options

matplotlib.use("Agg")


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_estimates")


@pytest.fixture(scope="module")
def fold0_run(tmp_path_factory):
    """Every registered formulation (and the tuned, soft and fine-tuned variants), fold 0 only."""
    from conftest import tiny_suite

    tmp = tmp_path_factory.mktemp("f0")
    forms = sorted(FORMULATIONS) + [
        {"name": "regression", "label": "regression[tuned]", "options": {"tune_cutpoints": True}},
        {"name": "mtl", "label": "mtl[soft]", "options": {"decoding": "soft"}},
        "mtl+f1",
        "mtl+ft",
    ]
    suite = tiny_suite(
        tmp,
        name="f0",
        formulations=forms,
        protocol__folds=3,
        dataset={"params": {"n_images": 240, "n_patients": 30, "size": [32, 32], "seed": 4}},
    )
    out = tmp / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    return out


# ---------------------------------------------------------------------------- 1. ensembles by the formulation's rule


def test_single_fold_ensemble_reproduces_each_cells_test_predictions(fold0_run):
    run = load_run(fold0_run)
    preds = run.store.predictions_frame("test", ["key", "image_id", "y_true", "y_pred", "outputs"])
    tp = FoldPredictions.from_frame(preds)
    for f in run.formulations:
        key = run.cells[(run.cells.formulation == f) & (run.cells.status == "done")].key.iloc[0]
        codes, y, pred, n_models = ensemble(run, tp, "tiny", f)
        stored = preds[preds.key == key].set_index("image_id").y_pred
        assert n_models == 1
        assert np.array_equal(pred, stored.loc[tp.image_ids[codes]].to_numpy()), f


def test_table5_point_estimates_equal_the_single_folds_test_metrics(fold0_run):
    run = load_run(fold0_run)
    md = to_markdown(build(run, Options()))
    table5 = md.split("## Table 5")[1].split("\n## ")[0]
    for f in run.formulations:
        acc = run.series("tiny", f, "test", "mes", "accuracy").iloc[0]
        mf1 = run.series("tiny", f, "test", "mes", "f1", "macro").iloc[0]
        row = next(line for line in table5.splitlines() if line.startswith(f"| tiny | {f} "))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[3].startswith(f"{acc:.3f} ") and cells[4].startswith(f"{mf1:.3f} "), (f, row, acc, mf1)


# ---------------------------------------------------------------------------- 2. cross-fitted validation


def test_fitted_cut_points_are_cross_fitted_on_validation_and_fitted_whole_for_test(fold0_run):
    run = load_run(fold0_run)
    key = run.cells[run.cells.formulation == "regression[tuned]"].key.iloc[0]
    res = run.result(key)
    state = res.state
    assert res.cross_fitted and state["cross_fit"]["unit"] == "patient"
    suite = run.suite
    from benchmark.data.catalogue import load_dataset

    ds = load_dataset(suite.dataset)
    preds = run.store.predictions_frame(None, ["key", "split", "image_id", "y_true", "y_pred", "score"])
    val = preds[(preds.key == key) & (preds.split == "val")]
    pos = {i: n for n, i in enumerate(ds.ids.tolist())}
    idx = np.array([pos[i] for i in val.image_id])
    scores, y, groups = val.score.to_numpy(), val.y_true.to_numpy(), ds.groups[idx]
    # independent re-implementation: sklearn's grouped halves, fit on one, decode the other
    expected = np.empty(len(y), dtype=int)
    for fit, score in StratifiedGroupKFold(2, shuffle=True, random_state=0).split(scores, y, groups):
        cuts, _ = fit_cutpoints(scores[fit], y[fit])
        expected[score] = decode_scores(scores[score], cuts)
        assert not set(groups[fit]) & set(groups[score])
    assert np.array_equal(val.y_pred.to_numpy(), expected)
    whole, _ = fit_cutpoints(scores, y)
    assert np.allclose(state["cutpoints"], whole)
    test = preds[(preds.key == key) & (preds.split == "test")]
    assert np.array_equal(test.y_pred.to_numpy(), decode_scores(test.score.to_numpy(), whole))
    in_sample = accuracy_score(y, decode_scores(scores, whole))
    assert run.series("tiny", "regression[tuned]", "val", "mes", "accuracy").iloc[0] == pytest.approx(
        accuracy_score(y, expected)
    )
    assert accuracy_score(y, expected) <= in_sample  # the optimism the cross-fit removes
    md = to_markdown(build(run, Options()))
    assert "No number is in-sample" in md and "cross-fitted" in md


# ---------------------------------------------------------------------------- 4, 5. pairing units and tests


def _constructed(path, folds=3, repeats=1, seeds=(0,), effect=0.3, sizes=None, kind="grouped"):
    suite = Suite.model_validate(
        {
            "name": "c",
            "dataset": {"name": "synthetic"},
            "protocol": {"kind": kind, "folds": folds, "repeats": repeats},
            "training": {"seeds": list(seeds)},
            "backbones": ["resnet18"],
            "formulations": ["softmax", {"name": "corn", "label": "better"}],
        }
    )
    store = Store(path)
    n = folds * repeats
    store.set_meta("protocol_hash", protocol_hash(suite))
    store.set_meta("suite", suite.model_dump(mode="json"))
    store.set_meta("n_folds", n)
    store.set_meta("split_kind", "patient-grouped")
    store.set_meta("dataset", {"name": "constructed", "n_test": 500})
    sizes = sizes or {f: (900, 100) for f in range(n)}
    store.set_meta("fold_sizes", {f: list(v) for f, v in sizes.items()})
    rng = np.random.default_rng(1)
    values = {}
    for cell in expand_cells(suite, n):
        v = 0.5 + 0.1 * rng.random() + (effect + 0.05 * rng.random() if cell.formulation.display == "better" else 0)
        values[cell.formulation.display, cell.seed, cell.fold] = v
        store.claim(
            cell.key,
            {
                "backbone": "resnet18",
                "formulation": cell.formulation.display,
                "seed": cell.seed,
                "fold": cell.fold,
                "config_hash": cell.key,
            },
        )
        store.finish(
            cell.key,
            CellResult(
                metrics=[
                    {"split": s, "task": "mes", "metric": "f1", "cls": c, "value": v}
                    for c in ("0", "1", "2", "3", "macro")
                    for s in ("val", "test")
                ]
            ),
        )
    return load_run(path), values


def test_repeats_are_averaged_per_fold_index_for_signed_rank(tmp_path):
    run, values = _constructed(tmp_path / "r", folds=5, repeats=2, seeds=(0, 1))
    design = Design.of(run, Options(test="wilcoxon"))
    x = run.series("resnet18", "better", "val", "mes", "f1", "macro")
    y = run.series("resnet18", "softmax", "val", "mes", "f1", "macro")
    a, b, _ = design.units(x, y)
    assert len(a) == 5 and design.n_units == 5  # not 20 = 2 seeds × 2 repeats × 5 folds
    expect = [np.mean([values["better", s, r * 5 + j] for s in (0, 1) for r in (0, 1)]) for j in range(5)]
    assert np.allclose(a, expect)
    assert design.p_value(x, y) == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert "mean over 2 repeats × 2 seeds" in design.unit_text()
    note = " ".join(per_class_f1(run, Options(test="wilcoxon")).notes)
    assert "smallest possible p of this test is 0.0625" in note  # the floor at n = 5, not at n = 20


def test_corrected_t_is_bouckaert_frank_over_repeats_with_each_folds_own_sizes(tmp_path):
    sizes = {f: (800 + 20 * f, 100 + 10 * f) for f in range(6)}
    run, values = _constructed(tmp_path / "bf", folds=3, repeats=2, sizes=sizes, effect=0.02)
    x = run.series("resnet18", "better", "val", "mes", "f1", "macro")
    y = run.series("resnet18", "softmax", "val", "mes", "f1", "macro")
    d = np.array([values["better", 0, f] - values["softmax", 0, f] for f in range(6)])
    ratio = np.mean([sizes[f][1] / sizes[f][0] for f in range(6)])
    t = d.mean() / np.sqrt((1 / 6 + ratio) * d.var(ddof=1))  # Bouckaert & Frank, k·r = 6
    p = 2 * stats.t.sf(abs(t), df=5)
    design = Design.of(run, Options(test="corrected-t"))
    assert design.p_value(x, y) == pytest.approx(p)
    assert "Bouckaert–Frank" in design.unit_text() and "n = 6" in design.unit_text()
    test_design = Design.of(run, Options(test="corrected-t", split="test"))  # the held-out size, not n_val
    ratio_test = np.mean([500 / sizes[f][0] for f in range(6)])
    t_test = d.mean() / np.sqrt((1 / 6 + ratio_test) * d.var(ddof=1))
    assert test_design.p_value(
        run.series("resnet18", "better", "test", "mes", "f1", "macro"),
        run.series("resnet18", "softmax", "test", "mes", "f1", "macro"),
    ) == pytest.approx(2 * stats.t.sf(abs(t_test), df=5))


def test_monte_carlo_splits_refuse_rank_tests_and_default_to_corrected_t(tmp_path):
    from benchmark.errors import BenchError

    run, _ = _constructed(tmp_path / "mc", folds=6, kind="polat")
    assert Design.of(run, Options()).test == "corrected-t"
    with pytest.raises(BenchError, match="Monte-Carlo"):
        Design.of(run, Options(test="wilcoxon"))


def test_exact_permutation_test_equals_brute_force_sign_flips():
    rng = np.random.default_rng(3)
    for n in (3, 6, 9):
        d = rng.normal(0.05, 0.1, n)
        flips = np.array(list(itertools.product([-1, 1], repeat=n)))
        null = np.abs((flips * d).mean(1))
        brute = np.mean(null >= abs(d.mean()) - 1e-12)
        assert sign_flip_p(d) == pytest.approx(brute)
    assert sign_flip_p(np.full(3, 0.2)) == pytest.approx(0.25)  # the floor 2/2^3


def test_no_stars_at_three_folds_for_any_test(tmp_path):
    run, _ = _constructed(tmp_path / "n3", folds=3, effect=0.3)
    for test in ("wilcoxon", "permutation", "corrected-t"):
        table = per_class_f1(run, Options(test=test, correction="none"))
        assert not any(c.endswith("*") for row in table.rows for c in row), test
        note = " ".join(table.notes)
        assert "NO STARS" in note and "0.2500" in note, (test, note)
    # the raw corrected-t p is small here: the stars would have been drawn before
    x = run.series("resnet18", "better", "val", "mes", "f1", "macro")
    y = run.series("resnet18", "softmax", "val", "mes", "f1", "macro")
    assert corrected_t(x.to_numpy(), y.to_numpy(), 900, 100)[1] < 0.05


# ---------------------------------------------------------------------------- 6. test-set uncertainty


def test_cluster_bootstrap_with_one_image_per_cluster_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, y, (y + 1) % 4)
    point, lo, hi = cluster_bootstrap(y, [p], np.arange(300), n_resamples=300)
    ref_point, ref_lo, ref_hi = bootstrap_metrics(y, p, n_resamples=300)
    assert np.allclose(point[0, 0], ref_point) and np.allclose(lo[0, 0], ref_lo) and np.allclose(hi[0, 0], ref_hi)


def test_cluster_bootstrap_se_matches_the_cluster_robust_formula():
    """Patients whose images are all right or all wrong: the image bootstrap would be far too narrow."""
    rng = np.random.default_rng(1)
    n_pat, per = 150, 8
    patient = np.repeat(np.arange(n_pat), per)
    correct_patient = rng.random(n_pat) < 0.7
    y = rng.integers(0, 4, n_pat * per)
    p = np.where(correct_patient[patient], y, (y + 1) % 4)
    _, lo, hi = cluster_bootstrap(y, [p], patient, n_resamples=2000, confidence=0.6827)
    acc = (p == y).mean()
    r = np.bincount(patient, weights=(p == y)).astype(float)
    m = np.bincount(patient).astype(float)
    se_formula = np.sqrt(np.sum((r - acc * m) ** 2)) / m.sum()  # ratio estimator, cluster-robust
    se_boot = (hi[0, 0, 0] - lo[0, 0, 0]) / 2
    assert se_boot == pytest.approx(se_formula, rel=0.12)
    _, ilo, ihi = cluster_bootstrap(y, [p], np.arange(len(y)), n_resamples=2000, confidence=0.6827)
    assert (ihi[0, 0, 0] - ilo[0, 0, 0]) < 0.5 * (hi[0, 0, 0] - lo[0, 0, 0])


def test_table5_resamples_patients_and_gives_the_paired_difference(fold0_run):
    md = to_markdown(build(load_run(fold0_run), Options()))
    table5 = md.split("## Table 5")[1].split("\n## ")[0]
    assert "patient-level (cluster) bootstrap" in table5 and "Δ macro-F1 vs softmax" in table5
    assert "McNemar" in table5 and "assumes independent images" in table5  # said why it is absent
    assert "paired CI of the difference" in table5


# ---------------------------------------------------------------------------- 7. the fine-tuning control


def test_plain_finetune_is_the_identical_stage_two_without_weights(fold0_run):
    run = load_run(fold0_run)
    f1 = run.cells[run.cells.formulation == "mtl+f1"].iloc[0]
    ft = run.cells[run.cells.formulation == "mtl+ft"].iloc[0]
    assert f1.depends == ft.depends  # the same stage-1 model
    r1, r2 = run.result(f1.key), run.result(ft.key)
    assert r2.class_weights is None and r2.finetune == "plain"
    w = r1.class_weights
    for task in ("primary", "remission", "active"):
        assert max(w[task]) / min(w[task]) <= 10 + 1e-9 and np.mean(w[task]) == pytest.approx(1.0)
    assert len(r1.history) == len(r2.history)  # same epochs
    table = finetune_effect(run, Options())
    comparisons = {row[1]: row[2] for row in table.rows}
    assert comparisons["mtl+ft → mtl+f1 ‡"] == "re-weighting alone"  # ‡: in-sample on validation
    assert comparisons["mtl → mtl+ft"] == "extra training alone"


def test_stage_two_selects_on_the_unweighted_validation_loss(fold0_run):
    import json

    from benchmark.data.catalogue import load_dataset
    from benchmark.data.splits import Splits
    from benchmark.train.augment import BatchMaker
    from benchmark.train.cell import build_model
    from benchmark.train.device import pick_device
    from benchmark.train.loop import predict

    run = load_run(fold0_run)
    cell = run.cells[run.cells.formulation == "mtl+f1"].iloc[0]
    res = run.result(cell.key)
    ds = load_dataset(run.suite.dataset)
    splits = Splits.from_json(json.loads((fold0_run / "splits.json").read_text()), ds)
    f = create_formulation("mtl")
    model, _ = build_model(BackboneConfig(name="tiny"), f, 0)
    model.load_state_dict(torch.load(fold0_run / "cells" / cell.key / "best.pt", weights_only=True))
    maker = BatchMaker(ds.images, np.asarray(res.norm_mean), np.asarray(res.norm_std), torch.device("cpu"))
    _, loss = predict(model, f, maker, splits.folds[0][1], ds.labels, pick_device("cpu"), 256)
    best = res.history[res.best_epoch - 1]
    assert best["val_loss"] == pytest.approx(loss, rel=1e-5)  # the monitored value is the unweighted loss


# ---------------------------------------------------------------------------- 10. CD diagram cliques


def test_cd_diagram_links_formulations_that_cannot_be_told_apart():
    import matplotlib.pyplot as plt

    from reports.sections.friedman import draw_cd
    from reports.stats import friedman

    rng = np.random.default_rng(0)
    n = 8
    scores = np.column_stack(
        [
            0.70 + 0.01 * rng.random(n),
            0.70 + 0.01 * rng.random(n),
            0.5 + 0.01 * rng.random(n),
            0.3 + 0.01 * rng.random(n),
        ]
    )
    res = friedman(scores, ["a", "b", "c", "d"])
    fig, ax = plt.subplots()
    elements = draw_cd(ax, res, scores)
    spans = [(min(line.get_xdata()), max(line.get_xdata())) for group in elements["crossbars"] for line in group]
    ra, rb, rd = res.mean_ranks["a"], res.mean_ranks["b"], res.mean_ranks["d"]
    assert any(lo <= min(ra, rb) + 1e-9 and hi >= max(ra, rb) - 1e-9 for lo, hi in spans)  # a ~ b linked
    assert not any(lo <= min(ra, rd) + 1e-9 and hi >= max(ra, rd) - 1e-9 for lo, hi in spans)  # a, d not
    plt.close(fig)
