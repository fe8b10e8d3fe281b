"""Cumulative link model output layer (dlordinal CLM): Linear(d, 1) projects onto one latent value, ordered
thresholds and a logit / probit / cloglog link turn it into class probabilities; the loss is their negative
log-likelihood."""

from typing import Literal

from .base import ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation


class CLMOptions(ProbabilityOptions):
    link: Literal["logit", "probit", "cloglog"] = "logit"


def clm_head(d, link, num_classes):
    from dlordinal.output_layers import CLM
    from torch import nn

    return nn.Sequential(nn.Linear(d, 1), nn.BatchNorm1d(1), CLM(num_classes, link))


@register_formulation
class CumulativeLink(ProbabilityFormulation):
    name = "clm"
    description = "Linear(d, 1) + cumulative link output layer (logit / probit / cloglog), NLL"
    reference_text = "Vargas et al., cumulative link models for deep ordinal classification (dlordinal CLM)"
    Options = CLMOptions

    def head(self, d):
        return clm_head(d, self.options["link"], self.num_classes)

    def probabilities(self, out):
        return out.float().clamp_min(0)

    def loss(self, out, y, weights=None):
        import torch
        import torch.nn.functional as F

        def nll(p, t):
            return F.nll_loss(torch.log(p.clamp_min(1e-7)), t)

        return class_weighted(nll, out.float(), y, None if weights is None else weights["mes"])

    def gradcam_scores(self, out):
        import torch

        return torch.log(out.float().clamp_min(1e-7))
