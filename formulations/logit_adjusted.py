"""Logit-adjusted loss (Menon et al., ICLR 2021): cross-entropy on z + τ·log π, π the class priors of the fold's
training images, so the frequent grades must win by a margin; inference on the plain logits z (argmax, or the
`decoding` rule). The priors come from the training part of each fold (never validation or test), through
`training_overrides`, so one suite entry adapts to each fold's class balance."""

import numpy as np
from pydantic import Field

from benchmark.errors import BenchError

from .base import ProbabilityFormulation, ProbabilityOptions
from .registry import register_formulation


class LogitAdjustedOptions(ProbabilityOptions):
    tau: float = Field(1.0, ge=0, allow_inf_nan=False)  # τ = 1 is Fisher-consistent for the balanced error
    # set by the harness from each fold's training labels; given in a suite, it fixes the priors instead
    priors: list[float] | None = Field(None, min_length=2)  # one per grade (checked against the scale)


@register_formulation
class LogitAdjusted(ProbabilityFormulation):
    name = "logit_adjusted"
    description = "Linear(d, 4), cross-entropy on logits + τ·log(training class priors); plain logits at inference"
    reference_text = "Menon et al., ICLR 2021 (logit adjustment)"
    Options = LogitAdjustedOptions

    def check_scale(self):
        priors = self.options["priors"]
        if priors is not None and len(priors) != self.num_classes:
            raise BenchError(
                f"formulation 'logit_adjusted': option 'priors' has {len(priors)} values for a scale of "
                f"{self.num_classes} grades; give one per grade, or leave it out to take the fold's training priors."
            )

    def training_overrides(self, counts):
        if self.options["priors"] is not None:
            return {}
        mes = np.asarray(counts["mes"], dtype=float)
        return {"priors": (mes / mes.sum()).tolist()}

    def loss(self, out, y, weights=None):
        import torch
        import torch.nn.functional as F

        priors = self.options["priors"]
        if priors is None:
            raise BenchError(
                "formulation 'logit_adjusted': no class priors — they are set from the fold's training labels when "
                "a cell is trained by bench run or bench tune; elsewhere give options: {priors: [...]}."
            )
        shift = self.options["tau"] * torch.log(torch.as_tensor(priors, dtype=torch.float32, device=out.device))
        w = None if weights is None else weights["mes"].to(out.device, torch.float32)
        return F.cross_entropy(out.float() + shift.clamp_min(-1e4), y, weight=w)
