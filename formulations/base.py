"""The formulation interface: head, loss, decoding — the only things formulations differ in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from benchmark.errors import BenchError, closest

NUM_CLASSES = 4


@dataclass(frozen=True)
class Task:
    """A classification task derived from the MES label; -1 marks images that do not belong to it."""

    classes: tuple[str, ...]
    target: Callable[[torch.Tensor], torch.Tensor]
    offset: int = 0  # task class k is MES grade k + offset (for per-class weights in MES terms)


MES_TASK = Task(("MES 0", "MES 1", "MES 2", "MES 3"), lambda y: y)


@dataclass
class Decoded:
    pred: torch.Tensor  # (B,) MES grade
    proba: torch.Tensor | None = None  # (B, 4) class probabilities, where the formulation has them
    score: torch.Tensor | None = None  # (B,) continuous score, where the formulation has one
    task_preds: dict[str, torch.Tensor] = field(default_factory=dict)  # extra tasks' predictions
    counters: dict[str, int] = field(default_factory=dict)  # diagnostics summed over batches


class Formulation:
    """Subclass, set `name`, implement `head`, `loss`, `decode`; register with @register_formulation."""

    name: str = ""
    description: str = ""
    defaults: dict[str, Any] = {}
    tasks: dict[str, Task] = {"mes": MES_TASK}

    def __init__(self, **options):
        bad = set(options) - set(self.defaults)
        if bad:
            k = sorted(bad)[0]
            raise BenchError(f"formulation {self.name!r}: unknown option {k!r}: "
                             f"{closest(k, self.defaults) if self.defaults else 'it takes no options'}.")
        self.options = {**self.defaults, **options}
        self.state: dict[str, Any] = {}  # decoding parameters fitted on validation data (e.g. cut points)

    def head(self, d: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, out, y: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss; `weights` maps a task name to per-class weights (inverse-F1 fine-tuning)."""
        raise NotImplementedError

    def decode(self, out) -> Decoded:
        raise NotImplementedError

    def fit_decoding(self, outputs, y: torch.Tensor) -> None:
        """Fit decoding parameters on the validation fold (never on the test set). Default: nothing."""

    def task_weights(self, per_task_f1: dict[str, "torch.Tensor"], options: dict) -> dict[str, torch.Tensor]:
        """Loss weights for the fine-tuning stage; default: inverse F1 per class of every task."""
        from .finetune import inverse_f1_weights

        return {t: torch.as_tensor(inverse_f1_weights(f1, options.get("eps", 1e-3)), dtype=torch.float32)
                for t, f1 in per_task_f1.items()}


def weighted_mean(per_sample: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None):
    """Mean of per-sample losses, each weighted by its class's weight (sum w·l / sum w)."""
    if class_weights is None:
        return per_sample.mean()
    w = class_weights.to(per_sample.device, per_sample.dtype)[y]
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)
