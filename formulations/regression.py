"""Regression with thresholds (Polat et al., 2023): Linear(d, 1), MSE on the grade, fixed cut points.

Decoding: grade = number of cut points at or below the score, so a score exactly on a cut point goes
to the higher grade. With `tune_cutpoints: true` the cut points are fitted on the fold's validation
outputs to maximise `cutpoint_metric`; the harness then cross-fits the validation metrics (fit on one
half, score the other) and decodes the test set with the whole-fold fit. A fold-ensemble averages the
scores and decodes them with the mean of the fold models' cut points.
"""

import numpy as np

from benchmark.errors import BenchError

from . import register_formulation
from .base import GRADES, Formulation, weighted_mean

DEFAULT_CUTPOINTS = (0.5, 1.5, 2.5)


def _qwk(y, p):
    from sklearn.metrics import cohen_kappa_score

    return cohen_kappa_score(y, p, weights="quadratic", labels=list(GRADES))


def _macro_f1(y, p):
    from sklearn.metrics import f1_score

    return f1_score(y, p, average="macro", labels=list(GRADES), zero_division=0)


def _accuracy(y, p):
    return float(np.mean(np.asarray(y) == np.asarray(p)))


_METRICS = {"qwk": _qwk, "macro_f1": _macro_f1, "accuracy": _accuracy}


def decode_scores(scores, cutpoints):
    """Grade = count of cut points <= score (ties go up)."""
    return np.searchsorted(np.asarray(cutpoints, float), np.asarray(scores, float), side="right")


def fit_cutpoints(scores, y, metric="qwk", passes=3):
    """Coordinate search over candidate cut points (score quantiles), keeping them increasing."""
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
    output_names = ("score",)
    ensemble_rule = "mean score, decoded with the mean of the fold models' cut points"

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["cutpoint_metric"] not in _METRICS:
            raise BenchError(f"formulation 'regression': cutpoint_metric {self.options['cutpoint_metric']!r} is not "
                             f"one of {sorted(_METRICS)}.")
        cuts = self.options["cutpoints"]
        if (not isinstance(cuts, list) or len(cuts) != len(GRADES) - 1
                or not all(isinstance(c, (int, float)) for c in cuts) or sorted(cuts) != cuts):
            raise BenchError(f"formulation 'regression': cutpoints must be {len(GRADES) - 1} increasing numbers "
                             f"(got {cuts!r}); the default is {list(DEFAULT_CUTPOINTS)}.")

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

    def initial_state(self):
        return {"cutpoints": [float(c) for c in self.options["cutpoints"]]}

    @property
    def fits_decoding(self):
        return bool(self.options["tune_cutpoints"])

    def fit_decoding(self, outputs, y):
        if not self.fits_decoding:
            return self.initial_state()
        cuts, value = fit_cutpoints(outputs[:, 0], y, self.options["cutpoint_metric"])
        return {"cutpoints": cuts, "cutpoint_fit": {"metric": self.options["cutpoint_metric"], "value": value}}

    def combine_states(self, states):
        if not states:
            return self.initial_state()
        return {"cutpoints": np.mean([s["cutpoints"] for s in states], axis=0).tolist()}

    def gradcam_class(self, pred):
        return [0] * len(pred)

    def example_outputs(self, grades, confidence=0.8):
        return (np.asarray(grades, float) + (1 - confidence) * 0.5 * np.cos(np.arange(len(grades))))[:, None]
