"""Unimodal soft labels (Vargas, Gutiérrez, Hervás-Martínez et al.), via dlordinal: cross-entropy to a soft
target (1 − η)·onehot + η·q_c, with q_c a beta, triangular, binomial, Poisson, exponential or geometric
distribution centred on the true grade. Linear(d, 4)."""

from typing import Literal

from pydantic import Field

from .base import NUM_CLASSES, ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation

LOSSES = {
    "beta": "BetaLoss",
    "triangular": "TriangularLoss",
    "binomial": "BinomialLoss",
    "poisson": "PoissonLoss",
    "exponential": "ExponentialLoss",
    "geometric": "GeometricLoss",
}


class SoftLabelOptions(ProbabilityOptions):
    distribution: Literal["beta", "triangular", "binomial", "poisson", "exponential", "geometric"] = "beta"
    eta: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)  # share of the soft target in the label


@register_formulation
class SoftLabels(ProbabilityFormulation):
    name = "soft_labels"
    description = "Linear(d, 4), cross-entropy to unimodal soft labels (beta / triangular / binomial / ...)"
    reference_text = "Vargas, Gutiérrez, Hervás-Martínez et al. (dlordinal BetaLoss, TriangularLoss, ...)"
    Options = SoftLabelOptions

    def loss(self, out, y, weights=None):
        import dlordinal.losses
        from torch import nn

        cls = getattr(dlordinal.losses, LOSSES[self.options["distribution"]])
        fn = cls(base_loss=nn.CrossEntropyLoss(), num_classes=NUM_CLASSES, eta=self.options["eta"])
        return class_weighted(fn.to(out.device), out.float(), y, None if weights is None else weights["mes"])
