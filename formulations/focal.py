"""Focal loss (Lin et al. 2017): L = −(1 − p_t)^γ · log p_t on the softmax of Linear(d, 4); γ = 0 is the
cross-entropy. An imbalance remedy the inverse-F1 stage is compared with: easy, well-classified images (mostly
of the frequent grades) weigh less. Decoding by the `decoding` rule."""

from pydantic import Field

from .base import ProbabilityFormulation, ProbabilityOptions, weighted_mean
from .registry import register_formulation


class FocalOptions(ProbabilityOptions):
    gamma: float = Field(2.0, ge=0, allow_inf_nan=False)  # focusing parameter; the paper's default


@register_formulation
class Focal(ProbabilityFormulation):
    name = "focal"
    description = "Linear(d, 4), focal loss −(1 − p_t)^γ log p_t"
    reference_text = "Lin et al., ICCV 2017 (focal loss)"
    Options = FocalOptions

    def loss(self, out, y, weights=None):
        logp = out.float().log_softmax(1).gather(1, y[:, None])[:, 0]
        per_sample = -((1 - logp.exp()) ** self.options["gamma"]) * logp
        return weighted_mean(per_sample, y, None if weights is None else weights["mes"])
