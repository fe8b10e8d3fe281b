"""Regression with thresholds (Polat et al., 2023): Linear(d, 1), MSE on the grade, fixed cut points.

Decoding: grade = number of cut points at or below the score, so a score exactly on a cut point goes
to the higher grade. With `tune_cutpoints: true` the cut points are fitted on the fold's validation
outputs to maximise `cutpoint_metric`; the harness then cross-fits the validation metrics (fit on one
half, score the other) and decodes the test set with the whole-fold fit. A fold-ensemble averages the
scores and decodes them with the mean of the fold models' cut points.
"""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from benchmark.errors import BenchError
from benchmark.metrics import SCALARS

from .base import Formulation, weighted_mean
from .registry import register_formulation

DEFAULT_CUTPOINTS = (0.5, 1.5, 2.5)  # MES's four grades; on K grades: 0.5, 1.5, …, K − 1.5


def default_cutpoints(k: int) -> list[float]:
    return [g + 0.5 for g in range(k - 1)]


class RegressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tune_cutpoints: bool = False
    cutpoint_metric: Literal["qwk", "macro_f1", "accuracy"] = "qwk"
    cutpoints: list[float] | None = None  # None: halfway between grades, 0.5 … K − 1.5

    @field_validator("cutpoints")
    @classmethod
    def _increasing(cls, v):
        if v is not None and (sorted(v) != v or not all(np.isfinite(v))):
            raise ValueError(
                f"cutpoints must be increasing finite numbers, one fewer than the grades (got {v!r}); the "
                f"default is halfway between grades, {list(DEFAULT_CUTPOINTS)} on MES"
            )
        return v


def decode_scores(scores, cutpoints):
    """Grade = count of cut points <= score (ties go up)."""
    return np.searchsorted(np.asarray(cutpoints, float), np.asarray(scores, float), side="right")


def fit_cutpoints(scores, y, metric="qwk", passes=3, num_classes=len(DEFAULT_CUTPOINTS) + 1):
    """Coordinate search over candidate cut points (score quantiles), keeping them increasing."""
    labels = tuple(range(num_classes))

    def score_fn(y_true, y_pred):
        return SCALARS[metric](y_true, y_pred, labels=labels)

    scores, y = np.asarray(scores, float), np.asarray(y)
    cuts = np.array(default_cutpoints(num_classes), float)
    grid = np.unique(np.quantile(scores, np.linspace(0, 1, 101)))
    best = score_fn(y, decode_scores(scores, cuts))
    for _ in range(passes):
        improved = False
        for k in range(len(cuts)):
            lo = cuts[k - 1] if k > 0 else -np.inf
            hi = cuts[k + 1] if k + 1 < len(cuts) else np.inf
            for c in grid[(grid > lo) & (grid < hi)]:
                trial = cuts.copy()
                trial[k] = c
                val = score_fn(y, decode_scores(scores, trial))
                if val > best + 1e-12:
                    best, cuts, improved = val, trial, True
        if not improved:
            break
    return cuts.tolist(), float(best)


@register_formulation
class Regression(Formulation):
    name = "regression"
    description = "Linear(d, 1), MSE on the grade, cut points 0.5/1.5/2.5 (optionally tuned on validation)"
    reference_text = "Polat et al., 2023 (regression with fixed thresholds)"
    Options = RegressionOptions
    output_names = ("score",)
    ensemble_text = "mean score, decoded with the mean of the fold models' cut points"

    def check_scale(self):
        cuts = self.options["cutpoints"]
        if cuts is None:
            self.options["cutpoints"] = default_cutpoints(self.num_classes)
        elif len(cuts) != self.num_classes - 1:
            raise BenchError(
                f"formulation 'regression': option 'cutpoints' has {len(cuts)} cut points, but a scale of "
                f"{self.num_classes} grades needs {self.num_classes - 1} (e.g. {default_cutpoints(self.num_classes)})."
            )

    def head(self, d):
        from torch import nn

        return nn.Linear(d, 1)

    def loss(self, out, y, weights=None):
        import torch.nn.functional as F

        per = F.mse_loss(out.squeeze(1).float(), y.float(), reduction="none")
        return weighted_mean(per, y, None if weights is None else weights["mes"])

    def outputs(self, out):
        return out.float().reshape(-1, 1)

    def predict(self, outputs, state):
        return decode_scores(outputs[:, 0], state["cutpoints"])

    def score(self, outputs):
        return outputs[:, 0]

    def score_thresholds(self, state):
        return list(state["cutpoints"])

    def initial_state(self):
        return {"cutpoints": [float(c) for c in self.options["cutpoints"]]}

    @property
    def fits_decoding(self):
        return bool(self.options["tune_cutpoints"])

    def fit_decoding(self, outputs, y):
        if not self.fits_decoding:
            return self.initial_state()
        cuts, value = fit_cutpoints(outputs[:, 0], y, self.options["cutpoint_metric"], num_classes=self.num_classes)
        return {"cutpoints": cuts, "cutpoint_fit": {"metric": self.options["cutpoint_metric"], "value": value}}

    def combine_states(self, states):
        if not states:
            return self.initial_state()
        return {"cutpoints": np.mean([s["cutpoints"] for s in states], axis=0).tolist()}

    def gradcam_class(self, pred):
        return [0] * len(pred)

    def example_outputs(self, grades, confidence=0.8):
        return (np.asarray(grades, float) + (1 - confidence) * 0.5 * np.cos(np.arange(len(grades))))[:, None]
