"""Calibration: ECE, adaptive ECE, Brier and temperature scaling, each against an independent implementation
(torchmetrics, scikit-learn, a direct scipy minimisation of the NLL over logits), and Table 8 and the reliability
figures against what they read: validation cross-fitted, test never fitted on."""

import numpy as np
import pandas as pd
import pytest
import torch
from fake_run import write_fake_run
from scipy.special import softmax

from benchmark.cli import main
from benchmark.labels import MES
from reports.calibration import (
    CalibrationData,
    adaptive_ece,
    brier,
    cross_fitted_temperature,
    fit_temperature,
    reliability_curve,
    with_temperature,
)
from reports.load import load_run
from reports.render import build, to_html, to_latex, to_markdown
from reports.sections.calibration import calibration_table
from reports.table import Options


def overconfident(n=2000, k=4, scale=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(scale · z): overconfident by `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])
    return y, z * scale


def test_ece_equals_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    from benchmark.metrics import ece

    y, logits = overconfident()
    proba = softmax(logits, axis=1)
    ref = multiclass_calibration_error(torch.tensor(proba), torch.tensor(y), num_classes=4, n_bins=10, norm="l1")
    assert ece(y, proba, 10) == pytest.approx(float(ref), abs=1e-6)


def test_adaptive_ece_and_reliability_bins_by_hand():
    y, logits = overconfident(n=1003)
    proba = softmax(logits, axis=1)
    conf, correct = proba.max(1), (proba.argmax(1) == y)
    frame = pd.DataFrame({"conf": conf, "ok": correct}).sort_values("conf", kind="stable").reset_index(drop=True)
    sizes = [101, 101, 101, 100, 100, 100, 100, 100, 100, 100]  # 1003 images in 10 bins as equal as possible
    frame["bin"] = np.repeat(np.arange(10), sizes)
    g = frame.groupby("bin")
    by_hand = float((g.size() / len(frame) * (g.ok.mean() - g.conf.mean()).abs()).sum())
    assert adaptive_ece(y, proba) == pytest.approx(by_hand, abs=1e-12)
    mean_conf, acc, n = reliability_curve(y, proba)
    np.testing.assert_allclose(mean_conf, g.conf.mean().to_numpy())
    np.testing.assert_allclose(acc, g.ok.mean().to_numpy())
    assert n.tolist() == sizes
    assert adaptive_ece(y, proba) > 0.05  # overconfident: visibly miscalibrated


def test_brier_equals_scikit_learn():
    from sklearn.metrics import brier_score_loss

    y, logits = overconfident(n=500)
    proba = softmax(logits, axis=1)
    # scikit-learn's multi-class Brier is the same sum over classes, averaged over samples
    assert brier(y, proba) == pytest.approx(brier_score_loss(y, proba, labels=[0, 1, 2, 3]), abs=1e-12)


def test_fitted_temperature_equals_a_direct_nll_minimisation_over_logits():
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    y, logits = overconfident(scale=3.0)

    def nll(t):
        return -log_softmax(logits / t[0], axis=1)[np.arange(len(y)), y].mean()

    direct = minimize(nll, x0=[1.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12}).x[0]
    ours = fit_temperature(y, softmax(logits, axis=1))  # from probabilities, as stored
    assert ours == pytest.approx(direct, rel=1e-4)
    assert 2.5 < ours < 3.5  # the overconfidence put in
    # scaling by T is logits / T for a softmax head, and it leaves the argmax alone
    np.testing.assert_allclose(
        with_temperature(softmax(logits, axis=1), ours), softmax(logits / ours, axis=1), atol=1e-9
    )
    assert (with_temperature(softmax(logits, axis=1), ours).argmax(1) == logits.argmax(1)).all()
    from benchmark.metrics import ece

    assert ece(y, with_temperature(softmax(logits, axis=1), ours)) < ece(y, softmax(logits, axis=1)) / 2


def test_cross_fitting_never_scores_the_images_it_fitted_on():
    from sklearn.model_selection import StratifiedKFold

    y, logits = overconfident(n=400)
    proba = softmax(logits, axis=1)
    scaled, temps = cross_fitted_temperature(y, proba)
    halves = list(StratifiedKFold(2, shuffle=True, random_state=0).split(proba, y))
    for (fit_idx, score_idx), t in zip(halves, temps):
        assert t == pytest.approx(fit_temperature(y[fit_idx], proba[fit_idx]))
        np.testing.assert_allclose(scaled[score_idx], with_temperature(proba[score_idx], t))


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_calibration")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = write_fake_run(
        tmp_path_factory.mktemp("calib") / "run",
        backbones=("resnet18", "densenet121"),
        formulations=("softmax", "coral", "regression"),
        folds=3,
        n_val=150,
        n_test=90,
        val_predictions=True,
    )
    return load_run(path)


def test_table_8_numbers_recomputed_from_the_stored_predictions(run):
    from benchmark.metrics import ece

    t = calibration_table(run, Options(), CalibrationData.load(run))
    rows = {(r[0], r[1]): r for r in t.rows}
    assert ("resnet18", "regression") not in rows  # no class probabilities: said in a note, not a row
    assert any("no class probabilities" in n and "regression" in n for n in t.notes)
    val = run.store.predictions_frame("val", ["key", "image_id", "y_true", *MES.proba_columns])
    test = run.store.predictions_frame("test", ["key", "image_id", "y_true", *MES.proba_columns])
    cells = run.cells
    for b in run.backbones:
        for f in ("softmax", "coral"):
            keys = cells[(cells.backbone == b) & (cells.formulation == f)].key.tolist()
            v = val[val.key.isin(keys)]
            before = ece(v.y_true.to_numpy(), v[list(MES.proba_columns)].to_numpy())
            assert rows[b, f][3].split(" → ")[0] == f"{before:.3f}"
            temps = {
                k: fit_temperature(g.y_true.to_numpy(), g[list(MES.proba_columns)].to_numpy())
                for k, g in v.groupby("key")
            }
            assert rows[b, f][2] == f"{np.median(list(temps.values())):.2f}"
            te = test[test.key.isin(keys)]
            mean = te.groupby("image_id")[list(MES.proba_columns)].mean()
            y = te.groupby("image_id").y_true.first().loc[mean.index].to_numpy()
            assert rows[b, f][6].split(" → ")[0] == f"{ece(y, mean.to_numpy()):.3f}"
            scaled = np.mean(
                [with_temperature(g.set_index("image_id").loc[mean.index, list(MES.proba_columns)].to_numpy(), temps[k])
                 for k, g in te.groupby("key")], axis=0,
            )  # fmt: skip
            assert rows[b, f][6].split(" → ")[1] == f"{ece(y, scaled):.3f}"
            assert rows[b, f][8].split(" → ")[0] == f"{brier(y, mean.to_numpy()):.3f}"


def test_the_test_labels_fit_nothing(run, monkeypatch):
    data = CalibrationData.load(run)
    before = calibration_table(run, Options(), data)
    for key, (ids, y, p) in list(data.test.items()):
        data.test[key] = (ids, (y + 1) % 4, p)  # every test label changed
    after = calibration_table(run, Options(), data)
    for r0, r1 in zip(before.rows, after.rows):
        assert r0[:6] == r1[:6]  # T and every validation number: unchanged
        assert r0[6:] != r1[6:]


def test_default_report_and_figure_files(run, tmp_path):
    rep = build(run, Options())
    assert any(t.title.startswith("Table 8 — calibration") for t in rep.tables)
    for text in (to_markdown(rep), to_html(rep), to_latex(rep)):
        assert "Table 8" in text and "temperature scaling" in text
    assert main(["report", str(run.path), "--figures-only", "-o", str(tmp_path / "f")]) == 0
    written = sorted(p.name for p in (tmp_path / "f").glob("reliability-*.png"))
    assert written == ["reliability-diagrams-densenet121.png", "reliability-diagrams-resnet18.png"]


def test_sensitivity_at_fixed_specificity_threshold_comes_from_validation(run):
    from reports.sections.operating_point import operating_points

    data = CalibrationData.load(run)
    t90 = operating_points(run, Options(specificity=0.9), data)
    t99 = operating_points(run, Options(specificity=0.99), data)
    assert "specificity 0.9 " in t90.title and "specificity 0.99 " in t99.title
    keys = run.cells[(run.cells.backbone == "resnet18") & (run.cells.formulation == "softmax")].key
    yv, pv = data.pooled_val(list(keys))
    # by hand: every candidate threshold, the validation specificity and sensitivity of grade 3
    best = max(
        (((pv[yv == 3, 3] >= t).mean(), t) for t in np.unique(pv[:, 3]) if (pv[yv != 3, 3] < t).mean() >= 0.9),
    )
    row = next(r for r in t90.rows if r[:2] == ["resnet18", "softmax"])
    assert f"t = {best[1]:.3f}" in row[5]
    yt, pt = data.test_ensemble(list(keys))
    hit = pt[:, 3] >= best[1]
    assert row[5].startswith(f"{hit[yt == 3].mean():.3f} (spec {1 - hit[yt != 3].mean():.3f}")
    for key, (ids, y, p) in list(data.test.items()):
        data.test[key] = (ids, (y + 1) % 4, p)
    moved = operating_points(run, Options(specificity=0.9), data)
    thresholds = [[c.split("t = ")[1] for c in r[2:] if "t = " in c] for r in t90.rows]
    assert thresholds == [[c.split("t = ")[1] for c in r[2:] if "t = " in c] for r in moved.rows]


# ---------------------------------------------------------------------------- calibration: temperature (a suite option)


def test_temperature_as_a_decoding_step_of_the_formulation():
    from formulations import create_formulation

    y, logits = overconfident(n=600, scale=3.0)
    proba = softmax(logits, axis=1)
    plain = create_formulation("softmax", {"decoding": "expectation"})
    scaled = create_formulation("softmax", {"decoding": "expectation", "calibration": "temperature"})
    assert not plain.fits_decoding and scaled.fits_decoding
    state = scaled.fit_decoding(proba, y)
    assert state["temperature"] == pytest.approx(fit_temperature(y, proba))
    np.testing.assert_allclose(scaled.proba(proba, state), with_temperature(proba, state["temperature"]))
    # the expected grade moves with the temperature (the argmax could not), so the option changes a decoding
    assert (scaled.predict(proba, state) != plain.predict(proba, {})).any()
    argmax = create_formulation("softmax", {"calibration": "temperature"})
    assert (argmax.predict(proba, state) == proba.argmax(1)).all()
    # a fold-ensemble scales each fold model's probabilities by its own temperature before the mean
    stacked = np.stack([proba, proba[::-1]])
    states = [{"temperature": 2.0}, {"temperature": 0.5}]
    mean = (with_temperature(proba, 2.0) + with_temperature(proba[::-1], 0.5)) / 2
    from formulations.base import decode_probabilities

    np.testing.assert_array_equal(scaled.ensemble_predict(stacked, states), decode_probabilities(mean, "expectation"))


def test_a_run_with_calibration_temperature_stores_cross_fitted_validation_probabilities(make_suite, tmp_path):
    scaled = {"name": "softmax", "label": "softmax[T]", "options": {"calibration": "temperature"}}
    suite = make_suite(name="temp", formulations=["softmax", scaled])
    assert main(["run", str(suite), "--out", str(tmp_path / "temp"), "--quiet"]) == 0
    run = load_run(tmp_path / "temp")
    frame = run.store.predictions_frame(None, ["key", "split", "outputs", *MES.proba_columns])
    for key in run.cells[run.cells.formulation == "softmax[T]"].key:
        state = run.result(key).state
        whole, halves = state["temperature"], [h["temperature"] for h in state["cross_fit"]["halves"]]
        rows = frame[frame.key == key]
        for split, allowed in (("val", halves), ("test", [whole])):
            part = rows[rows.split == split]
            raw = np.stack([np.frombuffer(b, dtype=np.float64) for b in part.outputs])
            stored = part[list(MES.proba_columns)].to_numpy()
            # every image scaled by one of the temperatures it may see: on validation a half's, fitted on the
            # other half; never the whole-fold fit (which saw the image's own label) unless equal to one of them
            err = np.stack([np.abs(stored - with_temperature(raw, t)).max(1) for t in allowed]).min(0)
            assert err.max() < 1e-9, split
        if not any(np.isclose(whole, t) for t in halves):
            val = rows[rows.split == "val"]
            raw = np.stack([np.frombuffer(b, dtype=np.float64) for b in val.outputs])
            assert np.abs(val[list(MES.proba_columns)].to_numpy() - with_temperature(raw, whole)).max() > 1e-9
    t = calibration_table(run, Options(), CalibrationData.load(run))
    assert any("softmax[T]" in n and "already" in n for n in t.notes)
