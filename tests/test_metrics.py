"""Every metric equals scikit-learn's (or a hand count) on the same predictions, label set fixed to 0..3."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
)

from benchmark.errors import BenchError
from benchmark.metrics import grade_metrics, parse_metric, task_metrics


def as_dict(rows):
    return {(t, m, c): v for t, m, c, v in rows}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grade_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    p = np.clip(y + rng.integers(-1, 2, 200) * (rng.random(200) < 0.4), 0, 3)
    rows, cm = grade_metrics(y, p)
    d = as_dict(rows)
    rep = classification_report(y, p, labels=[0, 1, 2, 3], output_dict=True, zero_division=0)
    assert d[("mes", "accuracy", "")] == pytest.approx(accuracy_score(y, p))
    for k in range(4):
        assert d[("mes", "precision", str(k))] == pytest.approx(rep[str(k)]["precision"])
        assert d[("mes", "recall", str(k))] == pytest.approx(rep[str(k)]["recall"])
        assert d[("mes", "f1", str(k))] == pytest.approx(rep[str(k)]["f1-score"])
        assert d[("mes", "support", str(k))] == rep[str(k)]["support"]
        # specificity = recall of "not k" (an independent route through sklearn)
        assert d[("mes", "specificity", str(k))] == pytest.approx(recall_score(y != k, p != k))
    assert d[("mes", "f1", "macro")] == pytest.approx(rep["macro avg"]["f1-score"])
    assert d[("mes", "qwk", "")] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert d[("mes", "kappa", "")] == pytest.approx(cohen_kappa_score(y, p))
    assert d[("mes", "mae", "")] == pytest.approx(mean_absolute_error(y, p))
    assert np.array_equal(cm, confusion_matrix(y, p, labels=[0, 1, 2, 3]))
    ya, pa = y >= 2, p >= 2
    assert d[("ra", "f1", "")] == pytest.approx(f1_score(ya, pa))
    assert d[("ra", "precision", "")] == pytest.approx(precision_score(ya, pa))
    assert d[("ra", "recall", "")] == pytest.approx(recall_score(ya, pa))
    assert d[("ra", "specificity", "")] == pytest.approx(recall_score(~ya, ~pa))
    assert d[("ra", "kappa", "")] == pytest.approx(cohen_kappa_score(ya, pa))


def test_missing_class_does_not_shift_per_class_values():
    y = np.array([0, 0, 1, 1, 3, 3])  # no MES 2 at all
    p = np.array([0, 1, 1, 1, 3, 2])
    d = as_dict(grade_metrics(y, p)[0])
    assert d[("mes", "support", "2")] == 0
    assert d[("mes", "recall", "3")] == pytest.approx(0.5)
    assert d[("mes", "f1", "macro")] == pytest.approx(
        f1_score(y, p, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )
    assert d[("mes", "precision", "2")] == 0.0


def test_task_metrics_use_valid_samples_only():
    y = np.array([0, 1, -1, -1, 1, 0])
    p = np.array([0, 1, 1, 0, 0, 0])
    d = as_dict(task_metrics("remission", y, p, 2))
    valid = y >= 0
    assert d[("remission", "accuracy", "")] == pytest.approx(accuracy_score(y[valid], p[valid]))
    assert d[("remission", "support", "0")] + d[("remission", "support", "1")] == valid.sum()


def test_metric_names_parse_and_unknown_names_suggest():
    assert parse_metric("macro_f1") == ("mes", "f1", "macro")
    assert parse_metric("f1@3") == ("mes", "f1", "3")
    assert parse_metric("ra.f1") == ("ra", "f1", "")
    known = {("mes", "f1", "macro"), ("mes", "accuracy", "")}
    with pytest.raises(BenchError, match="accuracy"):
        parse_metric("acuracy", known)
