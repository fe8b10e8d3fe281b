"""The one metrics catalogue: per-epoch monitoring, cut-point fitting, tuning and final evaluation all
compute through these functions (scikit-learn, with the label set fixed).

A row is (task, metric, cls, value): task `mes` (the grade on the run's scale, K classes), `ra` (the scale's
binary split: on MES remission 0–1 vs active 2–3, active positive; absent on a scale without one) and, for
multi-task formulations, each head's task on its valid samples. Every function takes the scale (MES by default).
`cls` is '' for whole-task values, 'macro' for macro averages, or a class index.
A metric is named `[task.]metric[@cls]`, e.g. `accuracy`, `f1@3`, `f1@macro`, `ra.f1`, `primary.accuracy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BenchError, closest
from .labels import MES, Scale

ALIASES = {
    "macro_f1": "f1@macro",
    "qwk": "qwk",
    "mae": "mae",
    "kappa": "kappa",
    "accuracy": "accuracy",
    "macro_recall": "recall@macro",
    "macro_precision": "precision@macro",
}
LOWER_IS_BETTER = {"mae", "amae", "mmae", "rps", "ece"}
COUNTS = {"support"}  # neither better higher nor lower
# What each metric a run stores is, for `bench list` and the generated reference (tests/test_docs.py checks that
# every metric a formulation produces is described here).
DESCRIPTIONS = {
    "accuracy": "share of images whose predicted grade is the true one",
    "precision": "per class (cls = its index) and their macro mean (cls = macro): TP / (TP + FP), 0 when undefined",
    "recall": "per class and macro: TP / (TP + FN), the class's sensitivity",
    "specificity": "per class and macro: TN / (TN + FP)",
    "f1": "per class and macro: harmonic mean of precision and recall; macro-F1 is the tables' headline",
    "support": "per class: the number of true images of the class",
    "kappa": "Cohen's κ, unweighted (sklearn cohen_kappa_score)",
    "qwk": "quadratically weighted κ between true and predicted grades (0 when a single label is on both sides)",
    "mae": "mean absolute error in grades, |ŷ − y|",
    "amae": "average MAE over the true grades (each grade weighs the same)",
    "mmae": "maximum over the true grades of their MAE",
    "rps": "ranked probability score: mean over images of Σ_k (CDF_pred(k) − CDF_true(k))²",
    "ece": "expected calibration error of the top-class confidence, 10 equal-width bins on [0, 1]",
    "auc": "per class one-vs-rest ROC AUC and their macro mean (formulations with probabilities)",
}


def _sk() -> Any:
    """scikit-learn's metrics, imported on first use: `bench list`, `--help` and suite errors stay fast."""
    import sklearn.metrics

    return sklearn.metrics


def _trusted() -> Any:
    """scikit-learn without its per-call argument validation and finiteness scans: for the label arrays made here
    they cost more than the metrics themselves (0.13 s of every prediction set's rows, most of a report-sized store's
    writing). The metrics are sklearn's own either way."""
    import sklearn

    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)


def _two_labels(y_true, y_pred) -> bool:
    return len(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist())) > 1


def accuracy(y_true, y_pred, labels=None) -> float:  # labels: accepted so that every SCALARS entry takes them
    return float(_sk().accuracy_score(y_true, y_pred)) if len(y_true) else 0.0


def macro_f1(y_true, y_pred, labels=MES.grades) -> float:
    return float(_sk().f1_score(y_true, y_pred, average="macro", labels=list(labels), zero_division=0))


def qwk(y_true, y_pred, labels=MES.grades) -> float:
    """Quadratic weighted kappa; 0 when undefined (a single label on both sides)."""
    if not _two_labels(y_true, y_pred):
        return 0.0
    return float(_sk().cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(labels)))


# Scalar grade metrics by name: what `cutpoint_metric` and `--metric` shorthands select.
SCALARS = {"accuracy": accuracy, "macro_f1": macro_f1, "qwk": qwk}


def monitor_values(y_true, y_pred, scale: Scale = MES) -> dict[str, float]:
    """The per-epoch validation values of the training history (and of `training.monitor`)."""
    with _trusted():
        return {f"val_{name}": fn(y_true, y_pred, labels=scale.grades) for name, fn in SCALARS.items()}


def per_class_rows(y_true, y_pred, labels, task, absent_undefined: bool = False):
    """Per-class precision, recall, F1, specificity and support with their macro means, accuracy and kappa.
    `absent_undefined`: a class with no true image has no recall or F1 (no row; macro over the classes present),
    as on an external test set that lacks a grade — never a 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = _sk().precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = _sk().confusion_matrix(y_true, y_pred, labels=labels)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    negatives = cm.sum() - cm.sum(1)
    spec = np.divide(tn, negatives, out=np.zeros(len(labels)), where=negatives > 0)
    rows = [(task, "accuracy", "", accuracy(y_true, y_pred))]
    for name, vals in (("precision", p), ("recall", r), ("f1", f), ("specificity", spec), ("support", s)):
        keep = s > 0 if absent_undefined and name in ("recall", "f1") else np.ones(len(vals), bool)
        for k, v in enumerate(vals):
            if keep[k]:
                rows.append((task, name, str(k), float(v)))
        if name != "support" and keep.any():
            rows.append((task, name, "macro", float(np.mean(vals[keep]))))
    # undefined with one label only: no agreement beyond chance to report
    kappa = (
        _sk().cohen_kappa_score(y_true, y_pred, labels=labels) if len(y_true) and _two_labels(y_true, y_pred) else 0.0
    )
    rows.append((task, "kappa", "", float(kappa)))
    return rows, cm


def binary_rows(y_true, y_pred, task):
    """Binary task, class 1 positive: accuracy, precision, recall, F1, specificity, kappa."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, _ = _sk().precision_recall_fscore_support(
        y_true, y_pred, labels=[1], average="binary", pos_label=1, zero_division=0
    )
    cm = _sk().confusion_matrix(y_true, y_pred, labels=[0, 1])
    tn, fp = cm[0]
    spec = tn / (tn + fp) if tn + fp else 0.0
    kappa = _sk().cohen_kappa_score(y_true, y_pred, labels=[0, 1]) if _two_labels(y_true, y_pred) else 0.0
    return [
        (task, "accuracy", "", accuracy(y_true, y_pred)),
        (task, "precision", "", float(p)),
        (task, "recall", "", float(r)),
        (task, "f1", "", float(f)),
        (task, "specificity", "", float(spec)),
        (task, "kappa", "", float(kappa)),
    ]


def per_class_mae(y_true, y_pred, labels=MES.grades) -> list[float]:
    """MAE within each grade present in y_true: the pieces of AMAE (mean) and MMAE (max)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return [float(np.abs(y_pred[y_true == k] - k).mean()) for k in labels if np.any(y_true == k)]


def rps(y_true, proba) -> float:
    """Ranked probability score: mean over images of Σ_k (CDF_pred(k) − CDF_true(k))²."""
    proba = np.asarray(proba, float)
    onehot = np.eye(proba.shape[1])[np.asarray(y_true)]
    return float(((np.cumsum(proba, 1) - np.cumsum(onehot, 1)) ** 2).sum(1).mean())


def ece(y_true, proba, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins on [0, 1]."""
    proba = np.asarray(proba, float)
    conf, pred = proba.max(1), proba.argmax(1)
    correct = (pred == np.asarray(y_true)).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


T_BOUNDS = (0.05, 20.0)


def with_temperature(proba, t: float) -> np.ndarray:
    logp = np.log(np.clip(np.asarray(proba, float), 1e-12, 1.0)) / t
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    out: np.ndarray = p / p.sum(1, keepdims=True)
    return out


def nll(y, proba, t: float) -> float:
    p = with_temperature(proba, t)
    return float(-np.log(np.clip(p[np.arange(len(p)), np.asarray(y)], 1e-12, None)).mean())


def fit_temperature(y, proba) -> float:
    """The temperature minimising the validation NLL (a bounded 1-D search over log T: NLL is smooth in it)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: nll(y, proba, float(np.exp(log_t))), bounds=np.log(T_BOUNDS), method="bounded",
        options={"xatol": 1e-6},
    )  # fmt: skip
    return float(np.exp(res.x))


def probability_rows(y_true, proba, scale: Scale = MES):
    """Metrics of the class probabilities themselves: RPS, ECE, one-vs-rest ROC AUC per grade (where the grade
    and its complement both occur) and their mean, and the binary split's AUC with P(positive) = Σ P(k ≥ cut)
    (MES: P(active) = P(2) + P(3))."""
    from sklearn.metrics import roc_auc_score

    y_true, proba = np.asarray(y_true), np.asarray(proba, float)
    rows = [("mes", "rps", "", rps(y_true, proba)), ("mes", "ece", "", ece(y_true, proba))]
    aucs = []
    for k in scale.grades:
        positive = y_true == k
        if positive.any() and not positive.all():
            aucs.append(float(roc_auc_score(positive, proba[:, k])))
            rows.append(("mes", "auc", str(k), aucs[-1]))
    if aucs:
        rows.append(("mes", "auc", "macro", float(np.mean(aucs))))
    if scale.binary_cut is None:
        return rows
    active = y_true >= scale.binary_cut
    if active.any() and not active.all():
        rows.append(("ra", "auc", "", float(roc_auc_score(active, proba[:, scale.binary_cut :].sum(1)))))
    return rows


def grade_metrics(y_true, y_pred, scale: Scale = MES, absent_undefined: bool = False):
    """All grade metrics and those of the scale's binary split; returns (rows, confusion matrix)."""
    labels = list(scale.grades)
    rows, cm = per_class_rows(y_true, y_pred, labels, "mes", absent_undefined)
    rows.append(("mes", "qwk", "", qwk(y_true, y_pred, labels)))
    rows.append(("mes", "mae", "", float(_sk().mean_absolute_error(y_true, y_pred))))
    maes = per_class_mae(y_true, y_pred, labels)
    rows.append(("mes", "amae", "", float(np.mean(maes)) if maes else 0.0))
    rows.append(("mes", "mmae", "", float(np.max(maes)) if maes else 0.0))
    if scale.binary_cut is not None:
        cut = scale.binary_cut
        rows += binary_rows(np.asarray(y_true) >= cut, np.asarray(y_pred) >= cut, "ra")
    return rows, cm


def task_metrics(task, y_task, pred_task, n_classes, absent_undefined: bool = False):
    """A head's own task on its valid samples (label ≥ 0); no rows where it has none (an external set of
    remission images alone has no active sub-task to score: absent, never 0)."""
    y_task, pred_task = np.asarray(y_task), np.asarray(pred_task)
    valid = y_task >= 0
    if not valid.any():
        return []
    rows, _ = per_class_rows(y_task[valid], pred_task[valid], list(range(n_classes)), task, absent_undefined)
    return rows


def all_rows(y, pred, task_preds: dict, tasks: dict, proba=None, scale: Scale = MES, absent_undefined: bool = False):
    """Every metric row of one prediction set: the grade, the scale's binary split, each extra task, and the
    probability metrics where the formulation has class probabilities. `absent_undefined`: see per_class_rows."""
    with _trusted():
        rows, cm = grade_metrics(y, pred, scale, absent_undefined)
        if proba is not None:
            rows += probability_rows(y, proba, scale)
        for name, task in tasks.items():
            if name != "mes" and name in task_preds:
                target = task.target(np.asarray(y))
                rows += task_metrics(name, target, task_preds[name], len(task.classes), absent_undefined)
    return rows, cm


def known_metrics(tasks: dict, scale: Scale = MES) -> set[tuple[str, str, str]]:
    """Every (task, metric, cls) a formulation with these tasks produces."""
    y = np.array(scale.grades)
    heads = {name: np.arange(scale.k) % 2 for name in tasks}
    rows, _ = all_rows(y, y, heads, tasks, np.eye(scale.k), scale)
    return {(t, m, c) for t, m, c, _ in rows}


def metric_value(key, y, pred, task_preds, tasks, scale: Scale = MES) -> float:
    rows, _ = all_rows(y, pred, task_preds, tasks, scale=scale)
    for t, m, c, v in rows:
        if (t, m, c) == key:
            return float(v)
    raise BenchError(f"metric {metric_name(*key)} is not computed for these tasks ({', '.join(tasks)}).")


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
