"""Calibration of class probabilities: ECE (equal-width bins), adaptive ECE (equal-mass bins), the Brier score,
reliability curves, and temperature scaling (Guo et al. 2017) fitted on validation images only.

Temperature scaling acts on log-probabilities: p_T ∝ p^(1/T), which for a softmax head is exactly logits / T and
for CORAL/CORN/CLM rescales the log of their class probabilities. The argmax is unchanged; the confidence is not.
"""

from __future__ import annotations

import numpy as np

# the temperature itself is benchmark.metrics': the `calibration: temperature` decoding step fits it too
from benchmark.metrics import ece, fit_temperature, with_temperature

N_BINS = 10


def top_label(proba, y):
    proba = np.asarray(proba, float)
    return proba.max(1), (proba.argmax(1) == np.asarray(y)).astype(float)


def adaptive_ece(y, proba, n_bins: int = N_BINS) -> float:
    """ECE with equal-mass bins of the top-class confidence (Nguyen & O'Connor 2015): the images sorted by
    confidence, split into n_bins groups as equal as possible."""
    conf, correct = top_label(proba, y)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for idx in np.array_split(order, min(n_bins, len(order))):
        if len(idx):
            total += len(idx) / len(conf) * abs(correct[idx].mean() - conf[idx].mean())
    return float(total)


def brier(y, proba) -> float:
    """Multi-class Brier score: mean over images of Σ_k (p_k − 1[y = k])² (0 best, 2 worst)."""
    proba = np.asarray(proba, float)
    onehot = np.eye(proba.shape[1])[np.asarray(y)]
    return float(((proba - onehot) ** 2).sum(1).mean())


def reliability_curve(y, proba, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass bins of the top-class confidence: (mean confidence, accuracy, images) per bin."""
    conf, correct = top_label(proba, y)
    order = np.argsort(conf, kind="stable")
    bins = [idx for idx in np.array_split(order, min(n_bins, len(order))) if len(idx)]
    return (
        np.array([conf[i].mean() for i in bins]),
        np.array([correct[i].mean() for i in bins]),
        np.array([len(i) for i in bins]),
    )


def cross_fitted_temperature(y, proba, seed: int = 0, groups=None) -> tuple[np.ndarray, list[float]]:
    """Validation probabilities after temperature scaling, never scored on the images T was fitted on: two halves
    (stratified by grade where every grade has two images; with `groups`, each patient's images in one half, as
    `calibration: temperature` and the cut points split them), each scaled with the T fitted on the other. Returns
    the scaled probabilities and the two temperatures."""
    import warnings

    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    y, proba = np.asarray(y), np.asarray(proba, float)
    counts = np.bincount(y)
    stratified = counts[counts > 0].min() >= 2
    if groups is not None and len(np.unique(groups)) >= 2:
        split = StratifiedGroupKFold(2, shuffle=True, random_state=seed) if stratified else GroupKFold(2)
    else:
        groups = None
        kind = StratifiedKFold if stratified else KFold
        split = kind(2, shuffle=True, random_state=seed)
    out = np.empty_like(proba)
    temps = []
    with warnings.catch_warnings():  # a rare grade with one patient per half is expected on small folds
        warnings.simplefilter("ignore", UserWarning)
        halves = list(split.split(proba, y, groups))
    for fit_idx, score_idx in halves:
        t = fit_temperature(y[fit_idx], proba[fit_idx])
        temps.append(t)
        out[score_idx] = with_temperature(proba[score_idx], t)
    return out, temps


def calibration_scores(y, proba) -> dict[str, float]:
    return {"ECE": ece(y, proba, N_BINS), "adaptive ECE": adaptive_ece(y, proba), "Brier": brier(y, proba)}
