"""Local workers: `bench run --workers N` spreads one suite over N processes that claim cells from the one
store; every cell is trained exactly once and the results equal a single-worker run. `bench status` shows it."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from test_run import metrics_of

from benchmark.run.store import Store

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, threads=None):
    env = {**os.environ, "MESBENCH_DEVICE": "cpu"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def test_two_workers_train_each_cell_once_and_match_one_worker(make_suite, tmp_path):
    suite = make_suite(name="workers", formulations=["softmax", "coral", "mtl+f1"])
    one, two = tmp_path / "one", tmp_path / "two"
    # CPU results depend on the thread count (summation order); each of 2 workers on 2 cores gets 1 thread
    assert bench("run", str(suite), "--out", str(one), "--quiet", threads=1).returncode == 0
    proc = bench("run", str(suite), "--out", str(two), "--quiet", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 workers on" in proc.stderr
    rows = Store(two, create=False).cell_rows()
    assert len(rows) == 8 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    owners = {r["owner"] for r in rows}
    assert len(owners) == 2, owners  # both workers took cells
    pd.testing.assert_frame_equal(metrics_of(one), metrics_of(two))
    status = bench("status", str(two))
    assert status.returncode == 0
    text = " ".join(status.stdout.split())
    assert "8 done, 0 running, 0 failed, 0 pending" in text and "finished cells per worker" in text
