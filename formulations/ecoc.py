"""Ordinal binary decomposition with error-correcting output codes (Barbero-Gómez et al. 2023), via dlordinal
OrdinalECOCDistanceLoss: Linear(d, 3) gives P(y > k) through sigmoids, trained by squared distance to the code
word of the true grade; decoding picks the grade whose code word is nearest. A fold-ensemble averages the
threshold probabilities and decodes them the same way."""

import numpy as np

from benchmark.labels import MES

from .base import Formulation, cumulative_to_class_proba, ordinal_evidence, threshold_names
from .registry import register_formulation


def code_words(k: int) -> np.ndarray:
    """(K, K−1): grade g's code word is g ones, then zeros."""
    return np.tril(np.ones((k, k - 1)), -1)


@register_formulation
class OrdinalECOC(Formulation):
    name = "ecoc"
    description = "Linear(d, 3) with sigmoids, ordinal ECOC distance loss, nearest code word"
    reference_text = "Barbero-Gómez et al., 2023 (ordinal binary decomposition, ECOC; dlordinal)"
    output_names = threshold_names(MES.classes)

    def scale_output_names(self):
        return threshold_names(self.class_names)

    ensemble_text = "mean threshold probabilities, nearest code word"

    def head(self, d):
        from torch import nn

        return nn.Linear(d, self.num_classes - 1)

    def loss(self, out, y, weights=None):
        import torch
        from dlordinal.losses import OrdinalECOCDistanceLoss

        w = None if weights is None else weights["mes"].to(out.device, torch.float32)
        fn = OrdinalECOCDistanceLoss(self.num_classes, w).to(out.device)
        if w is None:
            return fn(torch.sigmoid(out.float()), y) / len(y)  # the package sums over the batch
        return fn(torch.sigmoid(out.float()), y) / w[y].sum()

    def outputs(self, out):
        import torch

        return torch.sigmoid(out.float())

    def predict(self, outputs, state):
        return ((outputs[:, None, :] - code_words(self.num_classes)[None]) ** 2).sum(2).argmin(1)

    def proba(self, outputs, state):
        return cumulative_to_class_proba(outputs)

    def gradcam_scores(self, out):
        return ordinal_evidence(out)

    def example_outputs(self, grades, confidence=0.8):
        return np.where(code_words(self.num_classes)[np.asarray(grades)] == 1, confidence, 1 - confidence)
