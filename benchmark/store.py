"""Results store: SQLite through SQLAlchemy in the run directory (a PostgreSQL URL can replace it).

One row per cell. A cell is claimed (status 'running', owner, heartbeat) before it trains, so two
processes never train the same cell; a claim whose owner died (same host, pid gone) or whose
heartbeat went stale is taken over. A finished cell's row, metrics and per-image predictions are
written in one transaction: the store never holds half a cell.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, event, insert,
                        select, update)
from sqlalchemy.exc import OperationalError

from .errors import BenchError

SCHEMA_VERSION = 1
STALE_SECONDS = float(os.environ.get("MESBENCH_STALE_SECONDS", 900))

meta = MetaData()
meta_table = Table("meta", meta, Column("key", String, primary_key=True), Column("value", Text))
cells = Table(
    "cells", meta,
    Column("key", String, primary_key=True),
    Column("backbone", String), Column("formulation", String), Column("seed", Integer), Column("fold", Integer),
    Column("config_hash", String), Column("status", String), Column("owner", String), Column("heartbeat", Float),
    Column("attempts", Integer), Column("started", Float), Column("finished", Float), Column("error", Text),
    Column("result", Text),
)
metrics = Table(
    "metrics", meta,
    Column("key", String, index=True), Column("split", String), Column("task", String), Column("metric", String),
    Column("cls", String), Column("value", Float),
)
predictions = Table(
    "predictions", meta,
    Column("key", String, index=True), Column("split", String), Column("image_id", String),
    Column("y_true", Integer), Column("y_pred", Integer),
    Column("p0", Float), Column("p1", Float), Column("p2", Float), Column("p3", Float), Column("score", Float),
    Column("aux", Text),
)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_dead(owner: str) -> bool:
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Store:
    def __init__(self, url_or_dir: str | Path, create: bool = True):
        url = str(url_or_dir)
        if "://" not in url:
            path = Path(url)
            if create:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                    probe = path / f".write-test-{os.getpid()}"
                    probe.write_text("")
                    probe.unlink()
                except OSError as exc:
                    raise BenchError(f"Output directory {str(path)!r} is not writable ({exc.strerror}). Choose "
                                     "another with --out, or fix its permissions.") from None
            elif not (path / "results.db").exists():
                raise BenchError(f"{str(path)!r} holds no results store (results.db). Give a run directory written "
                                 "by `bench run`.")
            url = f"sqlite:///{path / 'results.db'}"
        self.url = url
        self.engine = create_engine(url, connect_args={"timeout": 120} if url.startswith("sqlite") else {})
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _connect(dbapi_conn, _):
                dbapi_conn.isolation_level = None
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

            @event.listens_for(self.engine, "begin")
            def _begin(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        if create:
            retrying(meta.create_all, self.engine)  # two processes may create the same store at once
        retrying(self._check_schema, create)

    def _check_schema(self, create):
        with self.engine.begin() as conn:
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
            if row is None:
                if create:
                    conn.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            if int(row[0]) != SCHEMA_VERSION:
                raise BenchError(f"Store {self.url} was written with schema version {row[0]}, this mesbench reads "
                                 f"version {SCHEMA_VERSION}. Use a new run directory (--out), or the mesbench "
                                 "version that wrote it.")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key, default=None):
        with self.engine.connect() as conn:
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == key)).first()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key, value):
        with self.engine.begin() as conn:
            conn.execute(delete(meta_table).where(meta_table.c.key == key))
            conn.execute(insert(meta_table).values(key=key, value=json.dumps(value)))

    # ------------------------------------------------------------------ claims
    def claim(self, key: str, info: dict, retry_failed: bool = False) -> str:
        """'claimed' (this process trains it), 'done', 'failed' or 'busy' (another live process has it)."""
        me, now = owner_id(), time.time()
        with self.engine.begin() as conn:
            row = conn.execute(select(cells.c.status, cells.c.owner, cells.c.heartbeat, cells.c.attempts)
                               .where(cells.c.key == key)).first()
            if row is None:
                conn.execute(insert(cells).values(key=key, status="running", owner=me, heartbeat=now, attempts=1,
                                                  started=now, **info))
                return "claimed"
            status, owner, heartbeat, attempts = row
            if status == "done":
                return "done"
            if status == "failed" and not retry_failed:
                return "failed"
            if status == "running" and owner != me and not _owner_dead(owner) and now - heartbeat < STALE_SECONDS:
                return "busy"
            conn.execute(update(cells).where(cells.c.key == key).values(
                status="running", owner=me, heartbeat=now, attempts=(attempts or 0) + 1, error=None))
            return "claimed"

    def heartbeat(self, key):
        with self.engine.begin() as conn:
            conn.execute(update(cells).where((cells.c.key == key) & (cells.c.owner == owner_id()))
                         .values(heartbeat=time.time()))

    def release(self, key):
        """Give a claim back (Ctrl-C): the cell stays resumable from its last epoch checkpoint."""
        with self.engine.begin() as conn:
            conn.execute(update(cells).where((cells.c.key == key) & (cells.c.owner == owner_id())
                                             & (cells.c.status == "running")).values(heartbeat=0.0, owner=""))

    def status(self, key):
        with self.engine.connect() as conn:
            row = conn.execute(select(cells.c.status).where(cells.c.key == key)).first()
        return None if row is None else row[0]

    def fail(self, key, reason: str):
        with self.engine.begin() as conn:
            conn.execute(update(cells).where(cells.c.key == key).values(status="failed", error=reason,
                                                                         finished=time.time()))

    def finish(self, key, result: dict, metric_rows: list[dict], prediction_rows: list[dict]):
        with self.engine.begin() as conn:
            conn.execute(delete(metrics).where(metrics.c.key == key))
            conn.execute(delete(predictions).where(predictions.c.key == key))
            if metric_rows:
                conn.execute(insert(metrics), [dict(r, key=key) for r in metric_rows])
            if prediction_rows:
                conn.execute(insert(predictions), [dict(r, key=key) for r in prediction_rows])
            conn.execute(update(cells).where(cells.c.key == key).values(
                status="done", finished=time.time(), error=None, result=json.dumps(result, default=_json_default)))

    # ------------------------------------------------------------------ reading
    def cell_rows(self):
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(cells))]

    def result(self, key):
        with self.engine.connect() as conn:
            row = conn.execute(select(cells.c.result).where(cells.c.key == key)).first()
        return None if row is None or row[0] is None else json.loads(row[0])

    def metrics_frame(self, key=None):
        import pandas as pd

        q = select(metrics) if key is None else select(metrics).where(metrics.c.key == key)
        with self.engine.connect() as conn:
            return pd.read_sql(q, conn)

    def predictions_frame(self, split=None, columns=None):
        import pandas as pd

        cols = columns or [c.name for c in predictions.columns]
        sql = f"SELECT {', '.join(cols)} FROM predictions" + (" WHERE split = ?" if split else "")
        # The raw DB-API cursor: SQLAlchemy's row objects cost seconds on a paper-sized run.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, (split,) if split else ())
            rows = cur.fetchall()
        finally:
            raw.close()
        return pd.DataFrame.from_records(rows, columns=cols)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


def retrying(fn, *args, attempts=5, **kwargs):
    """SQLite under several writers can still report 'database is locked' past its timeout."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except OperationalError:
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))
