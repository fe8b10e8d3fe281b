"""Nothing lost: SIGKILL and resume, two processes on one run directory, failed cells, Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from test_run import metrics_of
from torch import nn

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.run.store import Store
from formulations import FORMULATIONS
from formulations.base import Formulation

ENV = {
    **os.environ,
    "MESBENCH_DEVICE": "cpu",
    "OMP_NUM_THREADS": "1",
    "MESBENCH_STALE_SECONDS": "2",
    "MESBENCH_HEARTBEAT_SECONDS": "0.25",
}


def bench(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def slow_suite(make_suite):
    return make_suite(
        name="slow",
        formulations=["softmax", "mtl"],
        training={"epochs": 8, "lr": 0.003, "batch_size": 16, "early_stopping": 50},
    )


def _wait_for(predicate, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _epoch_of(last):
    try:
        return torch.load(last, weights_only=True)["state"]["epoch"]
    except Exception:
        return 0


@pytest.mark.slow
def test_sigkill_mid_cell_then_rerun_equals_uninterrupted(make_suite, tmp_path):
    suite = slow_suite(make_suite)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    p = bench("run", str(suite), "--out", str(ref), "--quiet")
    assert p.wait(timeout=300) == 0, p.stderr.read()

    p = bench("run", str(suite), "--out", str(killed), "--quiet")

    # kill once one cell is finished and another is part-way through its epochs
    def mid_cell():
        if not (killed / "results.db").exists():
            return False
        try:
            rows = Store(killed, create=False).cell_rows()
        except BenchError:  # the run has made the file and not yet its tables (a reader is refused, rightly)
            return False
        done = [r for r in rows if r["status"] == "done"]
        running = [r for r in rows if r["status"] == "running"]
        return bool(done) and any(2 <= _epoch_of(killed / "cells" / r["key"] / "last.pt") < 8 for r in running)

    assert _wait_for(mid_cell), "never caught the run mid-cell"
    p.send_signal(signal.SIGKILL)
    p.wait()
    rows = Store(killed, create=False).cell_rows()
    running = [r for r in rows if r["status"] == "running"]
    assert running, "the killed cell should still be claimed"
    key = running[0]["key"]
    before = torch.load(killed / "cells" / key / "last.pt", weights_only=True)["state"]
    done_before = {r["key"]: r["finished"] for r in rows if r["status"] == "done"}

    p = bench("run", str(suite), "--out", str(killed), "--quiet")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    rows = Store(killed, create=False).cell_rows()
    assert all(r["status"] == "done" for r in rows) and len(rows) == 4
    assert {r["key"]: r["finished"] for r in rows if r["key"] in done_before} == done_before  # kept, not redone
    # resumed from its last finished epoch: the epochs before the kill keep their original timings
    history = Store(killed, create=False).result(key).history
    assert [h["seconds"] for h in history[: before["epoch"]]] == [h["seconds"] for h in before["history"]]
    pd.testing.assert_frame_equal(metrics_of(ref), metrics_of(killed))


@pytest.mark.slow
def test_two_processes_on_one_run_directory_train_each_cell_once(make_suite, tmp_path):
    suite = make_suite(name="pair", formulations=["softmax", "regression", "coral", "mtl"])
    out = tmp_path / "shared"
    procs = [bench("run", str(suite), "--out", str(out), "--quiet") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = Store(out, create=False).cell_rows()
    assert len(rows) == 8 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    trained = [int(re.search(r"(\d+) trained", err).group(1)) for _, err in outputs]
    assert sum(trained) == 8


class NanLoss(Formulation):
    name = "nan_loss"
    description = "test-only: loss becomes NaN"
    output_names = ("a", "b", "c", "d")

    def head(self, d):
        return nn.Linear(d, 4)

    def loss(self, out, y, weights=None):
        return out.sum() * float("nan")

    def outputs(self, out):
        return out.softmax(1)

    def predict(self, outputs, state):
        return outputs.argmax(1)


def test_nan_cell_is_stored_failed_suite_goes_on_and_retry_retries(make_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(FORMULATIONS, NanLoss.name, NanLoss)
    if True:
        suite = make_suite(name="nan", formulations=["softmax", "nan_loss"])
        out = tmp_path / "nan"
        assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1
        rows = Store(out, create=False).cell_rows()
        assert {r["formulation"]: r["status"] for r in rows} == {"softmax": "done", "nan_loss": "failed"}
        assert all("nan" in (r["error"] or "").lower() for r in rows if r["status"] == "failed")
        capsys.readouterr()
        assert main(["report", str(out)]) == 0
        md = capsys.readouterr().out
        assert "INCOMPLETE RUN" in md and "Failed cells" in md and "nan_loss" in md
        assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1  # failed cells are not retried silently
        assert {r["attempts"] for r in Store(out, create=False).cell_rows() if r["status"] == "failed"} == {1}
        assert main(["run", str(suite), "--out", str(out), "--quiet", "--retry-failed"]) == 1
        failed = [r for r in Store(out, create=False).cell_rows() if r["status"] == "failed"]
        assert len(failed) == 2 and {r["attempts"] for r in failed} == {2}


@pytest.mark.slow
def test_ctrl_c_saves_the_epoch_and_says_how_to_resume(make_suite, tmp_path):
    suite = slow_suite(make_suite)
    out = tmp_path / "int"
    p = bench("run", str(suite), "--out", str(out), "--quiet")
    assert _wait_for(
        lambda: any(_epoch_of(f) >= 1 for f in (out / "cells").glob("*/last.pt")) if (out / "cells").exists() else False
    )
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "resume with the same `bench run` command" in err and "Traceback" not in err
    assert any(_epoch_of(f) >= 1 for f in (out / "cells").glob("*/last.pt"))
    p = bench("run", str(suite), "--out", str(out), "--quiet")
    assert p.wait(timeout=300) == 0
    assert all(r["status"] == "done" for r in Store(out, create=False).cell_rows())
