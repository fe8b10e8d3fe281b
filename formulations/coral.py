"""CORAL ordinal regression (Cao, Mirjalili, Raschka 2020) via coral-pytorch.

CoralLayer gives 3 logits sharing one weight vector; label = count of sigmoid(logit) > 0.5.
Class probabilities come from differencing the cumulative ones, clipped and renormalised.
CORAL does not guarantee monotone cumulative probabilities while training, so violations
(rank inconsistencies) are counted and stored.
"""

import torch
from coral_pytorch.dataset import levels_from_labelbatch, proba_to_label
from coral_pytorch.layers import CoralLayer
from coral_pytorch.losses import coral_loss

from . import register_formulation
from .base import NUM_CLASSES, Decoded, Formulation, weighted_mean


def cumulative_to_class_proba(cum: torch.Tensor) -> torch.Tensor:
    """P(y > k) for k = 0..K-2  ->  P(y = k), clipped to [0, 1] and renormalised."""
    ones = torch.ones_like(cum[:, :1])
    zeros = torch.zeros_like(cum[:, :1])
    ext = torch.cat([ones, cum, zeros], dim=1)
    proba = (ext[:, :-1] - ext[:, 1:]).clamp(0, 1)
    return proba / proba.sum(1, keepdim=True).clamp_min(1e-12)


@register_formulation
class Coral(Formulation):
    name = "coral"
    description = "CoralLayer(d, 4), coral_loss, count of sigmoid > 0.5"

    def head(self, d):
        return CoralLayer(d, NUM_CLASSES)

    def loss(self, out, y, weights=None):
        # levels_from_labelbatch builds on the CPU; move to the logits' device.
        levels = levels_from_labelbatch(y.cpu(), NUM_CLASSES).to(out.device, out.dtype)
        per = coral_loss(out, levels, reduction=None)
        return weighted_mean(per, y, None if weights is None else weights["mes"])

    def decode(self, out):
        cum = torch.sigmoid(out.float())
        inconsistent = int((cum[:, 1:] > cum[:, :-1]).any(1).sum())
        return Decoded(pred=proba_to_label(cum), proba=cumulative_to_class_proba(cum),
                       counters={"rank_inconsistent": inconsistent})
