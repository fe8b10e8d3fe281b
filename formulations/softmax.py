"""Flat softmax: Linear(d, 4), cross-entropy, argmax. The reference formulation."""

import numpy as np

from .base import NUM_CLASSES, Formulation
from .registry import register_formulation


@register_formulation
class Softmax(Formulation):
    name = "softmax"
    description = "Linear(d, 4), cross-entropy, argmax"
    reference_text = "the flat multi-class baseline"
    is_reference = True
    output_names = tuple(f"P(MES {k})" for k in range(NUM_CLASSES))
    ensemble_text = "mean class probabilities, argmax"

    def head(self, d):
        from torch import nn

        return nn.Linear(d, NUM_CLASSES)

    def loss(self, out, y, weights=None):
        import torch.nn.functional as F

        w = None if weights is None else weights["mes"].to(out.device, out.dtype)
        return F.cross_entropy(out, y, weight=w)

    def outputs(self, out):
        return out.float().softmax(1)

    def predict(self, outputs, state):
        return outputs.argmax(1)

    def proba(self, outputs, state):
        return outputs

    def example_outputs(self, grades, confidence=0.8):
        out = np.full((len(grades), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1))
        out[np.arange(len(grades)), grades] = confidence
        return out
