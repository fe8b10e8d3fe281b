"""Experiment tracking, read back with each library's own reader: MlflowClient on a local store and
TensorBoard's event accumulator."""

import json

import pytest

from benchmark.cli import main


def test_mlflow_one_run_per_cell_under_one_suite_run(make_suite, tmp_path):
    from mlflow.tracking import MlflowClient

    suite = make_suite(name="tracked", formulations=["softmax", "mtl"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        main(
            ["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0", "--log", f"mlflow={uri}"]
        )
        == 0
    )
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert child.data.params["backbone"] == "tiny" and child.data.params["fold"] == "0"
        assert 0 <= child.data.metrics["val.macro_f1"] <= 1 and "test.accuracy" in child.data.metrics
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == [1, 2]  # one point per epoch
        path = client.download_artifacts(child.info.run_id, "confusion.json", str(tmp_path / child.info.run_id))
        with open(path) as fh:
            confusion = json.load(fh)
        assert len(confusion["val"]) == 4 and sum(map(sum, confusion["val"])) > 0


def test_tensorboard_event_files_per_cell(make_suite, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    suite = make_suite(name="tb", formulations=["softmax"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0", "--log", "tensorboard"]) == 0
    cells = [d for d in (out / "tensorboard").iterdir() if d.is_dir()]
    assert len(cells) == 1
    acc = EventAccumulator(str(cells[0]))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "train_loss" in scalars and "final/val.accuracy" in scalars
    assert [e.step for e in acc.Scalars("val_loss")] == [1, 2]


def test_unknown_tracker_is_a_clear_error(make_suite, tmp_path, capsys):
    suite = make_suite(name="bad", formulations=["softmax"])
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--log", "comet"]) == 2
    assert "use mlflow, mlflow=URI, tensorboard, wandb or wandb=PROJECT" in capsys.readouterr().err
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--log", "wandb=my project/x"]) == 2
    assert "W&B project name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def wandb_records(path):
    """The records of a W&B transaction log (run-ID.wandb), read with W&B's own protobuf classes: LevelDB-style
    32 KiB blocks of chunks (crc32, length, type), after the ':W&B' header. W&B ships no reader for offline runs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def key_of(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B writes a key flat or as its path


def test_wandb_offline_one_run_per_cell_with_its_final_metrics(make_suite, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    suite = make_suite(name="wb", formulations=["softmax", "coral"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0", "--log", "wandb=uc-grading"]) == 0
    logs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2  # one per cell
    from reports.load import load_run

    stored = load_run(out).long.query("split == 'val' and task == 'mes' and metric == 'f1' and cls == 'macro'")
    seen = set()
    for log in logs:
        runs, summary, epochs, exit_codes = [], {}, [], []
        for rec in wandb_records(log):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                runs.append(rec.run)
            elif kind == "summary":
                summary.update({key_of(item): json.loads(item.value_json) for item in rec.summary.update})
            elif kind == "history":
                items = {key_of(item): item.value_json for item in rec.history.item}
                if "epoch" in items:
                    epochs.append(int(items["epoch"]))
            elif kind == "exit":
                exit_codes.append(rec.exit.exit_code)
        (run,) = runs
        assert run.project == "uc-grading" and run.run_group == "wb" and run.job_type == "cell"
        formulation = run.display_name.split(" · ")[1]
        seen.add(formulation)
        assert epochs == [1, 2] and exit_codes == [0]
        value = stored[stored.formulation == formulation].value
        assert summary["val.macro_f1"] == pytest.approx(float(value.iloc[0]), abs=1e-9)  # the stored number
        assert "test.accuracy" in summary and summary["confusion/nrows"] == 2 * 16  # val and test, K×K rows
    assert seen == {"softmax", "coral"}


def test_mlflow_defaults_to_a_local_mlruns_folder(make_suite, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    suite = make_suite(name="local", formulations=["softmax"])
    assert main(["run", str(suite), "--quiet", "--only", "fold=0", "--log", "mlflow"]) == 0
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert len(runs) == 2  # the suite's run and its one cell


def test_a_tracker_that_fails_mid_run_is_switched_off_and_training_goes_on(make_suite, tmp_path, monkeypatch, capsys):
    """The audit killed the MLflow server after the first cell: 5 of 6 cells were marked failed."""
    from benchmark.run import tracking

    class Flaky:
        def __init__(self):
            self.cells = 0

        def start_suite(self, suite, out_dir): ...

        def start_cell(self, cell, params):
            self.cells += 1
            if self.cells > 1:
                raise ConnectionError("runs/create: connection refused")

        def epoch(self, row): ...

        def end_cell(self, cell, result, outcome): ...

        def close(self): ...

    flaky = Flaky()
    monkeypatch.setattr(tracking, "TensorBoardTracker", lambda out_dir: flaky)
    suite = make_suite(name="outage", formulations=["softmax", "coral", "corn"])
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--log", "tensorboard"]) == 0
    err = capsys.readouterr().err
    assert err.count("tracking is off for the rest of this run") == 1 and "ConnectionError" in err
    from benchmark.run.store import Store

    rows = Store(tmp_path / "run", create=False).cell_rows()
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)


def test_an_unreachable_tracking_server_warns_once_and_keeps_every_result(make_suite, tmp_path, capsys):
    suite = make_suite(name="down")
    log = "mlflow=http://127.0.0.1:1"
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--log", log]) == 0
    assert capsys.readouterr().err.count("tracking is off") == 1


@pytest.mark.parametrize("uri", ["garbage://x", "runs/mlflow", "://", "sqlite:"])
def test_a_tracking_uri_mlflow_cannot_use_is_refused_before_training(make_suite, tmp_path, capsys, uri):
    suite = make_suite(name="baduri")
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--log", f"mlflow={uri}"]) == 2
    err = capsys.readouterr().err
    assert "is not an MLflow tracking URI" in err and "internal error" not in err
    assert not (tmp_path / "run" / "results.db").exists()


def test_mlflow_artifacts_of_a_sqlite_store_land_beside_it_not_in_the_working_directory(make_suite, tmp_path):
    import os

    suite = make_suite(name="art")
    before = set(os.listdir("."))
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    assert (
        main(
            ["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0", "--log", f"mlflow={uri}"]
        )
        == 0
    )
    assert set(os.listdir(".")) == before  # nothing new in the directory the tests run from
    assert list((tmp_path / "db" / "artifacts").rglob("confusion.json"))
