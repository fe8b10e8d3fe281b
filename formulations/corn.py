"""CORN (conditional ordinal regression) via coral-pytorch: Linear(d, 3), corn_loss, corn_label_from_logits."""

import torch
from coral_pytorch.dataset import corn_label_from_logits
from coral_pytorch.losses import corn_loss
from torch import nn

from . import register_formulation
from .base import NUM_CLASSES, Decoded, Formulation


@register_formulation
class Corn(Formulation):
    name = "corn"
    description = "Linear(d, 3), corn_loss, corn_label_from_logits"

    def head(self, d):
        return nn.Linear(d, NUM_CLASSES - 1)

    def loss(self, out, y, weights=None):
        if weights is None:
            return corn_loss(out, y, NUM_CLASSES)
        # corn_loss has no per-sample weights: combine its per-class losses, each weighted by
        # the class weight and its share of the batch.
        w = weights["mes"].to(out.device, torch.float32)
        total, norm = 0.0, 0.0
        for c in torch.unique(y).tolist():
            mask = y == c
            n = mask.sum()
            total = total + w[c] * n * corn_loss(out[mask], y[mask], NUM_CLASSES)
            norm = norm + w[c] * n
        return total / norm

    def decode(self, out):
        cond = torch.sigmoid(out.float())
        cum = torch.cumprod(cond, dim=1)  # P(y > k)
        from .coral import cumulative_to_class_proba

        return Decoded(pred=corn_label_from_logits(out.float()), proba=cumulative_to_class_proba(cum))
