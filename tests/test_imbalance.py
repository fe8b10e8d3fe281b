"""Imbalance remedies the inverse-F1 stage is compared with: the focal and logit-adjusted losses against their
formulas written out here (shared/SPEC.md), class-balanced weights against Cui et al.'s formula, and a run whose
stored weights are recomputed from the fold's own training labels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.suite.cells import expand_cells
from benchmark.suite.loading import load_suite
from formulations import create_formulation
from formulations.finetune import count_weights


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g) * 2, torch.randint(0, 4, (n,), generator=g)


def test_focal_loss_equals_its_formula():
    z, y = batch()
    p = z.softmax(1).numpy()
    pt = p[np.arange(len(y)), y.numpy()]
    for gamma in (0.0, 0.5, 2.0):
        f = create_formulation("focal", {"gamma": gamma})
        expected = np.mean(-((1 - pt) ** gamma) * np.log(pt))
        assert float(f.loss(z, y)) == pytest.approx(expected, rel=1e-5)
    # γ = 0 is the cross-entropy, and class weights make it torch's weighted mean
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    f0 = create_formulation("focal", {"gamma": 0.0})
    assert float(f0.loss(z, y, {"mes": w})) == pytest.approx(float(F.cross_entropy(z, y, weight=w)), rel=1e-5)


def test_logit_adjusted_loss_equals_its_formula_and_predicts_on_plain_logits():
    z, y = batch()
    counts = {"mes": np.array([541, 271, 111, 77])}
    f = create_formulation("logit_adjusted", {"tau": 1.5})
    with pytest.raises(BenchError, match="no class priors"):
        f.loss(z, y)
    f = create_formulation("logit_adjusted", {"tau": 1.5, **f.training_overrides(counts)})
    prior = counts["mes"] / counts["mes"].sum()
    np.testing.assert_allclose(f.options["priors"], prior)
    adjusted = z.numpy() + 1.5 * np.log(prior)
    logp = adjusted - np.log(np.exp(adjusted).sum(1, keepdims=True))
    expected = -logp[np.arange(len(y)), y.numpy()].mean()
    assert float(f.loss(z, y)) == pytest.approx(expected, rel=1e-5)
    # inference: the plain logits (the adjustment is a training-time margin)
    probs = f.outputs(z).numpy()
    np.testing.assert_allclose(probs, z.softmax(1).numpy(), rtol=1e-6)
    assert (f.predict(probs.astype(np.float64), {}) == z.argmax(1).numpy()).all()
    # priors given in the suite are kept
    fixed = create_formulation("logit_adjusted", {"priors": [0.25] * 4})
    assert fixed.training_overrides(counts) == {}


def test_class_balanced_weights_equal_cui_et_al():
    n = np.array([6105, 3052, 1254, 865])
    for beta in (0.9, 0.999, 0.9999):
        raw = (1 - beta) / (1 - beta**n)
        np.testing.assert_allclose(count_weights(n, "effective_number", beta), raw / raw.mean())
    inv = (1 / n) / (1 / n).mean()
    np.testing.assert_allclose(count_weights(n, "inverse_frequency"), inv)
    # β → 1 tends to inverse frequency, small β to equal weights; an absent class weighs 0, the rest mean 1
    np.testing.assert_allclose(count_weights(n, "effective_number", 1 - 1e-9), inv, rtol=1e-3)
    np.testing.assert_allclose(count_weights(n, "effective_number", 0.5), np.ones(4), atol=1e-9)
    w = count_weights(np.array([10, 0, 5, 5]), "inverse_frequency")
    assert w[1] == 0 and w[[0, 2, 3]].mean() == pytest.approx(1.0)


def test_new_training_fields_change_keys_only_when_set(make_suite):
    base = load_suite(make_suite(name="k", formulations=["softmax"]))
    same = load_suite(make_suite(name="k", formulations=["softmax"], training={"class_weights": "none"}))
    weighted = load_suite(
        make_suite(name="k", formulations=["softmax"], training={"class_weights": "inverse_frequency"})
    )
    assert [c.key for c in expand_cells(base, 2)] == [c.key for c in expand_cells(same, 2)]
    assert expand_cells(weighted, 2)[0].key != expand_cells(base, 2)[0].key


def test_settings_that_would_change_nothing_are_refused(make_suite):
    path = make_suite(name="b", formulations=["softmax"], training={"class_weights_beta": 0.99})
    with pytest.raises(BenchError) as err:
        load_suite(path)
    text = " ".join(str(err.value).split())
    assert "class_weights_beta" in text and "effective_number" in text and str(path) in text
    path = make_suite(name="b2", formulations=[{"name": "softmax+ft", "finetune_options": {"beta": 0.9}}])
    with pytest.raises(BenchError, match="finetune: drw"):
        load_suite(path)


def test_a_run_stores_weights_and_priors_from_each_folds_training_labels(make_suite, tmp_path):
    from benchmark.run.runner import Runner
    from reports.load import load_run

    forms = [
        "focal",
        "logit_adjusted",
        "softmax+ft",
        "softmax+drw",
        {"name": "mtl+drw", "finetune_options": {"beta": 0.99}},
    ]
    path = make_suite(
        name="imb", formulations=forms, training={"class_weights": "effective_number", "class_weights_beta": 0.9}
    )
    assert main(["run", str(path), "--out", str(tmp_path / "imb"), "--quiet"]) == 0
    run = load_run(tmp_path / "imb")
    assert (run.cells.status == "done").all()
    runner = Runner(load_suite(path), tmp_path / "imb")
    runner.prepare()
    mtl = create_formulation("mtl")
    for r in run.cells.itertuples():
        train = runner.splits.folds[r.fold][0]
        y = runner.dataset.labels[train]
        res = run.result(r.key)
        if r.formulation == "logit_adjusted":  # the priors of this fold's training images, stored with the cell
            np.testing.assert_allclose(res.formulation_options["priors"], np.bincount(y, minlength=4) / len(y))
        if r.formulation in ("softmax+ft",):
            assert res.class_weights is None  # the control: stage 2 without weights
            continue
        if r.formulation == "mtl+drw":
            beta, tasks = 0.99, mtl.tasks
        elif r.formulation == "softmax+drw":
            beta, tasks = 0.999, {"mes": None}
        else:  # stage 1 of every cell: training.class_weights effective_number, β 0.9
            beta = 0.9
            tasks = mtl.tasks if r.formulation == "mtl" else {"mes": None}
        assert set(res.class_weights) == set(tasks)
        for name, task in tasks.items():
            t = y if task is None else task.target(y)
            t = t[t >= 0]
            n = np.bincount(t, minlength=len(res.class_weights[name]))
            raw = np.where(n > 0, (1 - beta) / (1 - beta ** np.maximum(n, 1)), 0)
            np.testing.assert_allclose(res.class_weights[name], raw / raw[n > 0].mean(), rtol=1e-6)
    t4 = __import__("reports.sections.finetune", fromlist=["finetune_comparisons"]).finetune_comparisons(run)
    assert ("softmax+ft", "softmax+drw", "effective-number re-weighting alone") in t4


def test_the_imbalance_smoke_suite_runs_and_table_4_separates_the_weights(tmp_path, capsys):
    out = tmp_path / "imb-smoke"
    args = ["--only", "fold=0", "--set", "training.epochs=1", "--set", "training.finetune_epochs=1",
            "--set", "dataset.params.size=[32, 32]", "--set", "dataset.params.n_images=240"]  # fmt: skip
    assert main(["run", "suites/imbalance-smoke.yaml", "--out", str(out), "--quiet", *args]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    md = capsys.readouterr().out
    table4 = md.split("## Table 4")[1].split("\n## ")[0]
    assert "| mtl → mtl+drw | effective-number re-weighting + extra training |" in table4.replace("| tiny ", "")
    assert "| mtl+ft → mtl+drw | effective-number re-weighting alone |" in table4.replace("| tiny ", "")
    assert "| mtl+drw → mtl+f1 ‡ | inverse-F1 vs effective-number weights |" in table4.replace("| tiny ", "")
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    assert "| tiny | focal †" in table1 and "| tiny | logit_adjusted †" in table1  # † : fold 0 of 2 only
