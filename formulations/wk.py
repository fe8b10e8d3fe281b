"""Weighted-kappa loss (de la Torre et al. 2018), via dlordinal WKLoss: 1 − QWK of the soft confusion matrix of
a batch, so the network optimises the ordinal agreement itself. Linear(d, 4). The loss is defined on a whole
batch (not per image); fine-tuning weights go through the package's own `weight`."""

from typing import Literal

from .base import ProbabilityFormulation, ProbabilityOptions
from .registry import register_formulation


class WKOptions(ProbabilityOptions):
    penalization: Literal["quadratic", "linear"] = "quadratic"


@register_formulation
class WeightedKappa(ProbabilityFormulation):
    name = "wk"
    description = "Linear(d, 4), weighted-kappa (QWK) loss on the batch (dlordinal WKLoss)"
    reference_text = "de la Torre, Puig & Valls, Pattern Recognit. Lett. 2018 (weighted kappa loss)"
    Options = WKOptions
    mixing_refused = (
        "its loss is 1 − QWK of the whole batch's soft confusion matrix, not a mean of per-image losses, so "
        "weighting two label sets' losses by λ is not the loss of the mixed targets"
    )

    def loss(self, out, y, weights=None):
        from dlordinal.losses import WKLoss

        w = None if weights is None else weights["mes"].to(out.device, out.dtype)
        fn = WKLoss(self.num_classes, penalization_type=self.options["penalization"], weight=w, use_logits=True)
        return fn.to(out.device)(out.float(), y)
