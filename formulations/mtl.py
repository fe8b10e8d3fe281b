"""Hierarchical multi-task learning, coarse to fine (Kim & Lee, Digital Health 2025).

Three heads on the shared features: primary remission (MES 0–1) vs active (MES 2–3); remission
sub-task MES 0 vs 1; active sub-task MES 2 vs 3. Images outside a sub-task carry label −1 and are
masked out of its loss. L = α·L_primary + β·L_remission + γ·L_active.
Decoding `hard` routes by the primary head (the study's rule); `soft` multiplies probabilities.
"""

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import BenchError

from . import register_formulation
from .base import Decoded, Formulation, Task

TASKS = {
    "primary": Task(("remission", "active"), lambda y: (y >= 2).long()),
    "remission": Task(("MES 0", "MES 1"), lambda y: torch.where(y <= 1, y, torch.full_like(y, -1)), offset=0),
    "active": Task(("MES 2", "MES 3"), lambda y: torch.where(y >= 2, y - 2, torch.full_like(y, -1)), offset=2),
}


class MultiHead(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.primary = nn.Linear(d, 2)
        self.remission = nn.Linear(d, 2)
        self.active = nn.Linear(d, 2)

    def forward(self, x):
        return {"primary": self.primary(x), "remission": self.remission(x), "active": self.active(x)}


def masked_ce(logits, target, weight=None):
    """Cross-entropy over the valid (≠ −1) samples; exactly 0 (not NaN) when there is none."""
    valid = target >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    w = None if weight is None else weight.to(logits.device, logits.dtype)
    return F.cross_entropy(logits[valid], target[valid], weight=w)


def combine(p_primary, p_rem, p_act):
    """P(MES k) = P(group) · P(k | group)."""
    return torch.cat([p_primary[:, :1] * p_rem, p_primary[:, 1:] * p_act], dim=1)


@register_formulation
class HierarchicalMTL(Formulation):
    name = "mtl"
    description = "primary remission/active + two sub-heads, masked joint CE, hard or soft decoding"
    defaults = {"alpha": 1 / 3, "beta": 1 / 3, "gamma": 1 / 3, "decoding": "hard"}
    tasks = TASKS

    def __init__(self, **options):
        super().__init__(**options)
        w = [self.options[k] for k in ("alpha", "beta", "gamma")]
        if any(not isinstance(v, (int, float)) or v < 0 for v in w) or sum(w) <= 0:
            raise BenchError(f"formulation 'mtl': alpha, beta, gamma must be non-negative numbers, not all zero "
                             f"(got {w}); the study uses 1/3 each.")
        if self.options["decoding"] not in ("hard", "soft"):
            raise BenchError(f"formulation 'mtl': decoding must be 'hard' or 'soft' (got {self.options['decoding']!r}).")
        self.state["loss_weights"] = [float(v) for v in w]

    def head(self, d):
        return MultiHead(d)

    def loss(self, out, y, weights=None):
        weights = weights or {}
        a, b, g = weights["_tasks"].tolist() if "_tasks" in weights else self.state["loss_weights"]
        return (a * masked_ce(out["primary"], TASKS["primary"].target(y), weights.get("primary"))
                + b * masked_ce(out["remission"], TASKS["remission"].target(y), weights.get("remission"))
                + g * masked_ce(out["active"], TASKS["active"].target(y), weights.get("active")))

    def decode(self, out):
        p1 = out["primary"].float().softmax(1)
        p_rem = out["remission"].float().softmax(1)
        p_act = out["active"].float().softmax(1)
        proba = combine(p1, p_rem, p_act)
        if self.options["decoding"] == "soft":
            pred = proba.argmax(1)
        else:
            pred = torch.where(p1.argmax(1) == 1, 2 + p_act.argmax(1), p_rem.argmax(1))
        return Decoded(pred=pred, proba=proba,
                       task_preds={"primary": p1.argmax(1), "remission": p_rem.argmax(1), "active": p_act.argmax(1)})

    def task_weights(self, per_task_f1, options):
        from .finetune import inverse_f1_task_weights

        weights = super().task_weights({t: f for t, f in per_task_f1.items() if t in TASKS}, options)
        if options.get("task_weights", False):
            weights["_tasks"] = torch.as_tensor(inverse_f1_task_weights(
                [per_task_f1[t] for t in ("primary", "remission", "active")], options.get("eps", 1e-3)))
        return weights
