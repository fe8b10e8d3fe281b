"""Calibration of class probabilities: ECE (equal-width bins), adaptive ECE (equal-mass bins), the Brier score,
reliability curves, and temperature scaling (Guo et al. 2017) fitted on validation images only.

Temperature scaling acts on log-probabilities: p_T ∝ p^(1/T), which for a softmax head is exactly logits / T and
for CORAL/CORN/CLM rescales the log of their class probabilities. The argmax is unchanged; the confidence is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# the temperature itself is benchmark.metrics': the `calibration: temperature` decoding step fits it too
from benchmark.metrics import ece, fit_temperature, with_temperature

from .load import Run

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


@dataclass
class CalibrationData:
    """Per cell: validation and test (image ids, grades, class probabilities), each split read from the store once
    (the test split only when a table or figure asks for it); cells of formulations without class probabilities are
    absent. The cross-fitted temperature scaling of a cell's validation images is computed once, for the table and
    the figures alike."""

    run: Run
    val: dict
    _test: dict | None = None
    _scaled: dict = field(default_factory=dict)

    @classmethod
    def load(cls, run: Run) -> CalibrationData:
        return cls(run, cls._read(run, "val"))

    @staticmethod
    def _read(run: Run, split: str) -> dict:
        out = {}
        columns = list(run.scale.proba_columns)
        frame = run.store.predictions_frame(split, ["key", "image_id", "y_true", *columns])
        for key, g in frame.groupby("key", sort=False):
            proba = g[columns].to_numpy(float)
            if not np.isnan(proba).any():
                out[key] = (g.image_id.to_numpy(), g.y_true.to_numpy(np.int64), proba)
        return out

    @property
    def test(self) -> dict:
        if self._test is None:
            self._test = self._read(self.run, "test")
        return self._test

    def patients(self, ids) -> np.ndarray | None:
        """The patient of each validation image, where the run recorded them (None: split by image)."""
        groups = self.run.meta.get("val_groups")
        if not groups or any(i not in groups for i in ids):
            return None
        return np.array([groups[i] for i in ids])

    @property
    def halves_unit(self) -> str:
        return "patient" if self.run.meta.get("val_groups") else "image"

    def cells(self, run: Run, b: str, f: str) -> list[str]:
        c = run.cells
        keys = c[(c.backbone == b) & (c.formulation == f) & (c.status == "done")].key
        return [k for k in keys if k in self.val]

    def pooled_val(self, keys, temperature: bool = False):
        """Every validation image of these cells (out-of-fold: each fold's model on its own validation part); with
        `temperature`, each cell's probabilities cross-fitted-scaled on its own validation images."""

        ys, ps = [], []
        for k in keys:
            ids, y, p = self.val[k]
            if temperature:
                if k not in self._scaled:
                    self._scaled[k] = cross_fitted_temperature(y, p, groups=self.patients(ids))[0]
                p = self._scaled[k]
            ys.append(y)
            ps.append(p)
        return np.concatenate(ys), np.concatenate(ps)

    def test_ensemble(self, keys, temperatures: dict | None = None):
        """Fold-ensemble class probabilities on the test images every cell predicted: the mean of the fold models'
        probabilities (each scaled by its own validation temperature when given)."""

        keys = [k for k in keys if k in self.test]
        if not keys:
            return None
        frames = []
        for k in keys:
            ids, y, p = self.test[k]
            if temperatures is not None:
                p = with_temperature(p, temperatures[k])
            frames.append(pd.DataFrame(p, index=ids).assign(_y=y))
        common = frames[0].index
        for fr in frames[1:]:
            common = common.intersection(fr.index)
        y = frames[0].loc[common, "_y"].to_numpy(np.int64)
        mean = np.mean([fr.loc[common].drop(columns="_y").to_numpy() for fr in frames], axis=0)
        return y, mean
