"""One typed cell result: what a finished cell is, written to the store by one function
(`Store.finish`) and read back by one loader (`Store.result`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SplitPredictions:
    """Per-image predictions of one split: truth, grade, and the formulation's outputs (what ensembles
    average), plus class probabilities / score / task predictions where the formulation has them."""

    ids: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    outputs: np.ndarray
    proba: np.ndarray | None = None
    score: np.ndarray | None = None
    task_preds: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self, split: str) -> list[dict[str, Any]]:
        rows = []
        for i, image_id in enumerate(self.ids):
            row: dict[str, Any] = {
                "split": split,
                "image_id": str(image_id),
                "y_true": int(self.y[i]),
                "y_pred": int(self.pred[i]),
                "score": None if self.score is None else float(self.score[i]),
                "aux": json.dumps({k: int(v[i]) for k, v in self.task_preds.items()}) if self.task_preds else None,
                "outputs": np.ascontiguousarray(self.outputs[i], dtype=np.float64).tobytes(),
                "proba": None if self.proba is None else np.ascontiguousarray(self.proba[i], np.float64).tobytes(),
            }
            rows.append(row)
        return rows


@dataclass
class CellResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # decoding state used for the test set
    timings: dict[str, Any] = field(default_factory=dict)
    device: str = ""  # the plan in words
    device_name: str = ""  # the GPU or CPU model
    amp: str = "off"  # autocast dtype, or off
    deterministic: bool = False
    compiled: bool = False
    threads: int = 0  # torch's CPU threads in the process that trained it (0: not recorded)
    resumed_from: int = 0  # the last saved epoch it resumed from after a kill (0: trained in one go)
    versions: dict[str, str] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    batch_size: int = 0
    input_size: list[int] | None = None
    norm_mean: list[float] = field(default_factory=list)
    norm_std: list[float] = field(default_factory=list)
    formulation_options: dict[str, Any] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    cross_fitted: bool = False
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # split -> K×K counts
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> formulation diagnostics
    checkpoint: str = ""
    # fine-tuning stage
    finetune: str | None = None
    stage1_key: str | None = None
    stage1_f1: dict[str, list[float]] | None = None
    class_weights: dict[str, list[float]] | None = None
    # long-format metric rows and per-image predictions (own tables in the store)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, SplitPredictions] = field(default_factory=dict)

    _TABLES = ("metrics", "predictions")

    def summary_json(self) -> str:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._TABLES}
        return json.dumps(doc, default=_json_default)

    @classmethod
    def from_summary(cls, text: str | None) -> CellResult | None:
        if text is None:
            return None
        doc: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)} - set(cls._TABLES)
        return cls(**{k: v for k, v in doc.items() if k in known})

    def metric_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.metrics]

    def prediction_rows(self) -> list[dict[str, Any]]:
        return [row for split, p in self.predictions.items() for row in p.rows(split)]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return str(obj)
