"""SORD, soft ordinal labels (Díaz & Marathe, CVPR 2019), via dlordinal: the target of grade c is
softmax(−α·φ(i, c)) over grades i, and the loss is the cross-entropy to it. Linear(d, 4)."""

from typing import Literal

from pydantic import Field

from .base import NUM_CLASSES, ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation


class SORDOptions(ProbabilityOptions):
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)  # sharpness of the soft target
    ftype: Literal["max", "abs", "square"] = "max"  # dlordinal's distance φ


@register_formulation
class SORD(ProbabilityFormulation):
    name = "sord"
    description = "Linear(d, 4), cross-entropy to soft ordinal labels softmax(−α·φ) (dlordinal SORDLoss)"
    reference_text = "Díaz & Marathe, CVPR 2019 (SORD)"
    Options = SORDOptions

    def loss(self, out, y, weights=None):
        import torch
        from dlordinal.losses import SORDLoss

        # proximity (prox=True) would need the training labels' counts; the distance-based variant does not
        fn = SORDLoss(
            self.options["alpha"], NUM_CLASSES, torch.arange(NUM_CLASSES), prox=False, ftype=self.options["ftype"]
        )
        return class_weighted(fn, out.float(), y, None if weights is None else weights["mes"])
