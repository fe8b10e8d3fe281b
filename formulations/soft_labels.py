"""Unimodal soft labels (Vargas, Gutiérrez, Hervás-Martínez et al.), via dlordinal: cross-entropy to a soft
target (1 − η)·onehot + η·q_c, with q_c a beta, triangular, binomial, Poisson, exponential or geometric
distribution centred on the true grade. Linear(d, 4).

The point of these targets is that they are unimodal at the true grade. dlordinal's Poisson rows at K = 4 are
nearly flat with their top shared by two grades (row 0: .28 .28 .23 .21), so at η = 1 the target does not
single out the true grade; its default η is therefore 0.85, and any (distribution, η) whose target rows do not
peak strictly at the true grade and fall away from it is refused at load."""

import functools
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from benchmark.errors import BenchError
from benchmark.labels import MES

from .base import ProbabilityFormulation, ProbabilityOptions, class_weighted
from .registry import register_formulation

LOSSES = {
    "beta": "BetaLoss",
    "triangular": "TriangularLoss",
    "binomial": "BinomialLoss",
    "poisson": "PoissonLoss",
    "exponential": "ExponentialLoss",
    "geometric": "GeometricLoss",
}
DEFAULT_ETA = {"poisson": 0.85}  # others: 1.0, whose rows are already unimodal at the true grade


def soft_targets(distribution: str, eta: float, num_classes: int = MES.k) -> np.ndarray:
    """The target rows (1 − η)·I + η·Q that the dlordinal loss of this distribution trains towards."""
    return np.array(_soft_targets(distribution, float(eta), int(num_classes)))


@functools.lru_cache(maxsize=128)
def _soft_targets(distribution: str, eta: float, num_classes: int) -> np.ndarray:
    """Cached (and read-only): a suite's validation asks for the same rows once per variant and per check."""
    import dlordinal.soft_labelling as sl  # numpy only: no torch at suite load

    getter = {
        "beta": sl.get_beta_soft_labels,
        "triangular": lambda k: sl.get_triangular_soft_labels(k, 0.05),  # TriangularLoss's own alpha2
        "binomial": sl.get_binomial_soft_labels,
        "poisson": sl.get_poisson_soft_labels,
        "exponential": sl.get_exponential_soft_labels,
        "geometric": sl.get_geometric_soft_labels,
    }[distribution]
    q = np.asarray(getter(num_classes), float)
    rows = (1 - eta) * np.eye(num_classes) + eta * q
    rows.setflags(write=False)
    return rows


def not_unimodal(targets: np.ndarray, tol: float = 1e-9) -> int | None:
    """The first grade whose target row does not peak strictly at that grade and fall away from it, or None."""
    for c, row in enumerate(targets):
        left, right = row[: c + 1], row[c:]
        rising = np.all(np.diff(left) >= -tol) and np.all(np.diff(right) <= tol)
        strict = all(row[c] > row[j] + tol for j in range(len(row)) if j != c)
        if not (rising and strict):
            return c
    return None


class SoftLabelOptions(ProbabilityOptions):
    distribution: Literal["beta", "triangular", "binomial", "poisson", "exponential", "geometric"] = "beta"
    # share of the soft target in the label; None: 1.0, or 0.85 for poisson (see the module docstring)
    eta: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _unimodal(self):
        eta = DEFAULT_ETA.get(self.distribution, 1.0) if self.eta is None else self.eta
        targets = soft_targets(self.distribution, eta)
        c = not_unimodal(targets)
        if c is not None:
            row = " ".join(f"{v:.2f}" for v in targets[c])
            raise ValueError(
                f"soft_labels with distribution {self.distribution!r} and eta {eta:g} gives targets that are not "
                f"unimodal at the true grade (grade {c}: {row}), so they would not teach the grade; use a smaller "
                f"eta (e.g. {DEFAULT_ETA.get(self.distribution, 0.85)}) or another distribution"
            )
        self.eta = eta
        return self


@register_formulation
class SoftLabels(ProbabilityFormulation):
    name = "soft_labels"
    description = "Linear(d, 4), cross-entropy to unimodal soft labels (beta / triangular / binomial / ...)"
    reference_text = "Vargas, Gutiérrez, Hervás-Martínez et al. (dlordinal BetaLoss, TriangularLoss, ...)"
    Options = SoftLabelOptions

    def check_scale(self):
        # the options were checked on MES's four grades; the targets' shape depends on the number of grades
        try:
            targets = soft_targets(self.options["distribution"], self.options["eta"], self.num_classes)
        except ValueError as exc:  # dlordinal tabulates some distributions for certain K only (beta: not K = 2)
            raise BenchError(
                f"formulation 'soft_labels': dlordinal's {self.options['distribution']!r} soft labels are not "
                f"defined on a scale of {self.num_classes} grades ({exc}); choose another distribution (e.g. "
                "triangular or binomial) or drop soft_labels from this suite."
            ) from None
        c = not_unimodal(targets)
        if c is not None:
            raise BenchError(
                f"formulation 'soft_labels': distribution {self.options['distribution']!r} with eta "
                f"{self.options['eta']:g} gives targets that are not unimodal at grade {c} on a scale of "
                f"{self.num_classes} grades; use a smaller eta or another distribution."
            )

    def loss(self, out, y, weights=None):
        import dlordinal.losses
        from torch import nn

        cls = getattr(dlordinal.losses, LOSSES[self.options["distribution"]])
        fn = cls(base_loss=nn.CrossEntropyLoss(), num_classes=self.num_classes, eta=self.options["eta"])
        return class_weighted(fn.to(out.device), out.float(), y, None if weights is None else weights["mes"])
