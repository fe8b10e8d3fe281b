"""Inverse-F1 re-weighting for the generic fine-tuning stage (`finetune: inverse_f1`).

After stage 1, the class-wise F1 on the fold's validation data gives w_c ∝ 1 / max(F1_c, ε),
normalised to mean 1: the weakest classes weigh most in the fine-tuning loss.
"""

import numpy as np


def inverse_f1_weights(f1, eps=1e-3):
    w = 1.0 / np.maximum(np.asarray(f1, dtype=float), eps)
    return w / w.mean()


def inverse_f1_task_weights(per_task_f1, eps=1e-3):
    """α, β, γ ∝ 1 / macro-F1 of each task, normalised to sum 1."""
    w = 1.0 / np.maximum([float(np.mean(f)) for f in per_task_f1], eps)
    return w / w.sum()
