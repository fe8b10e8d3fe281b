"""Local workers: `bench run --workers N` spreads one suite over N processes that claim cells from the one
store; every cell is trained exactly once and the results equal a single-worker run. `bench status` shows it."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from test_run import metrics_of

from benchmark.errors import BenchError
from benchmark.run.store import Store

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, threads=None, env=None, timeout=600):
    """`bench ARGS` in a fresh process on the CPU (optionally with its thread count, or in another environment)."""
    env = {**(env or os.environ), "MESBENCH_DEVICE": "cpu"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def test_two_workers_train_each_cell_once_and_match_one_worker(make_suite, tmp_path):
    suite = make_suite(name="workers", formulations=["softmax", "coral", "mtl+f1"])
    one, two = tmp_path / "one", tmp_path / "two"
    # CPU results depend on the thread count (summation order); each of 2 workers on 2 cores gets 1 thread
    assert bench("run", str(suite), "--out", str(one), "--quiet", threads=1).returncode == 0
    proc = bench("run", str(suite), "--out", str(two), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 workers on" in proc.stderr
    # one display: every worker's lines, prefixed with the worker (no terminal here), one summary at the end
    lines = (proc.stdout + proc.stderr).splitlines()
    trained = [ln for ln in lines if ln.startswith("[worker ") and ": trained in" in ln]
    # which worker trained which cell depends on when each got past its imports (on a loaded CI machine the
    # second can start late); that two workers share cells is shown by the killed-worker test below
    assert len(trained) == 8 and {ln[:10] for ln in trained} <= {"[worker 0]", "[worker 1]"}
    assert any(ln.startswith("[worker ") and " · epoch 1 · " in ln for ln in lines)  # epochs as they happen
    assert proc.stdout.count("8 of 8 cells finished") == 1
    rows = Store(two, create=False).cell_rows()
    assert len(rows) == 8 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    owners = {r["owner"] for r in rows}
    assert 1 <= len(owners) <= 2 and len({ln[:10] for ln in trained}) == len(owners), owners
    pd.testing.assert_frame_equal(metrics_of(one), metrics_of(two))
    status = bench("status", str(two))
    assert status.returncode == 0
    text = " ".join(status.stdout.split())
    assert "8 done, 0 running, 0 failed, 0 pending" in text and "finished cells per worker" in text


def test_a_killed_worker_leaves_its_cell_to_the_other_which_resumes_it(make_suite, tmp_path):
    import signal
    import time

    slow = {"params": {"n_images": 800, "n_patients": 40, "size": [32, 32], "seed": 1}}  # a few seconds per cell
    suite = make_suite(name="kill", formulations=["softmax", "coral"], training={"epochs": 6}, dataset=slow)
    one, two = tmp_path / "one", tmp_path / "two"
    assert bench("run", str(suite), "--out", str(one), "--quiet", threads=1).returncode == 0
    env = {**os.environ, "MESBENCH_DEVICE": "cpu", "MESBENCH_STALE_SECONDS": "4"}
    cmd = [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(two), "--quiet", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    victim, deadline = None, time.time() + 300
    while victim is None:
        assert time.time() < deadline and proc.poll() is None, "no cell was seen part-way through"
        time.sleep(0.1)
        if not (two / "results.db").exists():
            continue
        try:
            rows = Store(two, create=False, readonly=True).cell_rows()
        except BenchError:  # the file exists a moment before the workers have created its tables
            continue
        for r in rows:
            if r["status"] == "running" and r["owner"] and (two / "cells" / r["key"] / "last.pt").exists():
                victim = r
                break
    os.kill(int(victim["owner"].split(":")[1]), signal.SIGKILL)  # owner ids are host:pid:uuid
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "was ended by signal 9" in err and "the other workers finished its cells" in err
    rows = {r["key"]: r for r in Store(two, create=False).cell_rows()}
    assert all(r["status"] == "done" for r in rows.values()) and len(rows) == 4
    assert rows[victim["key"]]["attempts"] == 2 and rows[victim["key"]]["owner"] != victim["owner"]
    pd.testing.assert_frame_equal(metrics_of(one), metrics_of(two))  # as if no worker had died


def test_devices_are_indices_into_the_gpus_this_process_sees():
    import pytest

    from benchmark.cli.run import device_ids
    from benchmark.errors import BenchError

    assert device_ids("0,1,2,3", None) == ["0", "1", "2", "3"]
    assert device_ids("0,1", "2,3") == ["2", "3"]  # inside a Slurm allocation without device cgroups
    assert device_ids("1", "GPU-aaaa,GPU-bbbb") == ["GPU-bbbb"]  # UUIDs pass through
    assert device_ids(None, "2,3") == []
    with pytest.raises(BenchError, match="counts them from 0 to 1"):
        device_ids("2", "2,3")
