"""Class weights of the losses: the fine-tuning stage's `finetune: inverse_f1` (re-weighted), `plain` (the control)
and `drw` (deferred re-weighting with effective-number weights), and stage 1's `training.class_weights`.

After stage 1, the class-wise F1 on the fold's validation data gives w_c ∝ 1 / max(F1_c, ε), capped at
`max_weight` × the smallest weight (an F1 of 0 would otherwise put ~all the loss on one class) and
normalised to mean 1: the weakest classes weigh most in the fine-tuning loss. `plain` runs the identical
stage 2 with no weights, so "+f1 vs +ft" isolates the re-weighting from the extra epochs.
"""

import numpy as np


def inverse_f1_weights(f1, eps=1e-3, max_weight=10.0):
    w = 1.0 / np.maximum(np.asarray(f1, dtype=float), eps)
    w = np.minimum(w, max_weight * w.min())
    return w / w.mean()


def inverse_f1_task_weights(per_task_f1, eps=1e-3):
    """α, β, γ ∝ 1 / macro-F1 of each task, normalised to sum 1."""
    w = 1.0 / np.maximum([float(np.mean(f)) for f in per_task_f1], eps)
    return w / w.sum()


def count_weights(counts, kind: str, beta: float = 0.999) -> np.ndarray:
    """Weights from a task's training class counts, normalised to mean 1 over the classes present (an absent class
    gets 0: it has no images to weigh). `inverse_frequency`: w_c ∝ 1/n_c. `effective_number` (Cui et al. 2019):
    w_c ∝ (1 − β) / (1 − β^n_c), which tends to inverse frequency as β → 1 and to equal weights as β → 0."""
    n = np.asarray(counts, dtype=float)
    present = n > 0
    w = np.zeros_like(n)
    if kind == "inverse_frequency":
        w[present] = 1.0 / n[present]
    elif kind == "effective_number":
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    else:
        raise ValueError(f"unknown class weighting {kind!r}")
    return w / w[present].mean()


def task_counts(formulation, labels) -> dict:
    """Per task of the formulation, the class counts of these (training) grades; images outside a task
    (label −1) are not counted."""
    y = np.asarray(labels)
    out = {}
    for name, task in formulation.tasks.items():
        t = task.target(y)
        out[name] = np.bincount(t[t >= 0], minlength=len(task.classes))
    return out
