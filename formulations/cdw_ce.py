"""CDW-CE, class-distance-weighted cross-entropy (Polat et al., MIUA 2022; 2024), via dlordinal:
L = −Σ_{i≠c} log(1 − p_i)·|i − c|^α, optionally with a margin. Linear(d, 4); decoding by the `decoding` rule."""

from pydantic import Field

from .base import ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation


class CDWCEOptions(ProbabilityOptions):
    alpha: float = Field(5.0, gt=0, allow_inf_nan=False)  # the distance power; 5–7 worked best on LIMUC
    margin: float = Field(0.0, ge=0, allow_inf_nan=False)  # > 0: the margin variant


@register_formulation
class CDWCE(ProbabilityFormulation):
    name = "cdw_ce"
    description = "Linear(d, 4), class-distance-weighted cross-entropy (dlordinal CDWCELoss)"
    reference_text = "Polat et al., MIUA 2022 / 2024 (CDW-CE); best reported LIMUC QWK 0.868"
    Options = CDWCEOptions

    def loss(self, out, y, weights=None):
        from dlordinal.losses import CDWCELoss

        fn = CDWCELoss(self.num_classes, alpha=self.options["alpha"], margin=self.options["margin"])
        return class_weighted(fn, out.float(), y, None if weights is None else weights["mes"])
