"""The results store on a real PostgreSQL server (Debian's postgresql, a throwaway cluster started here):
the same schema, row-locked claims that never hand a cell out twice, a suite run and its report, and a
copy of an SQLite run into PostgreSQL."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_run import metrics_of

from benchmark.cli import main
from benchmark.result import CellResult
from benchmark.run.store import Store

ROOT = Path(__file__).resolve().parent.parent

# One pytest-xdist worker runs every test of the real services, so one PostgreSQL server and one Slurm cluster
# serve the whole session (`--dist loadgroup` in pyproject.toml).
pytestmark = pytest.mark.xdist_group("services")


def claim_storm(*args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "claim-storm"), *args], capture_output=True, text=True, timeout=600
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_32_concurrent_claimers_on_postgresql_claim_each_of_300_cells_once(pg_server):
    """The benchmark itself (scripts/claim-storm): every claimer walks all cells in its own order."""
    url = pg_server("storm")
    code, result, err = claim_storm("--store", url, "--claimers", "32", "--cells", "300")
    assert code == 0, err
    assert result["claimed_once"] and result["stored_done"] == 300 and result["errors"] == []
    rows = Store(url, create=False).cell_rows()  # read back independently of the script
    assert len(rows) == 300 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)


def test_8_concurrent_claimers_on_sqlite_claim_each_of_300_cells_once(tmp_path):
    code, result, err = claim_storm("--store", str(tmp_path), "--claimers", "8", "--cells", "300")
    assert code == 0, err
    assert result["engine"] == "sqlite" and result["claimed_once"] and result["stored_done"] == 300
    assert result["errors"] == []
    rows = Store(tmp_path, create=False).cell_rows()
    assert len(rows) == 300 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)


def test_a_suite_runs_and_reports_on_postgresql_like_on_sqlite(pg_server, make_suite, tmp_path, capsys):
    url = pg_server("suite")
    suite = make_suite(name="pg", formulations=["softmax", "coral"])
    lite, pg = tmp_path / "lite", tmp_path / "pg"
    assert main(["run", str(suite), "--out", str(lite), "--quiet"]) == 0
    assert main(["run", str(suite), "--out", str(pg), "--quiet", "--store", url]) == 0
    assert not (pg / "results.db").exists()  # the results went to the server
    store = Store(url, create=False)
    assert len(store.cell_rows()) == 4 and store.result(store.cell_rows()[0]["key"]).n_val > 0
    capsys.readouterr()
    assert main(["report", str(pg), "--store", url]) == 0
    md = capsys.readouterr().out
    assert "4 finished, 0 failed, 0 missing" in md and "Table 5" in md
    assert main(["check", str(pg), "--store", url, "--against", str(lite), "--tolerance", "0"]) == 0
    assert main(["explain", str(pg), "--store", url, "--per-class", "1", "-o", str(tmp_path / "cam")]) == 0
    assert sorted(p.name for p in (tmp_path / "cam").glob("*.png"))  # Grad-CAM grids from the server's run


def test_an_sqlite_run_copies_into_postgresql(pg_server, make_suite, tmp_path, capsys):
    url = pg_server("copied")
    suite = make_suite(name="cp", formulations=["softmax"])
    lite = tmp_path / "lite"
    assert main(["run", str(suite), "--out", str(lite), "--quiet"]) == 0
    assert main(["store", "copy", str(lite), url]) == 0
    a = Store(lite, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    b = Store(url, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    capsys.readouterr()
    assert main(["store", "copy", str(lite), url]) == 2  # never into a store that already holds cells
    assert "already holds cells" in capsys.readouterr().err
    assert main(["report", str(lite), "--store", url]) == 0
    store = Store(url, create=False)
    assert store.finish("nope", CellResult()) is False


SET_META = """
import sys, time
from benchmark.run.store import Store
store = Store(sys.argv[1], create=False)
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
for i in range(30):
    store.set_meta("protocol_hash", "abc")
    store.set_meta(f"key{i}", {"n": i})
"""


def test_workers_preparing_one_run_at_once_never_collide_on_its_metadata(pg_server, tmp_path):
    """Every worker (a Slurm array task, a process on another machine) writes the run's metadata as it starts;
    found by `bench submit --jobs 2` as a duplicate-key error in one job."""
    import time

    for url in (pg_server("meta"), str(tmp_path)):
        Store(url)
        start = time.time() + 3  # every process connected before the first write
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SET_META, url, str(start)], cwd=ROOT, stderr=subprocess.PIPE, text=True
            )
            for _ in range(12)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(e for e in errors if e)[-2000:]
        store = Store(url, create=False)
        assert store.get_meta("protocol_hash") == "abc" and store.get_meta("key29") == {"n": 29}


def test_two_copies_into_one_store_at_once_leave_exactly_one(pg_server, make_suite, tmp_path):
    import subprocess
    import sys

    url = pg_server("twocopies")
    lite = tmp_path / "lite"
    assert (
        main(["run", str(make_suite(name="c2", formulations=["softmax", "coral"])), "--out", str(lite), "--quiet"]) == 0
    )
    cmd = [sys.executable, "-m", "benchmark.cli", "store", "copy", str(lite), url]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outs) == [0, 2], outs
    err = " ".join(next(e for c, e in outs if c == 2).split())
    assert "internal error" not in err and ("already holds cells" in err or "finished first" in err)
    a = Store(lite, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    b = Store(url, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)  # one copy, whole, nothing twice


def test_a_postgresql_restart_mid_run_loses_nothing_and_the_run_resumes(pg_server, make_suite, tmp_path):
    import os
    import subprocess
    import sys
    import time

    url = pg_server("restarted")
    slow = {"params": {"n_images": 400, "n_patients": 40, "size": [32, 32], "seed": 1}}
    suite = make_suite(name="pgrestart", formulations=["softmax"], training={"epochs": 8}, dataset=slow)
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["run", str(suite), "--out", str(local), "--quiet"]) == 0
    cmd = [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(remote), "--store", url, "--quiet"]
    # the claim's heartbeat is what meets the stopped server mid-cell: every half second, not every ten; and the
    # failed process's claim goes stale in 2 s, not a minute, for the resuming one
    env = {**os.environ, "MESBENCH_HEARTBEAT_SECONDS": "0.5", "MESBENCH_STALE_SECONDS": "2"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 180
    while not list((remote / "cells").glob("*/last.pt")):  # part-way through a cell
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    pg_server.stop()
    try:
        code = proc.wait(timeout=180)
    finally:
        pg_server.start()
    err = " ".join(proc.stderr.read().split())
    assert code == 2 and "internal error" not in err and "run the same command again" in err, err
    assert subprocess.run(cmd, capture_output=True, text=True, env=env).returncode == 0  # resumed, server back
    rows = Store(url, create=False).cell_rows()
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    pd.testing.assert_frame_equal(metrics_of(local), metrics_of(url))


def test_a_store_copy_killed_part_way_leaves_the_target_empty_and_a_second_copy_completes(pg_server, tmp_path):
    """The kill lands at a known point, whatever the machine's speed: the child (the real `bench store copy`)
    signals once the run's metadata, cells and metrics are inside the target's open transaction and it is about
    to insert the predictions, then waits to be killed. A kill after a fixed delay was a race a fast machine
    lost (the copy had finished)."""
    import os
    import signal
    import time

    from fake_run import write_fake_run

    url = pg_server("killedcopy")
    lite = write_fake_run(
        tmp_path / "lite", backbones=("resnet18", "resnet50"), formulations=("softmax", "coral", "corn"), folds=10
    )
    flag = tmp_path / "part-way"
    child = f"""
import sys, time
from pathlib import Path
import benchmark.run.store as store
real_insert = store.insert
def insert_then_wait(table):
    if table is store.predictions:
        Path({str(flag)!r}).touch()
        time.sleep(600)
    return real_insert(table)
store.insert = insert_then_wait
from benchmark.cli import main
sys.exit(main(["store", "copy", {str(lite)!r}, {url!r}]))
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the copy never reached the predictions"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    target = Store(url, create=True)
    assert target.cell_rows() == []  # one transaction: nothing half-copied
    cmd = [sys.executable, "-m", "benchmark.cli", "store", "copy", str(lite), url]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    a = Store(lite, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    b = Store(url, create=False).predictions_frame().sort_values(["key", "split", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_a_missing_database_or_a_refused_tls_request_is_one_paragraph(pg_server, tmp_path, capsys):
    url = pg_server("present")
    base = url.rsplit("/", 1)[0]
    for bad in (f"{base}/nosuchdb", f"{url}?sslmode=require", url.replace("postgres@", "nobody@")):
        assert main(["report", str(tmp_path), "--store", bad]) == 2, bad
        err = " ".join(capsys.readouterr().err.split())
        assert "internal error" not in err and "could not be reached" in err, err


def test_a_store_created_by_another_process_between_look_and_insert_still_opens(pg_server, monkeypatch):
    """Workers (or two `store copy` commands) starting together on one empty database each find no schema row and
    insert it. The race is made certain here: just before this process inserts the row, "another process" (a
    second connection) commits the same row. The loser must open the store the winner made, not fail with a
    duplicate key reported as an unreachable database."""
    import sqlalchemy as sa

    import benchmark.run.store as store_module

    url = pg_server("race")
    Store(url, create=True).engine.dispose()  # the tables exist ...
    other = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with other.begin() as conn:  # ... but the schema row is not there yet
        conn.execute(sa.text("DELETE FROM meta WHERE key = 'schema_version'"))
    real_insert = store_module.insert

    def insert_after_the_other_process(table):
        if table is store_module.meta_table:
            with other.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', :v)"),
                    {"v": str(store_module.SCHEMA_VERSION)},
                )
        return real_insert(table)

    monkeypatch.setattr(store_module, "insert", insert_after_the_other_process)
    store = Store(url, create=True)
    assert store.get_meta("schema_version") is not None
    other.dispose()
