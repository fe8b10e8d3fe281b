"""CORAL ordinal regression (Cao, Mirjalili, Raschka 2020) via coral-pytorch.

CoralLayer gives 3 logits sharing one weight vector; label = count of P(y > k) = sigmoid(logit_k) > 0.5
(coral-pytorch's `proba_to_label`). Outputs are the cumulative probabilities; a fold-ensemble averages
them and applies the same threshold rule (an argmax over differenced probabilities is another rule, and
on imbalanced data a much worse one). Class probabilities come from differencing, clipped and
renormalised. CORAL does not guarantee monotone cumulative probabilities, so violations (rank
inconsistencies) are counted and stored.
"""

from .base import CumulativeFormulation, weighted_mean
from .registry import register_formulation


@register_formulation
class Coral(CumulativeFormulation):
    name = "coral"
    description = "CoralLayer(d, 4), coral_loss, count of sigmoid > 0.5"
    reference_text = "Cao, Mirjalili & Raschka, Pattern Recognit. Lett. 2020 (coral-pytorch)"
    ensemble_text = "mean cumulative probabilities P(y > k), then its decoding rule (threshold: count of those > 0.5)"

    def head(self, d):
        from coral_pytorch.layers import CoralLayer

        return CoralLayer(d, self.num_classes)

    def loss(self, out, y, weights=None):
        from coral_pytorch.dataset import levels_from_labelbatch
        from coral_pytorch.losses import coral_loss

        # levels_from_labelbatch builds on the CPU; move to the logits' device.
        levels = levels_from_labelbatch(y.cpu(), self.num_classes).to(out.device, out.dtype)
        per = coral_loss(out, levels, reduction=None)
        return weighted_mean(per, y, None if weights is None else weights["mes"])

    def outputs(self, out):
        import torch

        return torch.sigmoid(out.float())

    def counters(self, outputs):
        return {"rank_inconsistent": int((outputs[:, 1:] > outputs[:, :-1]).any(1).sum())}
