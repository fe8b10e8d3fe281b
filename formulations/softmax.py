"""Flat softmax: Linear(d, 4), cross-entropy, argmax. The reference formulation."""

import torch.nn.functional as F
from torch import nn

from . import register_formulation
from .base import NUM_CLASSES, Decoded, Formulation


@register_formulation
class Softmax(Formulation):
    name = "softmax"
    description = "Linear(d, 4), cross-entropy, argmax"

    def head(self, d):
        return nn.Linear(d, NUM_CLASSES)

    def loss(self, out, y, weights=None):
        w = None if weights is None else weights["mes"].to(out.device, out.dtype)
        return F.cross_entropy(out, y, weight=w)

    def decode(self, out):
        proba = out.float().softmax(1)
        return Decoded(pred=proba.argmax(1), proba=proba)
