"""Hierarchical multi-task learning, coarse to fine (Kim & Lee, Digital Health 2025).

The grades are partitioned into groups of consecutive grades (option `groups:`; MES's default: remission 0–1 /
active 2–3). A primary head predicts the group; one sub-head per group of more than one grade predicts the grade
within it (MES: MES 0 vs 1, MES 2 vs 3). Images outside a sub-head's group carry label −1 and are masked out of
its loss. L = α·L_primary + β·L_(first sub-head) + γ·Σ L_(each further sub-head) — on MES the study's
α·L_primary + β·L_remission + γ·L_active.
Decoding `hard` routes by the primary head (the study's rule); `soft` multiplies probabilities,
P(k) = P(group of k) · P(k | group). Outputs are the heads' probabilities; a fold-ensemble averages each head's
probabilities and then applies the same hard or soft rule.
"""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from benchmark.errors import BenchError
from benchmark.labels import MES

from .base import Formulation, Task, decode_probabilities
from .registry import register_formulation

# MES's hierarchy, the study's: its heads keep the study's names.
MES_GROUPS = ((0, 1), (2, 3))
MES_HEADS = ("primary", "remission", "active")
TASKS = {
    "primary": Task(("remission", "active"), (0, 0, 1, 1)),
    "remission": Task(("MES 0", "MES 1"), (0, 1, -1, -1)),
    "active": Task(("MES 2", "MES 3"), (-1, -1, 0, 1)),
}
GROUPS_EXAMPLE = "options: {groups: [[0, 1], [2, 3, 4]]} (any partition of the grades into runs of consecutive grades)"


class MTLOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1 / 3, allow_inf_nan=False)
    beta: float = Field(1 / 3, allow_inf_nan=False)
    gamma: float = Field(1 / 3, allow_inf_nan=False)
    # hard: route by the primary head (the study); soft: argmax of the combined probabilities; median /
    # expectation: of the combined distribution
    decoding: Literal["hard", "soft", "median", "expectation"] = "hard"
    # the hierarchy: groups of consecutive grades, in order; None: MES's remission 0–1 / active 2–3
    groups: list[list[StrictInt]] | None = None  # strict: YAML reads `false` as a boolean, never grade 0

    @model_validator(mode="after")
    def _weights(self):
        w = [self.alpha, self.beta, self.gamma]
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(
                f"alpha, beta, gamma must be non-negative numbers, not all zero (got {w}); the study uses 1/3 each"
            )
        if self.groups is not None:
            flat = [g for group in self.groups for g in group]
            if any(not group for group in self.groups) or flat != list(range(len(flat))):
                raise ValueError(
                    f"groups: {self.groups} must list the grades 0, 1, …, K − 1 once each, in order, in runs of "
                    f"consecutive grades — e.g. {GROUPS_EXAMPLE}"
                )
            if len(self.groups) < 2 or all(len(group) == 1 for group in self.groups):
                raise ValueError(
                    f"groups: {self.groups} needs at least two groups and one group of two or more grades (else "
                    "there is no hierarchy: use softmax)"
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


def combine(p_primary, *p_subs, groups=MES_GROUPS):
    """P(grade k) = P(group of k) · P(k | group), the sub-heads in the order of the groups of two or more grades
    (a group of one grade is its grade with certainty)."""
    subs = iter(p_subs)
    parts = []
    for j, group in enumerate(groups):
        within = next(subs) if len(group) > 1 else np.ones((len(p_primary), 1))
        parts.append(p_primary[:, j : j + 1] * within)
    return np.concatenate(parts, axis=1)


def multi_head(d, sizes: dict[str, int]):
    from torch import nn

    class MultiHead(nn.Module):
        def __init__(self):
            super().__init__()
            for h, n in sizes.items():
                setattr(self, h, nn.Linear(d, n))

        def forward(self, x):
            return {h: getattr(self, h)(x) for h in sizes}

    return MultiHead()


@register_formulation
class HierarchicalMTL(Formulation):
    name = "mtl"
    description = "primary group head + one sub-head per group, masked joint CE, hard or soft decoding"
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
        self.loss_weights = [float(self.options[k]) for k in self.loss_weight_names()]

    def loss_weight_names(self) -> tuple[str, ...]:
        # one sub-head: γ would weigh nothing, so it is not a weight of this hierarchy
        return ("alpha", "beta") if len(self.sub_heads) == 1 else type(self).tunable_weights

    # ------------------------------------------------------------------ the hierarchy on this scale
    def check_scale(self):
        groups = self.options["groups"]
        if groups is None:
            if tuple(self.class_names) != MES.classes:
                raise BenchError(
                    f"formulation 'mtl': its default hierarchy (remission 0–1 / active 2–3) is MES's, and this scale "
                    f"has the grades {', '.join(self.class_names)}. Give the hierarchy as {GROUPS_EXAMPLE}."
                )
            groups = [list(g) for g in MES_GROUPS]
        if sum(len(g) for g in groups) != self.num_classes:
            raise BenchError(
                f"formulation 'mtl': groups {groups} cover {sum(len(g) for g in groups)} grades, but the scale has "
                f"{self.num_classes} ({', '.join(self.class_names)}). Partition all of them, e.g. {GROUPS_EXAMPLE}."
            )
        self.groups = tuple(tuple(g) for g in groups)
        sub = [g for g in self.groups if len(g) > 1]
        mes = self.groups == MES_GROUPS and tuple(self.class_names) == MES.classes
        self.sub_heads: tuple[str, ...] = MES_HEADS[1:] if mes else tuple(f"g{g[0]}-{g[-1]}" for g in sub)
        self.sub_groups = tuple(sub)
        if len(sub) == 1 and self.options["gamma"] != MTLOptions.model_fields["gamma"].default:
            raise BenchError(
                f"formulation 'mtl': gamma weighs the sub-heads after the first, and the hierarchy {groups} has one "
                "sub-head (weighed by beta): drop gamma, or split the grades into more groups."
            )

    def _group_name(self, group) -> str:
        c = self.class_names
        return c[group[0]] if len(group) == 1 else f"{c[group[0]]}–{c[group[-1]]}"

    def scale_tasks(self):
        if self.sub_heads == MES_HEADS[1:]:
            return TASKS
        grade_group = [j for j, g in enumerate(self.groups) for _ in g]
        tasks = {"primary": Task(tuple(self._group_name(g) for g in self.groups), tuple(grade_group))}
        for head, group in zip(self.sub_heads, self.sub_groups):
            labels = tuple(k - group[0] if k in group else -1 for k in range(self.num_classes))
            tasks[head] = Task(tuple(self.class_names[k] for k in group), labels)
        return tasks

    def scale_output_names(self):
        if self.sub_heads == MES_HEADS[1:]:
            return type(self).output_names
        names = [f"P({self._group_name(g)})" for g in self.groups]
        for group in self.sub_groups:
            names += [f"P({self.class_names[k]} | {self._group_name(group)})" for k in group]
        return tuple(names)

    @property
    def heads(self) -> tuple[str, ...]:
        return ("primary", *self.sub_heads)

    @property
    def ensemble_rule(self) -> str:
        return f"mean probabilities of each head, then the {self.options['decoding']} rule"

    # ------------------------------------------------------------------ training
    def head(self, d):
        return multi_head(d, {h: len(self.tasks[h].classes) for h in self.heads})

    def loss(self, out, y, weights=None):
        weights = weights or {}
        a, b = self.loss_weights[0], self.loss_weights[1]
        g = self.loss_weights[2] if len(self.loss_weights) > 2 else 0.0
        total = a * masked_ce(out["primary"], self.tasks["primary"].target(y), weights.get("primary"))
        for i, h in enumerate(self.sub_heads):
            total = total + (b if i == 0 else g) * masked_ce(out[h], self.tasks[h].target(y), weights.get(h))
        return total

    def outputs(self, out):
        import torch

        return torch.cat([out[h].float().softmax(1) for h in self.heads], dim=1)

    # ------------------------------------------------------------------ decoding
    def _split(self, outputs):
        parts, start = [], 0
        for h in self.heads:
            n = len(self.tasks[h].classes)
            parts.append(outputs[:, start : start + n])
            start += n
        return parts

    def predict(self, outputs, state):
        p1, *subs = self._split(outputs)
        rule = self.options["decoding"]
        if rule != "hard":
            return decode_probabilities(combine(p1, *subs, groups=self.groups), "argmax" if rule == "soft" else rule)
        group = p1.argmax(1)
        starts = np.array([g[0] for g in self.groups])
        within = np.zeros(len(outputs), dtype=np.int64)
        it = iter(subs)
        for j, g in enumerate(self.groups):
            if len(g) > 1:
                p = next(it)
                within = np.where(group == j, p.argmax(1), within)
        return starts[group] + within

    def proba(self, outputs, state):
        p1, *subs = self._split(outputs)
        return combine(p1, *subs, groups=self.groups)

    def task_predictions(self, outputs, state):
        return {h: p.argmax(1) for h, p in zip(self.heads, self._split(outputs))}

    def example_outputs(self, grades, confidence=0.8):
        grades = np.asarray(grades)
        n_groups = len(self.groups)
        group_of = np.array([j for j, g in enumerate(self.groups) for _ in g])[grades]

        def confident(index, n):
            p = np.full((len(grades), n), (1 - confidence) / max(n - 1, 1))
            p[np.arange(len(grades)), index] = confidence
            return p

        parts = [confident(group_of, n_groups)]
        for group in self.sub_groups:
            inside = (grades >= group[0]) & (grades <= group[-1])
            idx = np.clip(grades - group[0], 0, len(group) - 1)
            parts.append(np.where(inside[:, None], confident(idx, len(group)), 1.0 / len(group)))
        return np.concatenate(parts, axis=1)

    def gradcam_scores(self, out):
        import torch

        p = [out[h].float().softmax(1) for h in self.heads]
        subs = iter(p[1:])
        parts = []
        for j, g in enumerate(self.groups):
            parts.append(p[0][:, j : j + 1] * (next(subs) if len(g) > 1 else 1.0))
        return torch.log(torch.cat(parts, dim=1).clamp_min(1e-8))

    # ------------------------------------------------------------------ fine-tuning
    def task_weights(self, per_task_f1, options):
        return super().task_weights({t: f for t, f in per_task_f1.items() if t in self.tasks}, options)

    def finetune_overrides(self, per_task_f1, options):
        """`task_weights: true`: the loss weights ∝ 1 / macro-F1 of the tasks they weigh as well — α the primary
        head's, β the first sub-head's, γ the mean over the further sub-heads' (MES: α, β, γ of primary, remission,
        active)."""
        if not options.get("task_weights", False):
            return {}
        from .finetune import inverse_f1_task_weights

        f1 = [per_task_f1["primary"], per_task_f1[self.sub_heads[0]]]
        if len(self.sub_heads) > 1:
            f1.append(np.concatenate([np.atleast_1d(np.mean(per_task_f1[h])) for h in self.sub_heads[1:]]))
        w = inverse_f1_task_weights(f1, options.get("eps", 1e-3))
        return dict(zip(self.loss_weight_names(), map(float, w)))
