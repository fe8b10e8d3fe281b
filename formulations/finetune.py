"""Weights for the generic fine-tuning stage: `finetune: inverse_f1` (re-weighted) or `plain` (the control).

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
