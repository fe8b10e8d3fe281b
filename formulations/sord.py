"""SORD, soft ordinal labels (Díaz & Marathe, CVPR 2019): the target of grade c is softmax(−α·φ(i, c)) over
grades i, and the loss is the cross-entropy to it. Linear(d, 4).

φ is the squared distance |i − c|² by default, as in the paper and its authors' code; `metric: abs` is the
absolute distance, which is what dlordinal's SORDLoss computes (its `ftype` only applies to proximity
matrices, `prox=True`, which need the training labels' counts), and is delegated to it."""

from typing import Literal

from pydantic import Field

from benchmark.labels import MES

from .base import ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation


class SORDOptions(ProbabilityOptions):
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)  # sharpness of the soft target
    metric: Literal["squared", "abs"] = "squared"  # φ(i, c) = |i − c|² (the paper) or |i − c| (dlordinal)


def sord_targets(y, alpha: float, metric: str, num_classes: int = MES.k):
    """The soft target rows softmax(−α·φ(i, y)) for a batch of grades y."""
    import torch

    dist = (torch.arange(num_classes, device=y.device).view(1, -1) - y.view(-1, 1)).abs().float()
    phi = dist**2 if metric == "squared" else dist
    return torch.softmax(-alpha * phi, dim=1)


def _squared_sord(alpha: float):
    import torch

    def loss(out, y):
        target = sord_targets(y, alpha, "squared", out.shape[1])
        return -(target * torch.log_softmax(out, dim=1)).sum(1).mean()

    return loss


@register_formulation
class SORD(ProbabilityFormulation):
    name = "sord"
    description = "Linear(d, 4), cross-entropy to soft ordinal labels softmax(−α·φ), φ = |i − c|² or |i − c|"
    reference_text = "Díaz & Marathe, CVPR 2019 (SORD)"
    Options = SORDOptions

    def loss(self, out, y, weights=None):
        import torch
        from dlordinal.losses import SORDLoss

        alpha = self.options["alpha"]
        if self.options["metric"] == "abs":
            fn = SORDLoss(alpha, self.num_classes, torch.arange(self.num_classes), prox=False)
        else:
            fn = _squared_sord(alpha)
        return class_weighted(fn, out.float(), y, None if weights is None else weights["mes"])
