"""Regression with thresholds (Polat et al., 2023): Linear(d, 1), MSE on the grade, fixed cut points.

Decoding: grade = number of cut points at or below the score, so a score exactly on a cut point
goes to the higher grade. With `tune_cutpoints: true` the cut points are fitted on the fold's
validation predictions to maximise `cutpoint_metric`, then used unchanged on the test set.
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
from torch import nn

from benchmark.errors import BenchError

from . import register_formulation
from .base import Decoded, Formulation, weighted_mean

DEFAULT_CUTPOINTS = (0.5, 1.5, 2.5)
_METRICS = {
    "qwk": lambda y, p: cohen_kappa_score(y, p, weights="quadratic", labels=[0, 1, 2, 3]),
    "macro_f1": lambda y, p: f1_score(y, p, average="macro", labels=[0, 1, 2, 3], zero_division=0),
    "accuracy": accuracy_score,
}


def decode_scores(scores, cutpoints):
    """Grade = count of cut points <= score (ties go up). Works on numpy arrays and tensors."""
    if isinstance(scores, torch.Tensor):
        return torch.bucketize(scores, torch.as_tensor(cutpoints, dtype=scores.dtype, device=scores.device),
                               right=True)
    return np.searchsorted(np.asarray(cutpoints), np.asarray(scores), side="right")


def fit_cutpoints(scores, y, metric="qwk", passes=3):
    """Coordinate search over candidate cut points (score midpoints), keeping them increasing."""
    score_fn = _METRICS[metric]
    scores, y = np.asarray(scores, float), np.asarray(y)
    cuts = np.array(DEFAULT_CUTPOINTS, float)
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
    defaults = {"tune_cutpoints": False, "cutpoint_metric": "qwk", "cutpoints": list(DEFAULT_CUTPOINTS)}

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["cutpoint_metric"] not in _METRICS:
            raise BenchError(f"formulation 'regression': cutpoint_metric {self.options['cutpoint_metric']!r} is not "
                             f"one of {sorted(_METRICS)}.")
        self.state["cutpoints"] = list(self.options["cutpoints"])

    def head(self, d):
        return nn.Linear(d, 1)

    def loss(self, out, y, weights=None):
        per = F.mse_loss(out.squeeze(1).float(), y.float(), reduction="none")
        return weighted_mean(per, y, None if weights is None else weights["mes"])

    def decode(self, out):
        score = out.squeeze(1).float()
        return Decoded(pred=decode_scores(score, self.state["cutpoints"]), score=score)

    def fit_decoding(self, outputs, y):
        if self.options["tune_cutpoints"]:
            scores = outputs.squeeze(1).float().cpu().numpy()
            cuts, value = fit_cutpoints(scores, y.cpu().numpy(), self.options["cutpoint_metric"])
            self.state["cutpoints"] = cuts
            self.state["cutpoint_fit"] = {"metric": self.options["cutpoint_metric"], "value": value}
