"""Per-cell metrics, computed with scikit-learn with the label set fixed, as long-format rows.

A row is (task, metric, cls, value): task `mes` (4-class grade), `ra` (remission MES 0–1 vs active
MES 2–3, active positive) and, for multi-task formulations, each head's task on its valid samples.
`cls` is '' for whole-task values, 'macro' for macro averages, or a class index.
A metric is named `[task.]metric[@cls]`, e.g. `accuracy`, `f1@3`, `f1@macro`, `ra.f1`, `primary.accuracy`.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, mean_absolute_error,
                             precision_recall_fscore_support)

from .errors import BenchError, closest

ALIASES = {"macro_f1": "f1@macro", "qwk": "qwk", "mae": "mae", "kappa": "kappa", "accuracy": "accuracy",
           "macro_recall": "recall@macro", "macro_precision": "precision@macro"}


def per_class_rows(y_true, y_pred, labels, task):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    negatives = cm.sum() - cm.sum(1)
    spec = np.divide(tn, negatives, out=np.zeros(len(labels)), where=negatives > 0)
    rows = [(task, "accuracy", "", accuracy_score(y_true, y_pred) if len(y_true) else 0.0)]
    for name, vals in (("precision", p), ("recall", r), ("f1", f), ("specificity", spec), ("support", s)):
        for k, v in enumerate(vals):
            rows.append((task, name, str(k), float(v)))
        if name != "support":
            rows.append((task, name, "macro", float(np.mean(vals))))
    if len(y_true) and len(set(y_true.tolist()) | set(y_pred.tolist())) > 1:
        kappa = cohen_kappa_score(y_true, y_pred, labels=labels)
    else:
        kappa = 0.0  # undefined (one label only): no agreement beyond chance to report
    rows.append((task, "kappa", "", float(kappa)))
    return rows, cm


def binary_rows(y_true, y_pred, task):
    """Binary task, class 1 positive: accuracy, precision, recall, F1, specificity, kappa."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=[1], average="binary", pos_label=1,
                                                 zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1])
    tn, fp = cm[0]
    spec = tn / (tn + fp) if tn + fp else 0.0
    kappa = cohen_kappa_score(y_true, y_pred, labels=[0, 1]) if len(set(y_true) | set(y_pred)) > 1 else 0.0
    return [(task, "accuracy", "", float(accuracy_score(y_true, y_pred))), (task, "precision", "", float(p)),
            (task, "recall", "", float(r)), (task, "f1", "", float(f)), (task, "specificity", "", float(spec)),
            (task, "kappa", "", float(kappa))]


def grade_metrics(y_true, y_pred):
    """All MES metrics and the remission-vs-active ones; returns (rows, confusion matrix)."""
    labels = [0, 1, 2, 3]
    rows, cm = per_class_rows(y_true, y_pred, labels, "mes")
    rows.append(("mes", "qwk", "", float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels))
                 if len(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist())) > 1 else 0.0))
    rows.append(("mes", "mae", "", float(mean_absolute_error(y_true, y_pred))))
    rows += binary_rows(np.asarray(y_true) >= 2, np.asarray(y_pred) >= 2, "ra")
    return rows, cm


def task_metrics(task, y_task, pred_task, n_classes):
    """A head's own task on its valid samples (label ≥ 0)."""
    y_task, pred_task = np.asarray(y_task), np.asarray(pred_task)
    valid = y_task >= 0
    rows, _ = per_class_rows(y_task[valid], pred_task[valid], list(range(n_classes)), task)
    return rows


def parse_metric(name: str, known: set[tuple[str, str, str]] | None = None) -> tuple[str, str, str]:
    """'f1@3' -> ('mes', 'f1', '3'); 'ra.f1' -> ('ra', 'f1', ''); checks against known rows if given."""
    name = ALIASES.get(name, name)
    task, _, rest = name.rpartition(".")
    metric, _, cls = rest.partition("@")
    key = (task or "mes", metric, cls)
    if known is not None and key not in known:
        names = sorted({metric_name(*k) for k in known})
        raise BenchError(f"Unknown metric {name!r}: {closest(name, names)}.")
    return key


def metric_name(task, metric, cls):
    return ("" if task == "mes" else f"{task}.") + metric + (f"@{cls}" if cls else "")
