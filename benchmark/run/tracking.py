"""Optional experiment tracking users already run: MLflow (one run per cell, nested under one run per suite;
default store ./mlruns), TensorBoard (event files per cell under RUN/tensorboard) and Weights & Biases (one run per
cell, grouped by suite). The results store stays the record; trackers mirror it for their UIs."""

from __future__ import annotations

import json
import os
import sys
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
        # A tracking server that is down must not hold training up for minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # default: ./mlruns, as a SQLite store with its artifacts beside it (MLflow 3 retired the plain file store)
        local = Path.cwd() / "mlruns"
        self.artifacts = (local / "artifacts").as_uri() if uri is None else None
        if uri is None:
            local.mkdir(exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        elif uri.startswith("sqlite:///"):
            # MLflow would put a SQLite store's artifacts under ./mlruns of whatever directory it runs in;
            # they belong beside the database the user named.
            self.artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
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


class WandbTracker:
    """One W&B run per cell in the project (default: the suite's name), grouped by suite, so W&B's group view
    compares folds and formulations; config, one point per epoch, the final metrics in the run's summary and the
    confusion matrix as a table. W&B's own settings apply as set: WANDB_MODE=offline, WANDB_DIR, WANDB_ENTITY."""

    def __init__(self, project: str | None):
        try:
            import wandb
        except ImportError:
            raise BenchError("--log wandb needs Weights & Biases: pip install 'mesbench[wandb]'.") from None
        self.wandb = wandb
        self.project = project
        self.run: Any = None

    def start_suite(self, suite, out_dir: Path):
        self.group = suite.name
        self.project = self.project or suite.name
        self.run_dir = str(out_dir)

    def start_cell(self, cell, params: dict):
        self.run = self.wandb.init(
            project=self.project,
            group=self.group,
            job_type="cell",
            name=cell.label,
            config={**params, "run_dir": self.run_dir},
            reinit="create_new",
            settings=self.wandb.Settings(silent=True, console="off", save_code=False),
        )

    def epoch(self, row: dict):
        scalars = {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        self.run.log({"epoch": int(row["epoch"]), **scalars})

    def end_cell(self, cell, result: CellResult | None, outcome: str):
        if self.run is None:
            return
        if result is not None:
            self.run.summary.update(final_metrics(result))
            rows = [
                [split, true, pred, int(n)]
                for split, matrix in result.confusion.items()
                for true, counts in enumerate(matrix)
                for pred, n in enumerate(counts)
            ]
            self.run.log({"confusion": self.wandb.Table(columns=["split", "true", "predicted", "count"], data=rows)})
        self.run.summary["outcome"] = outcome
        self.run.finish(exit_code=1 if outcome == "failed" else 0)
        self.run = None

    def close(self):
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


class BestEffort:
    """Tracking mirrors the results store, so it must never fail the training: the first error of a tracker is
    reported once, with what was kept, and that tracker is switched off for the rest of the run."""

    def __init__(self, tracker, spec: str, warn=None):
        self.tracker, self.spec, self.failed = tracker, spec, False
        self.warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))

    def _call(self, name: str, *args):
        if self.failed:
            return
        try:
            getattr(self.tracker, name)(*args)
        except Exception as exc:  # any tracker error: the cell's results are already in the store
            self.failed = True
            first = (str(exc).splitlines() or [""])[0][:300]
            self.warn(
                f"warning: --log {self.spec} failed ({type(exc).__name__}: {first}); tracking is off for the rest of "
                "this run, training goes on and every result is kept in the results store (`bench report`)."
            )

    def start_suite(self, suite, out_dir: Path):
        self._call("start_suite", suite, out_dir)

    def start_cell(self, cell, params: dict):
        self._call("start_cell", cell, params)

    def epoch(self, row: dict):
        self._call("epoch", row)

    def end_cell(self, cell, result: CellResult | None, outcome: str):
        self._call("end_cell", cell, result, outcome)

    def close(self):
        self._call("close")


MLFLOW_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_mlflow_uri(uri: str, spec: str) -> None:
    """Refuse a tracking URI MLflow cannot use before anything trains, with the forms it takes."""
    scheme = uri.partition(":")[0].split("+")[0].lower() if ":" in uri else ""
    if scheme not in MLFLOW_SCHEMES or uri.partition(":")[2] in ("", "//"):
        raise BenchError(
            f"--log {spec!r}: {uri!r} is not an MLflow tracking URI. Use a server (mlflow=http://host:5000), a local "
            "database (mlflow=sqlite:///abs/path/mlflow.db), a folder (mlflow=file:///abs/path/mlruns), or plain "
            "--log mlflow for ./mlruns."
        )


def make_trackers(specs: list[str], out_dir: Path) -> list:
    """`mlflow`, `mlflow=URI`, `tensorboard`, `wandb` or `wandb=PROJECT`, as given to `--log`; each best-effort once
    running."""
    trackers: list[Any] = []
    for spec in specs:
        kind, _, arg = spec.partition("=")
        if kind == "mlflow":
            if arg:
                check_mlflow_uri(arg, spec)
            trackers.append(BestEffort(MLflowTracker(arg or None, out_dir), spec))
        elif kind == "tensorboard":
            trackers.append(BestEffort(TensorBoardTracker(out_dir), spec))
        elif kind == "wandb":
            if arg and not all(c.isalnum() or c in "-_." for c in arg):
                raise BenchError(
                    f"--log {spec!r}: a W&B project name takes letters, digits, '-', '_' and '.', e.g. "
                    "--log wandb=uc-grading (the entity comes from WANDB_ENTITY or your W&B login)."
                )
            trackers.append(BestEffort(WandbTracker(arg or None), spec))
        else:
            raise BenchError(f"--log {spec!r}: use mlflow, mlflow=URI, tensorboard, wandb or wandb=PROJECT.")
    return trackers
