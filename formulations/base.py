"""The formulation contract: head, loss, per-image outputs, decoding, fold-ensembling, Grad-CAM targets.

A formulation turns the network's raw output into a small per-image float vector, its *outputs*
(class probabilities, cumulative probabilities, a score, per-head probabilities). Everything after
that is numpy: the grade a single model predicts and the grade a fold-ensemble predicts come from
the same `predict(outputs, state)`, applied to one model's outputs or to the combination of several
models' outputs. So an ensemble of one fold reproduces that fold's stored predictions exactly, and
the report can decode ensembles by each formulation's own rule without knowing any by name.

Importing this package must not import torch: the report side (torch-free) reads the decoding and
ensembling rules from here. Methods that need torch import it where they run.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from benchmark.errors import BenchError, closest
from benchmark.labels import MES, unnamed_grades

if TYPE_CHECKING:  # pragma: no cover
    import torch

State = dict[str, Any]  # a formulation's decoding parameters (e.g. fitted cut points), JSON-serialisable
RawOutput = Any  # the head's output: a tensor, or a dict of tensors for multi-head formulations

__all__ = [
    "Task",
    "MES_TASK",
    "Decoded",
    "Formulation",
    "NoOptions",
    "option_error",
    "ProbabilityFormulation",
    "ProbabilityOptions",
    "decode_probabilities",
    "class_weighted",
    "DECODING_RULES",
]


class NoOptions(BaseModel):
    """A formulation's options: a pydantic model, so a wrong value gets the same file-line-closest-name
    error in a suite as every other field."""

    model_config = ConfigDict(extra="forbid")


def option_error(name: str, exc: ValidationError, fields: list[str]) -> str:
    """One sentence per wrong option, with the closest valid name for a misspelt one."""
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown option {loc!r}: " + (closest(loc, fields) if fields else "it takes no options"))
        elif loc:
            msgs.append(f"option {loc!r}: {err['msg']} (got {err.get('input')!r})")
        else:
            msgs.append(str(err["msg"]).removeprefix("Value error, "))
    return f"formulation {name!r}: " + "; ".join(msgs)


@dataclass(frozen=True)
class Task:
    """A classification task derived from the MES grade: `labels[g]` is the task label of grade g, −1
    where images of that grade do not belong to the task (masked out of its loss and metrics)."""

    classes: tuple[str, ...]
    labels: tuple[int, ...]

    def target(self, y: Any) -> Any:
        """Task labels for grades `y` (numpy array or torch tensor, same type back)."""
        if isinstance(y, np.ndarray):
            return np.asarray(self.labels, dtype=np.int64)[y]
        import torch

        return torch.as_tensor(self.labels, dtype=torch.long, device=y.device)[y]


MES_TASK = Task(MES.classes, MES.grades)


def grade_task(names: tuple[str, ...]) -> Task:
    """The task of predicting the grade itself, on a scale of len(names) grades."""
    return MES_TASK if names == MES.classes else Task(tuple(names), tuple(range(len(names))))


@dataclass
class Decoded:
    """A batch decoded by one formulation (numpy)."""

    pred: np.ndarray  # (B,) MES grade
    outputs: np.ndarray  # (B, m) the formulation's per-image outputs, float64
    proba: np.ndarray | None = None  # (B, 4) class probabilities, where the formulation has them
    score: np.ndarray | None = None  # (B,) continuous score, where the formulation has one
    task_preds: dict[str, np.ndarray] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class Formulation(abc.ABC):
    """Subclass, set `name`, `description`, `output_names`; implement the abstract methods; register
    with @register_formulation in the same file."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference_text: ClassVar[str] = ""  # the paper it comes from, for `bench list`
    Options: ClassVar[type[BaseModel]] = NoOptions
    # The MES scale's, for code that asks the class; an instance has its own scale's (see __init__).
    tasks: dict[str, Task] = {"mes": MES_TASK}
    output_names: tuple[str, ...] = ()
    num_classes: int = MES.k
    class_names: tuple[str, ...] = MES.classes
    # The formulation the report compares others with by default (the flat baseline).
    is_reference: ClassVar[bool] = False
    # Options `bench tune` may search: loss weights on the simplex.
    tunable_weights: ClassVar[tuple[str, ...]] = ()
    # Which rule the fold-ensemble uses, in words, for the report's table note.
    ensemble_text: ClassVar[str] = "mean of the fold models' outputs, decoded by the formulation's own rule"
    # Why batch mixing (augment.mix) cannot train this formulation; empty: it can. Mixed batches train on
    # λ·L(y) + (1 − λ)·L(y′), the loss of the mixed soft target when L is a mean of per-image losses linear in
    # the target (cross-entropy, the binary cross-entropies of CORAL/CORN, squared errors up to a constant).
    mixing_refused: ClassVar[str] = ""

    @property
    def ensemble_rule(self) -> str:
        return self.ensemble_text

    def __init__(self, num_classes: int = MES.k, class_names: tuple[str, ...] | None = None, **options: Any) -> None:
        """`num_classes` grades (K), named `class_names` (default: MES's for K = 4); head, loss, decoding and
        tasks are sized by K."""
        names = tuple(class_names) if class_names is not None else unnamed_grades(num_classes)
        if num_classes < 2 or len(names) != num_classes:
            raise BenchError(
                f"formulation {self.name!r}: a scale of {num_classes} grades named {list(names)}; give at least two "
                "grades and one name per grade."
            )
        self.num_classes, self.class_names = num_classes, names
        self.options: dict[str, Any] = self.validate_options(options)
        self.check_scale()
        self.tasks = self.scale_tasks()
        self.output_names = self.scale_output_names()

    def check_scale(self) -> None:  # noqa: B027 (a hook: most formulations fit any scale)
        """Refuse options that do not fit this scale (e.g. K − 1 cut points), with a BenchError (default: none)."""

    def scale_tasks(self) -> dict[str, Task]:
        """The tasks on this scale (default: the grade itself)."""
        return {"mes": grade_task(self.class_names)}

    def scale_output_names(self) -> tuple[str, ...]:
        return type(self).output_names

    def loss_weight_names(self) -> tuple[str, ...]:
        """The loss-weight options this instance has (on its scale): what `bench tune` searches."""
        return type(self).tunable_weights

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        try:
            return cls.Options.model_validate(options or {}).model_dump()
        except ValidationError as exc:
            raise BenchError(option_error(cls.name, exc, list(cls.Options.model_fields)) + ".") from None

    # ------------------------------------------------------------------ training (torch)
    @abc.abstractmethod
    def head(self, d: int) -> torch.nn.Module:
        """The head module on the pooled d-dimensional features."""

    @abc.abstractmethod
    def loss(self, out: RawOutput, y: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss; `weights` maps a task name to per-class weights (fine-tuning stage)."""

    @abc.abstractmethod
    def outputs(self, out: RawOutput) -> torch.Tensor:
        """(B, len(output_names)) float: the per-image quantities stored, and averaged over fold models."""

    def gradcam_scores(self, out: RawOutput) -> torch.Tensor:
        """(B, n) differentiable scores whose column `gradcam_class(pred)` Grad-CAM explains for the grade."""
        scores: torch.Tensor = out
        return scores

    def gradcam_class(self, pred: np.ndarray) -> list[int]:
        return [int(p) for p in pred]

    # ------------------------------------------------------------------ decoding (numpy)
    @abc.abstractmethod
    def predict(self, outputs: np.ndarray, state: State) -> np.ndarray:
        """MES grades (B,) from outputs (B, m): of one model, or combined over fold models."""

    def proba(self, outputs: np.ndarray, state: State) -> np.ndarray | None:
        return None

    def score(self, outputs: np.ndarray) -> np.ndarray | None:
        return None

    def task_predictions(self, outputs: np.ndarray, state: State) -> dict[str, np.ndarray]:
        return {}

    def counters(self, outputs: np.ndarray) -> dict[str, int]:
        return {}

    def example_outputs(self, grades: np.ndarray, confidence: float = 0.8) -> np.ndarray:
        """Outputs of a model that predicts `grades` with the given confidence: for fake runs and tests
        (`predict(example_outputs(g), initial_state()) == g` must hold)."""
        raise NotImplementedError(f"formulation {self.name!r} gives no example outputs")

    def score_thresholds(self, state: State) -> list[float] | None:
        """Where a score-based decoding cuts its score into grades (for the report's score figure)."""
        return None

    def initial_state(self) -> State:
        """Decoding parameters before any fitting (e.g. fixed cut points)."""
        return {}

    @property
    def fits_decoding(self) -> bool:
        """True when `fit_decoding` learns something from labelled data: its validation metrics must then
        be cross-fitted, never computed on the data it was fitted on."""
        return False

    def fit_decoding(self, outputs: np.ndarray, y: np.ndarray) -> State:
        """Decoding parameters fitted on validation outputs (never on the test set)."""
        return self.initial_state()

    # ------------------------------------------------------------------ fold-ensembling (numpy)
    def combine_outputs(self, stacked: np.ndarray) -> np.ndarray:
        """(models, B, m) -> (B, m)."""
        combined: np.ndarray = stacked.mean(axis=0)
        return combined

    def combine_states(self, states: list[State]) -> State:
        """One decoding state for the ensemble from the fold models' states."""
        return states[0] if states else self.initial_state()

    def ensemble_predict(self, stacked: np.ndarray, states: list[State]) -> np.ndarray:
        return self.predict(self.combine_outputs(stacked), self.combine_states(states))

    # ------------------------------------------------------------------ helpers
    def decode(self, out: RawOutput, state: State | None = None) -> Decoded:
        """Raw network output -> everything stored for a batch; one path for every split and model."""
        o = self.outputs(out).detach().float().cpu().numpy().astype(np.float64)
        return self.decode_outputs(o, self.initial_state() if state is None else state)

    def decode_outputs(self, o: np.ndarray, state: State) -> Decoded:
        return Decoded(
            pred=np.asarray(self.predict(o, state), dtype=np.int64),
            outputs=o,
            proba=self.proba(o, state),
            score=self.score(o),
            task_preds=self.task_predictions(o, state),
            counters=self.counters(o),
        )

    def training_overrides(self, counts: dict[str, np.ndarray]) -> dict[str, Any]:
        """Option values a formulation takes from its fold's training labels (class counts per task), set by the
        harness before a cell trains (default: none; e.g. the class priors of a logit-adjusted loss)."""
        return {}

    def finetune_overrides(self, per_task_f1: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, Any]:
        """Option changes for the inverse-F1 stage beyond per-class weights (default: none)."""
        return {}

    def task_weights(self, per_task_f1: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, np.ndarray]:
        """Loss weights for the inverse-F1 fine-tuning stage; default: inverse F1 per class of every task."""
        from .finetune import inverse_f1_weights

        return {
            t: inverse_f1_weights(f1, options.get("eps", 1e-3), options.get("max_weight", 10.0))
            for t, f1 in per_task_f1.items()
        }


def weighted_mean(per_sample: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample losses, each weighted by its class's weight (sum w·l / sum w)."""
    if class_weights is None:
        return per_sample.mean()
    w = class_weights.to(per_sample.device, per_sample.dtype)[y]
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


def cumulative_to_class_proba(cum: np.ndarray) -> np.ndarray:
    """P(y > k) for k = 0..K-2  ->  P(y = k), clipped to [0, 1] and renormalised."""
    n = cum.shape[0]
    ext = np.concatenate([np.ones((n, 1)), cum, np.zeros((n, 1))], axis=1)
    proba = np.clip(ext[:, :-1] - ext[:, 1:], 0, 1)
    normalised: np.ndarray = proba / np.maximum(proba.sum(1, keepdims=True), 1e-12)
    return normalised


def ordinal_evidence(out: torch.Tensor) -> torch.Tensor:
    """(B, K−1) threshold logits -> (B, K) evidence for each grade k: Σ_{j<k} l_j − Σ_{j≥k} l_j, positive
    exactly when every threshold decision agrees with k (Grad-CAM target of ordinal heads)."""
    import torch

    k = out.shape[1] + 1
    signs = torch.where(torch.arange(k - 1)[None, :] < torch.arange(k)[:, None], 1.0, -1.0)
    return out @ signs.to(out).T


# ---------------------------------------------------------------------------- formulations with class probabilities

DECODING_RULES = ("argmax", "median", "expectation")


def decode_probabilities(proba: np.ndarray, rule: str) -> np.ndarray:
    """Grade from class probabilities: the mode (argmax), the median of the predictive distribution (first
    grade whose cumulative probability reaches 1/2) or the expected grade rounded half up."""
    if rule == "argmax":
        out: np.ndarray = proba.argmax(1)
    elif rule == "median":
        out = (np.cumsum(proba, axis=1) < 0.5 - 1e-12).sum(1)
    elif rule == "expectation":
        out = np.floor(proba @ np.arange(proba.shape[1], dtype=float) + 0.5).astype(np.int64)
    else:
        raise ValueError(f"unknown decoding rule {rule!r}")
    clipped: np.ndarray = np.clip(out, 0, proba.shape[1] - 1)
    return clipped


class ProbabilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decoding: Literal["argmax", "median", "expectation"] = "argmax"
    # temperature: a decoding step fitted on the validation fold (cross-fitted there, like cut points), which
    # changes the stored probabilities and the median/expectation decodings; the argmax never moves.
    calibration: Literal["none", "temperature"] = "none"


class ProbabilityFormulation(Formulation):
    """A formulation whose outputs are the class probabilities: it decodes (and a fold-ensemble decodes the
    mean probabilities) by the `decoding` option — an ablation axis of its own."""

    Options: ClassVar[type[BaseModel]] = ProbabilityOptions
    output_names = tuple(f"P({c})" for c in MES.classes)

    def scale_output_names(self) -> tuple[str, ...]:
        return tuple(f"P({c})" for c in self.class_names)

    @property
    def ensemble_rule(self) -> str:
        if self.scaled:
            return f"mean of each fold model's temperature-scaled class probabilities, {self.options['decoding']}"
        return f"mean class probabilities, {self.options['decoding']}"

    @property
    def scaled(self) -> bool:
        return self.options.get("calibration") == "temperature"

    @property
    def fits_decoding(self) -> bool:
        return self.scaled

    def fit_decoding(self, outputs: np.ndarray, y: np.ndarray) -> State:
        from benchmark.metrics import fit_temperature

        if not self.scaled:
            return self.initial_state()
        return {"temperature": fit_temperature(np.asarray(y), outputs)}

    def ensemble_predict(self, stacked: np.ndarray, states: list[State]) -> np.ndarray:
        if not self.scaled:
            return super().ensemble_predict(stacked, states)
        from benchmark.metrics import with_temperature

        scaled = [with_temperature(o, float((s or {}).get("temperature", 1.0))) for o, s in zip(stacked, states)]
        return decode_probabilities(np.mean(scaled, axis=0), self.options["decoding"])

    def head(self, d: int) -> torch.nn.Module:
        """Linear(d, K) logits, the input the default `probabilities` expects."""
        from torch import nn

        return nn.Linear(d, self.num_classes)

    def probabilities(self, out: RawOutput) -> torch.Tensor:
        """Class probabilities from the head's output (default: softmax of logits)."""
        return out.float().softmax(1)  # type: ignore[no-any-return]

    def outputs(self, out: RawOutput) -> torch.Tensor:
        return self.probabilities(out)

    def predict(self, outputs: np.ndarray, state: State) -> np.ndarray:
        proba = self.proba(outputs, state)
        assert proba is not None
        return decode_probabilities(proba, self.options["decoding"])

    def proba(self, outputs: np.ndarray, state: State) -> np.ndarray | None:
        if self.scaled and state.get("temperature", 1.0) != 1.0:
            from benchmark.metrics import with_temperature

            return with_temperature(outputs, float(state["temperature"]))
        return outputs

    def example_outputs(self, grades: np.ndarray, confidence: float = 0.8) -> np.ndarray:
        out = np.full((len(grades), self.num_classes), (1 - confidence) / (self.num_classes - 1))
        out[np.arange(len(grades)), grades] = confidence
        return out


def class_weighted(loss_fn: Any, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """A batch-mean loss with per-class sample weights, by calling the loss itself on each class's sub-batch:
    Σ_c n_c·w_c·L(batch_c) / Σ_c n_c·w_c — which is L(batch) exactly when all weights are equal."""
    if weights is None:
        return loss_fn(out, y)  # type: ignore[no-any-return]
    import torch

    w = weights.to(out.device, torch.float32)
    total = out.sum() * 0.0
    norm = out.sum() * 0.0
    for c in torch.unique(y).tolist():
        mask = y == c
        n = mask.sum()
        total = total + w[c] * n * loss_fn(out[mask], y[mask])
        norm = norm + w[c] * n
    return total / norm.clamp_min(1e-12)


# ---------------------------------------------------------------------------- formulations with P(y > k) outputs


def threshold_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """'P(MES > 0)' … on MES; 'P(y > grade 0)' … on another scale."""
    if names == MES.classes:
        return tuple(f"P(MES > {k})" for k in MES.grades[:-1])
    return tuple(f"P(y > {n})" for n in names[:-1])


class ThresholdOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # threshold: the package's rule (count of P(y > k) > 0.5); or a rule on the differenced class probabilities
    decoding: Literal["threshold", "argmax", "median", "expectation"] = "threshold"


class CumulativeFormulation(Formulation):
    """Outputs are the cumulative probabilities P(y > k), k = 0..K−2 (CORAL, CORN): the label is the count of
    them above 0.5 (or a `decoding` rule on the differenced class probabilities), and a fold-ensemble averages
    them before applying the same rule."""

    Options: ClassVar[type[BaseModel]] = ThresholdOptions
    output_names = threshold_names(MES.classes)

    def scale_output_names(self) -> tuple[str, ...]:
        return threshold_names(self.class_names)

    def predict(self, outputs: np.ndarray, state: State) -> np.ndarray:
        if self.options["decoding"] == "threshold":
            counted: np.ndarray = (outputs > 0.5).sum(1)
            return counted
        return decode_probabilities(cumulative_to_class_proba(outputs), self.options["decoding"])

    def proba(self, outputs: np.ndarray, state: State) -> np.ndarray | None:
        return cumulative_to_class_proba(outputs)

    def gradcam_scores(self, out: RawOutput) -> torch.Tensor:
        return ordinal_evidence(out)

    def example_outputs(self, grades: np.ndarray, confidence: float = 0.8) -> np.ndarray:
        above = np.asarray(grades)[:, None] > np.arange(self.num_classes - 1)[None, :]
        return np.where(above, confidence, 1 - confidence).astype(float)
