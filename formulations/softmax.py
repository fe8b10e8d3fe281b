"""Flat softmax: Linear(d, 4), cross-entropy, argmax (or median / expectation). The reference formulation."""

from .base import ProbabilityFormulation
from .registry import register_formulation


@register_formulation
class Softmax(ProbabilityFormulation):
    name = "softmax"
    description = "Linear(d, 4), cross-entropy, argmax"
    reference_text = "the flat multi-class baseline"
    is_reference = True

    def loss(self, out, y, weights=None):
        import torch.nn.functional as F

        w = None if weights is None else weights["mes"].to(out.device, out.dtype)
        return F.cross_entropy(out, y, weight=w)
