"""Optional experiment tracking users already run: MLflow (one run per cell, nested under one run per suite;
default store ./mlruns) and TensorBoard (event files per cell under RUN/tensorboard). The results store stays
the record; trackers mirror it for their UIs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..result import CellResult

FINAL = {
    ("mes", "accuracy", ""): "accuracy",
    ("mes", "f1", "macro"): "macro_f1",
    ("mes", "qwk", ""): "qwk",
    ("mes", "mae", ""): "mae",
    ("mes", "amae", ""): "amae",
    ("ra", "f1", ""): "ra_f1",
}


def final_metrics(result: CellResult) -> dict[str, float]:
    """The headline numbers of a finished cell, per split: val.accuracy, test.macro_f1, ..."""
    out = {}
    for r in result.metrics:
        name = FINAL.get((r["task"], r["metric"], r["cls"]))
        if name:
            out[f"{r['split']}.{name}"] = float(r["value"])
    return out


class MLflowTracker:
    def __init__(self, uri: str | None, out_dir: Path):
        try:
            import mlflow
        except ImportError:
            raise BenchError("--log mlflow needs MLflow: pip install 'mesbench[mlflow]'.") from None
        self.mlflow = mlflow
        # default: ./mlruns, as a SQLite store with its artifacts beside it (MLflow 3 retired the plain file store)
        local = Path.cwd() / "mlruns"
        self.artifacts = (local / "artifacts").as_uri() if uri is None else None
        if uri is None:
            local.mkdir(exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        elif uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user asked for a file store
        self.uri = uri
        self.child: Any = None

    def start_suite(self, suite, out_dir: Path):
        self.mlflow.set_tracking_uri(self.uri)
        if self.mlflow.get_experiment_by_name(suite.name) is None:
            self.mlflow.create_experiment(suite.name, artifact_location=self.artifacts)
        self.mlflow.set_experiment(suite.name)
        self.parent = self.mlflow.start_run(run_name=f"{suite.name} ({out_dir})")
        self.mlflow.log_params(
            {
                "suite": suite.name,
                "run_dir": str(out_dir),
                "protocol": suite.protocol.kind,
                "folds": suite.protocol.folds,
            }
        )

    def start_cell(self, cell, params: dict):
        self.child = self.mlflow.start_run(run_name=cell.label, nested=True)
        self.mlflow.log_params({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in params.items()})

    def epoch(self, row: dict):
        self.mlflow.log_metrics(
            {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
            step=int(row["epoch"]),
        )

    def end_cell(self, cell, result: CellResult | None, outcome: str):
        if self.child is None:
            return
        if result is not None:
            self.mlflow.log_metrics(final_metrics(result))
            self.mlflow.log_dict(result.confusion, "confusion.json")
        self.mlflow.set_tag("outcome", outcome)
        self.mlflow.end_run()
        self.child = None

    def close(self):
        if self.child is not None:
            self.mlflow.end_run()
        self.mlflow.end_run()


class TensorBoardTracker:
    def __init__(self, out_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise BenchError("--log tensorboard needs TensorBoard: pip install 'mesbench[tensorboard]'.") from None
        self.SummaryWriter = SummaryWriter
        self.root = Path(out_dir) / "tensorboard"
        self.writer: Any = None

    def start_suite(self, suite, out_dir: Path):
        self.root.mkdir(parents=True, exist_ok=True)

    def start_cell(self, cell, params: dict):
        name = "".join(c if c.isalnum() or c in "-+_." else "_" for c in cell.label.replace(" · ", "__"))
        self.writer = self.SummaryWriter(log_dir=str(self.root / name))
        self.writer.add_text("params", json.dumps(params, default=str))

    def epoch(self, row: dict):
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, float(v), int(row["epoch"]))

    def end_cell(self, cell, result: CellResult | None, outcome: str):
        if self.writer is None:
            return
        if result is not None:
            for k, v in final_metrics(result).items():
                self.writer.add_scalar(f"final/{k}", v, 0)
        self.writer.close()
        self.writer = None

    def close(self):
        if self.writer is not None:
            self.writer.close()


def make_trackers(specs: list[str], out_dir: Path) -> list:
    """`mlflow`, `mlflow=URI` or `tensorboard`, as given to `--log`."""
    trackers: list[Any] = []
    for spec in specs:
        kind, _, arg = spec.partition("=")
        if kind == "mlflow":
            trackers.append(MLflowTracker(arg or None, out_dir))
        elif kind == "tensorboard":
            trackers.append(TensorBoardTracker(out_dir))
        else:
            raise BenchError(f"--log {spec!r}: use mlflow, mlflow=URI or tensorboard.")
    return trackers
