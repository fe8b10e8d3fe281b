"""Hierarchical multi-task learning, coarse to fine (Kim & Lee, Digital Health 2025).

Three heads on the shared features: primary remission (MES 0–1) vs active (MES 2–3); remission
sub-task MES 0 vs 1; active sub-task MES 2 vs 3. Images outside a sub-task carry label −1 and are
masked out of its loss. L = α·L_primary + β·L_remission + γ·L_active.
Decoding `hard` routes by the primary head (the study's rule); `soft` multiplies probabilities.
Outputs are the three heads' probabilities; a fold-ensemble averages each head's probabilities and
then applies the same hard or soft rule.
"""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from benchmark.errors import BenchError

from .base import Formulation, Task, decode_probabilities
from .registry import register_formulation

TASKS = {
    "primary": Task(("remission", "active"), (0, 0, 1, 1)),
    "remission": Task(("MES 0", "MES 1"), (0, 1, -1, -1)),
    "active": Task(("MES 2", "MES 3"), (-1, -1, 0, 1)),
}
HEADS = tuple(TASKS)


class MTLOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1 / 3, allow_inf_nan=False)
    beta: float = Field(1 / 3, allow_inf_nan=False)
    gamma: float = Field(1 / 3, allow_inf_nan=False)
    # hard: route by the primary head (the study); soft: argmax of the combined probabilities; median /
    # expectation: of the combined distribution
    decoding: Literal["hard", "soft", "median", "expectation"] = "hard"

    @model_validator(mode="after")
    def _weights(self):
        w = [self.alpha, self.beta, self.gamma]
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(
                f"alpha, beta, gamma must be non-negative numbers, not all zero (got {w}); the study uses 1/3 each"
            )
        return self


def masked_ce(logits, target, weight=None):
    """Cross-entropy over the valid (≠ −1) samples; exactly 0 (not NaN) when there is none."""
    import torch.nn.functional as F

    valid = target >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    w = None if weight is None else weight.to(logits.device, logits.dtype)
    return F.cross_entropy(logits[valid], target[valid], weight=w)


def combine(p_primary, p_rem, p_act):
    """P(MES k) = P(group) · P(k | group)."""
    return np.concatenate([p_primary[:, :1] * p_rem, p_primary[:, 1:] * p_act], axis=1)


def multi_head(d):
    from torch import nn

    class MultiHead(nn.Module):
        def __init__(self):
            super().__init__()
            for h in HEADS:
                setattr(self, h, nn.Linear(d, len(TASKS[h].classes)))

        def forward(self, x):
            return {h: getattr(self, h)(x) for h in HEADS}

    return MultiHead()


@register_formulation
class HierarchicalMTL(Formulation):
    name = "mtl"
    description = "primary remission/active + two sub-heads, masked joint CE, hard or soft decoding"
    reference_text = "Kim & Lee, Digital Health 2025 (hierarchical multi-task, coarse to fine)"
    Options = MTLOptions
    tunable_weights = ("alpha", "beta", "gamma")
    tasks = TASKS
    output_names = (
        "P(remission)",
        "P(active)",
        "P(MES 0 | remission)",
        "P(MES 1 | remission)",
        "P(MES 2 | active)",
        "P(MES 3 | active)",
    )

    def __init__(self, num_classes=4, class_names=None, **options):
        super().__init__(num_classes, class_names, **options)
        self.loss_weights = [float(self.options[k]) for k in self.tunable_weights]

    def check_scale(self):
        if self.num_classes != 4:
            raise BenchError(
                f"formulation 'mtl': its hierarchy (remission 0–1 / active 2–3) is MES's four grades, and this "
                f"scale has {self.num_classes}; a hierarchy for other scales (option groups:) is not built yet."
            )

    def scale_tasks(self):
        return TASKS

    def scale_output_names(self):
        return type(self).output_names

    @property
    def ensemble_rule(self) -> str:
        return f"mean probabilities of each head, then the {self.options['decoding']} rule"

    def head(self, d):
        return multi_head(d)

    def loss(self, out, y, weights=None):
        weights = weights or {}
        a, b, g = self.loss_weights
        return (
            a * masked_ce(out["primary"], TASKS["primary"].target(y), weights.get("primary"))
            + b * masked_ce(out["remission"], TASKS["remission"].target(y), weights.get("remission"))
            + g * masked_ce(out["active"], TASKS["active"].target(y), weights.get("active"))
        )

    def outputs(self, out):
        import torch

        return torch.cat([out[h].float().softmax(1) for h in HEADS], dim=1)

    @staticmethod
    def _split(outputs):
        return outputs[:, 0:2], outputs[:, 2:4], outputs[:, 4:6]

    def predict(self, outputs, state):
        p1, p_rem, p_act = self._split(outputs)
        rule = self.options["decoding"]
        if rule != "hard":
            return decode_probabilities(combine(p1, p_rem, p_act), "argmax" if rule == "soft" else rule)
        return np.where(p1.argmax(1) == 1, 2 + p_act.argmax(1), p_rem.argmax(1))

    def proba(self, outputs, state):
        return combine(*self._split(outputs))

    def task_predictions(self, outputs, state):
        return {h: p.argmax(1) for h, p in zip(HEADS, self._split(outputs))}

    def example_outputs(self, grades, confidence=0.8):
        grades = np.asarray(grades)
        c, o = confidence, 1 - confidence
        active = grades >= 2
        primary = np.where(active[:, None], [o, c], [c, o])
        within = np.where((grades % 2 == 1)[:, None], [o, c], [c, o])
        rest = np.full((len(grades), 2), 0.5)
        return np.concatenate(
            [primary, np.where(active[:, None], rest, within), np.where(active[:, None], within, rest)], axis=1
        )

    def gradcam_scores(self, out):
        import torch

        p = [out[h].float().softmax(1) for h in HEADS]
        proba = torch.cat([p[0][:, :1] * p[1], p[0][:, 1:] * p[2]], dim=1)
        return torch.log(proba.clamp_min(1e-8))

    def task_weights(self, per_task_f1, options):
        return super().task_weights({t: f for t, f in per_task_f1.items() if t in TASKS}, options)

    def finetune_overrides(self, per_task_f1, options):
        """`task_weights: true`: α, β, γ ∝ 1 / macro-F1 of each head's task as well."""
        if not options.get("task_weights", False):
            return {}
        from .finetune import inverse_f1_task_weights

        w = inverse_f1_task_weights([per_task_f1[t] for t in HEADS], options.get("eps", 1e-3))
        return dict(zip(self.tunable_weights, map(float, w)))
