"""CORN (conditional ordinal regression) via coral-pytorch: Linear(d, 3), corn_loss, corn_label_from_logits.

Outputs are the cumulative probabilities P(y > k) = Π_{j≤k} sigmoid(l_j) (the conditional chain); the
label is the count of them above 0.5, exactly `corn_label_from_logits`. A fold-ensemble averages the
cumulative probabilities and applies the same rule.
"""

from .base import CumulativeFormulation
from .registry import register_formulation


def corn_per_sample(logits, y):
    """(B,) summed binary losses of each sample over the conditional tasks it takes part in, and (B,) how
    many tasks that is: corn_loss = Σ loss / Σ count (task k uses the samples with y ≥ k, label y > k)."""
    import torch
    import torch.nn.functional as F

    k = torch.arange(logits.shape[1], device=logits.device)
    valid = (y[:, None] >= k[None, :]).to(logits.dtype)
    label = (y[:, None] > k[None, :]).to(logits.dtype)
    logsig = F.logsigmoid(logits)
    per = -(logsig * label + (logsig - logits) * (1 - label)) * valid
    return per.sum(1), valid.sum(1)


@register_formulation
class Corn(CumulativeFormulation):
    name = "corn"
    description = "Linear(d, 3), corn_loss, corn_label_from_logits"
    reference_text = "Shi, Cao & Raschka, Pattern Anal. Appl. 2023 (coral-pytorch)"
    ensemble_text = (
        "mean cumulative probabilities of the conditional chain, then its decoding rule (threshold: count > 0.5)"
    )

    def head(self, d):
        from torch import nn

        return nn.Linear(d, self.num_classes - 1)

    def loss(self, out, y, weights=None):
        if weights is None:
            from coral_pytorch.losses import corn_loss

            return corn_loss(out, y, self.num_classes)
        # Per-sample weights by class, normalised like corn_loss (by the weighted count of binary
        # decisions), so unit weights give corn_loss itself.
        loss, count = corn_per_sample(out, y)
        w = weights["mes"].to(out.device, out.dtype)[y]
        return (w * loss).sum() / (w * count).sum().clamp_min(1e-12)

    def outputs(self, out):
        import torch

        return torch.cumprod(torch.sigmoid(out.float()), dim=1)
