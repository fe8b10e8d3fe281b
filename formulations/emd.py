"""Squared earth mover's distance between the predicted and the true grade distributions (Hou et al. 2016),
via dlordinal EMDLoss: Σ_k (CDF_pred(k) − CDF_true(k))². Linear(d, 4)."""

from .base import ProbabilityFormulation, class_weighted
from .registry import register_formulation


@register_formulation
class EMD(ProbabilityFormulation):
    name = "emd"
    description = "Linear(d, 4), squared earth mover's distance on the CDFs (dlordinal EMDLoss)"
    reference_text = "Hou, Yu & Samaras, 2016 (squared EMD loss)"

    def loss(self, out, y, weights=None):
        from dlordinal.losses import EMDLoss

        return class_weighted(EMDLoss(self.num_classes), out.float(), y, None if weights is None else weights["mes"])
