"""Results store: SQLite through SQLAlchemy in the run directory (a PostgreSQL URL can replace it).

One row per cell. A cell is claimed (status 'running', owner, heartbeat) before it trains, so two
processes never train the same cell. The owner id is random per process (host names and pids repeat
across containers); a background thread refreshes the heartbeat every HEARTBEAT_SECONDS while the cell
trains, and a claim is taken over only when its heartbeat is older than STALE_SECONDS. Writes that
end a cell (finish, fail) check that the writer still owns it, so a superseded worker can never
overwrite the new owner's result. A finished cell's row, metrics and per-image predictions are written
in one transaction: the store never holds half a cell.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import (
    URL,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError

from ..errors import BenchError, env_number
from ..result import CellResult
from .location import check_store_url, sqlite_url

# 3: a scale of any K grades — the class probabilities are one packed column (`proba`), not p0..p3.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # version 2 (MES's four grades, columns p0..p3) is read, never written
STARTING_SECONDS = 5.0  # a store file this new without tables is a run that is starting: a reader waits this long
STALE_SECONDS = env_number("MESBENCH_STALE_SECONDS", 60)
HEARTBEAT_SECONDS = env_number("MESBENCH_HEARTBEAT_SECONDS", min(10.0, STALE_SECONDS / 4))
if HEARTBEAT_SECONDS * 2 > STALE_SECONDS:  # a live cell's claim would go stale between two beats and be taken over
    raise BenchError(
        f"MESBENCH_HEARTBEAT_SECONDS={HEARTBEAT_SECONDS:g} and MESBENCH_STALE_SECONDS={STALE_SECONDS:g}: a claim is "
        "taken over once its heartbeat is older than the stale time, so a cell that is still training would be "
        "trained twice. Keep the heartbeat at most half the stale time (the default is a quarter, at most 10 s), or "
        "unset MESBENCH_HEARTBEAT_SECONDS."
    )
R = TypeVar("R")
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

meta = MetaData()
meta_table = Table("meta", meta, Column("key", String, primary_key=True), Column("value", Text))
cells = Table(
    "cells",
    meta,
    Column("key", String, primary_key=True),
    Column("backbone", String),
    Column("formulation", String),
    Column("seed", Integer),
    Column("fold", Integer),
    Column("config_hash", String),
    Column("status", String),
    Column("owner", String),
    Column("heartbeat", Float),
    Column("attempts", Integer),
    Column("started", Float),
    Column("finished", Float),
    Column("error", Text),
    Column("result", Text),
)
metrics = Table(
    "metrics",
    meta,
    Column("key", String, index=True),
    Column("split", String),
    Column("task", String),
    Column("metric", String),
    Column("cls", String),
    Column("value", Float),
)
predictions = Table(
    "predictions",
    meta,
    Column("key", String, index=True),
    Column("split", String),
    Column("image_id", String),
    Column("y_true", Integer),
    Column("y_pred", Integer),
    Column("proba", LargeBinary),  # the K class probabilities (float64 bytes), where the formulation has them
    Column("score", Float),
    Column("aux", Text),
    # the formulation's per-image outputs (float64 bytes): what fold-ensembles average and decode
    Column("outputs", LargeBinary),
)


def owner_id() -> str:
    return OWNER


class Store:
    def __init__(self, url_or_dir: str | Path, create: bool = True, readonly: bool = False) -> None:
        text = str(url_or_dir)
        url: str | URL = text
        self.readonly = readonly
        self._creating = create
        if "://" not in text:
            path = Path(text)
            if create:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                    probe = path / f".write-test-{uuid.uuid4().hex}"
                    probe.write_text("")
                    probe.unlink()
                except OSError as exc:
                    raise BenchError(
                        f"Output directory {str(path)!r} is not writable ({exc.strerror}). Choose "
                        "another with --out, or fix its permissions."
                    ) from None
            elif not (path / "results.db").exists():
                raise BenchError(
                    f"{str(path)!r} holds no results store (results.db). Give a run directory written by `bench run`."
                )
            self.where = str(path / "results.db")
            url = sqlite_url(path / "results.db", readonly)
        else:
            self.where = text
            check_store_url(text)
        self.url = url
        sqlite = str(url).startswith("sqlite")
        if str(url).startswith("postgresql://"):
            url = "postgresql+psycopg://" + str(url)[len("postgresql://") :]  # psycopg 3, not SQLAlchemy's default
        self.engine = create_engine(url, connect_args={"timeout": 120} if sqlite else {}, pool_pre_ping=not sqlite)
        store = self

        if sqlite:  # a server's transient errors are its driver's to report; a damaged file is ours to explain

            @event.listens_for(self.engine, "handle_error")
            def _explain(ctx: Any) -> None:
                raise store.explain_error(ctx.original_exception) from None

        if sqlite and not readonly:

            @event.listens_for(self.engine, "connect")
            def _connect(dbapi_conn: Any, _: Any) -> None:
                dbapi_conn.isolation_level = None
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        self._leaves_wal: Path | None = None  # a read-only reader that made SQLite's -wal/-shm files removes them
        if sqlite and readonly and "://" not in text:
            db = Path(text) / "results.db"
            if not db.with_name(db.name + "-wal").exists() and os.access(db.parent, os.W_OK):
                self._leaves_wal = db
                import atexit

                atexit.register(self.close)
        self._refuse_foreign_database()
        if create:
            try:
                retrying(meta.create_all, self.engine)  # two processes may create the same store at once
            except DatabaseError as exc:
                if sqlite:
                    raise
                from sqlalchemy import inspect

                if not {"meta", "cells", "metrics", "predictions"} <= set(inspect(self.engine).get_table_names()):
                    raise BenchError(f"Store {self.where}: cannot create its tables ({exc.orig}).") from None
        self.schema_version = SCHEMA_VERSION
        retrying(self._check_schema, create)

    def _disk_full(self) -> bool:
        """Whether the store's folder has no room left: a full disk makes SQLite fail in ways that read like damage."""
        import shutil

        if "://" in self.where:
            return False
        try:
            return shutil.disk_usage(Path(self.where).parent).free < (256 << 10)
        except OSError:
            return False

    def _refuse_foreign_database(self) -> None:
        """Never create tables in (or read results from) a database that is not a mesbench store: one whose tables
        are another program's, without our `meta` table, is left untouched and named."""
        from sqlalchemy import inspect

        names = set(retrying(lambda: inspect(self.engine).get_table_names()))
        if not names and not self._creating and self._just_made():
            # a `bench run` makes the file, then its tables: a reader in between (`bench status` on a run that is
            # starting) waits for them rather than calling the store empty
            deadline = time.monotonic() + STARTING_SECONDS
            while not names and time.monotonic() < deadline:
                time.sleep(0.1)
                names = set(retrying(lambda: inspect(self.engine).get_table_names()))
        if "meta" in names:
            return
        ours = {"meta", "cells", "metrics", "predictions"}
        if names - ours:
            others = ", ".join(sorted(names - ours)[:6])
            raise BenchError(
                f"Store {self.where} is another program's database (tables {others}; no mesbench `meta` table). "
                "mesbench writes nothing there: give a new, empty database (one per run) or a run directory."
            )
        if not names and not self._creating:
            raise BenchError(
                f"Store {self.where} holds no mesbench results (it has no tables). Give the store a `bench run` "
                "wrote to, or a run directory."
            )

    def _just_made(self) -> bool:
        """Whether the store is a run directory's file made moments ago (by a run that is starting)."""
        if "://" in self.where:
            return False
        try:
            return time.time() - Path(self.where).stat().st_mtime < STARTING_SECONDS
        except OSError:
            return False

    def explain_error(self, exc: BaseException) -> Exception:
        """A database error as one paragraph naming the store and the fix; 'locked' stays retryable."""
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return OperationalError("", {}, exc)
        if "readonly" in text or "read-only" in text:
            return BenchError(
                f"Store {self.where} is read-only ({exc}). `bench run` must write to it: make the run "
                "directory writable, or copy it and run on the copy (`report`, `check` and `explain` "
                "only read)."
            )
        if "full" in text or getattr(exc, "errno", None) == errno.ENOSPC or self._disk_full():
            return BenchError(
                f"Store {self.where}: the disk is full ({exc}). The store itself is intact: free space there (SQLite "
                "needs a little room even to read), or train into another run directory with --out; finished cells "
                "are kept, the interrupted one resumes."
            )
        return BenchError(
            f"Store {self.where} cannot be read as a results database ({type(exc).__name__}: {exc}). "
            "The file is damaged or is not a mesbench store: move it away and run the suite again "
            "into a new directory (--out), or restore the file from a backup."
        )

    def _check_schema(self, create: bool) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
        if row is None:
            if create:
                from sqlalchemy.exc import IntegrityError

                try:
                    with self.engine.begin() as conn:
                        if (
                            conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
                            is None
                        ):
                            conn.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
                except IntegrityError:
                    # Another process created the same new store between our look and our insert (two workers,
                    # or two `store copy` commands, starting at once on one PostgreSQL database): it wrote the
                    # very row we meant to; check its version like any existing store's.
                    self._check_schema(create=False)
            return
        self.schema_version = int(row[0])
        if self.schema_version in READABLE_VERSIONS and self.schema_version != SCHEMA_VERSION and not create:
            return  # an older run, read as it is (predictions_frame knows its columns)
        if self.schema_version != SCHEMA_VERSION:
            raise BenchError(
                f"Store {self.where} was written with schema version {row[0]}, this mesbench reads "
                f"version {SCHEMA_VERSION}"
                + (" (and reads the older one for reports, but adds no cell to it)" if create else "")
                + ". Use a new run directory (--out), or the mesbench version that wrote it."
            )

    def copy_to(self, other: Store, batch: int = 20_000) -> dict[str, int]:
        """Every row of this store into another (e.g. an SQLite run into PostgreSQL); the target must be empty
        of cells. Returns rows copied per table."""
        if self.schema_version != SCHEMA_VERSION:
            raise BenchError(
                f"Store {self.where} was written with schema version {self.schema_version}; this mesbench reads it for "
                f"reports but copies only version {SCHEMA_VERSION} stores. Copy it with the mesbench version that "
                "wrote it."
            )
        if other.cell_rows():
            raise BenchError(f"Store {other.where} already holds cells: copy into an empty store (one run per store).")
        from sqlalchemy.exc import IntegrityError

        counts = {}
        try:
            with self.engine.connect() as src, other.engine.begin() as dst:
                dst.execute(delete(meta_table))
                for table in (meta_table, cells, metrics, predictions):
                    n = 0
                    result = src.execute(select(table)).mappings()
                    while chunk := result.fetchmany(batch):
                        dst.execute(insert(table), [dict(r) for r in chunk])
                        n += len(chunk)
                    counts[table.name] = n
        except IntegrityError:  # the one transaction was rolled back: the target holds the other copy, whole
            raise BenchError(
                f"Store {other.where}: another copy into it finished first (its cells are already there), so this "
                "one was rolled back and wrote nothing. Use that copy, or copy into a new, empty store."
            ) from None
        return counts

    def close(self) -> None:
        """Fold the write-ahead log into results.db and drop pooled connections: the run directory is then one
        self-contained file that reads anywhere, read-only and archived included."""
        if not self.readonly and str(self.url).startswith("sqlite"):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except Exception:
                pass
        self.engine.dispose()
        if self._leaves_wal is not None and self._leaves_wal.with_name(self._leaves_wal.name + "-wal").exists():
            # A read-only connection cannot remove the -wal and -shm files SQLite made for it; the last connection to
            # close does (a writer still open keeps them, as it should). This one reads one row and writes nothing.
            try:
                con = sqlite3.connect(f"file:{quote(str(self._leaves_wal))}?mode=rw", uri=True, timeout=1)
                try:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    con.close()
            except sqlite3.Error:
                pass
            self._leaves_wal = None

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == key)).first()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """An atomic upsert: workers on several machines prepare the same run at the same moment, and a
        delete-then-insert would let two of them insert the same key."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
        text = json.dumps(value)
        statement = upsert(meta_table).values(key=key, value=text)
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["key"], set_={"value": text}))

    # ------------------------------------------------------------------ claims
    def claim(self, key: str, info: dict[str, Any], retry_failed: bool = False) -> str:
        """'claimed' (this process trains it), 'done', 'failed' or 'busy' (another live owner has it).

        SQLite serialises claims with BEGIN IMMEDIATE; PostgreSQL locks the row (`FOR UPDATE SKIP LOCKED`), so a
        row another claimer is deciding on right now reads as busy, and a racing first insert loses cleanly."""
        me, now = owner_id(), time.time()
        postgres = self.engine.dialect.name == "postgresql"
        query = select(cells.c.status, cells.c.owner, cells.c.heartbeat, cells.c.attempts).where(cells.c.key == key)
        with self.engine.begin() as conn:
            if postgres:
                exists = conn.execute(select(cells.c.key).where(cells.c.key == key)).first() is not None
                row = conn.execute(query.with_for_update(skip_locked=True)).first()
                if row is None and exists:
                    return "busy"  # another worker holds the row's lock this instant
            else:
                row = conn.execute(query).first()
            if row is None:
                inserted = insert(cells).values(
                    key=key, status="running", owner=me, heartbeat=now, attempts=1, started=now, **info
                )
                if postgres:
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    won = conn.execute(
                        pg_insert(cells)
                        .values(key=key, status="running", owner=me, heartbeat=now, attempts=1, started=now, **info)
                        .on_conflict_do_nothing(index_elements=["key"])
                        .returning(cells.c.key)
                    ).first()
                    return "claimed" if won is not None else "busy"
                conn.execute(inserted)
                return "claimed"
            status, owner, heartbeat, attempts = row
            if status == "done":
                return "done"
            if status == "failed" and not retry_failed:
                return "failed"
            if status == "running" and owner and owner != me and now - (heartbeat or 0) < STALE_SECONDS:
                return "busy"
            conn.execute(
                update(cells)
                .where(cells.c.key == key)
                .values(status="running", owner=me, heartbeat=now, attempts=(attempts or 0) + 1, error=None)
            )
            return "claimed"

    def heartbeat(self, key: str) -> bool:
        """Refresh this process's claim; False when the claim is no longer ours."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(cells)
                .where((cells.c.key == key) & (cells.c.owner == owner_id()) & (cells.c.status == "running"))
                .values(heartbeat=time.time())
            )
        return res.rowcount == 1

    def release(self, key: str) -> None:
        """Give a claim back (Ctrl-C, full disk): the cell stays resumable from its last epoch checkpoint."""
        with self.engine.begin() as conn:
            conn.execute(
                update(cells)
                .where((cells.c.key == key) & (cells.c.owner == owner_id()) & (cells.c.status == "running"))
                .values(heartbeat=0.0, owner="")
            )

    def status(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(cells.c.status).where(cells.c.key == key)).first()
        return None if row is None else row[0]

    def _owned(self, conn: Any, key: str) -> bool:
        row = conn.execute(select(cells.c.owner, cells.c.status).where(cells.c.key == key)).first()
        return row is not None and row[0] == owner_id() and row[1] == "running"

    def fail(self, key: str, reason: str) -> bool:
        """Mark our claimed cell failed; False (and nothing written) when another owner took it over."""
        with self.engine.begin() as conn:
            if not self._owned(conn, key):
                return False
            conn.execute(
                update(cells).where(cells.c.key == key).values(status="failed", error=reason, finished=time.time())
            )
        return True

    def reopen(self, key: str, reason: str) -> bool:
        """A finished cell whose checkpoint is lost or unloadable, marked failed so that --retry-failed trains it
        again (its cells that fine-tune from it need that checkpoint); True if it was done."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(cells).where(cells.c.key == key, cells.c.status == "done").values(status="failed", error=reason)
            )
            return bool(done.rowcount)

    def finish(self, key: str, result: CellResult) -> bool:
        """The one writer of a cell's result: our claimed cell's metrics, predictions and summary in one
        transaction; False (nothing written) when another owner took the cell over."""
        metric_rows, prediction_rows = result.metric_rows(), result.prediction_rows()
        with self.engine.begin() as conn:
            if not self._owned(conn, key):
                return False
            conn.execute(delete(metrics).where(metrics.c.key == key))
            conn.execute(delete(predictions).where(predictions.c.key == key))
            if metric_rows:
                conn.execute(insert(metrics), [dict(r, key=key) for r in metric_rows])
            if prediction_rows:
                conn.execute(insert(predictions), [dict(r, key=key) for r in prediction_rows])
            conn.execute(
                update(cells)
                .where(cells.c.key == key)
                .values(status="done", finished=time.time(), error=None, result=result.summary_json())
            )
        return True

    # ------------------------------------------------------------------ reading
    def cell_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(cells))]

    def result(self, key: str) -> CellResult | None:
        """The one loader of a cell's result (its summary; metrics and predictions are read as frames)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(cells.c.result).where(cells.c.key == key)).first()
        return None if row is None else CellResult.from_summary(row[0])

    def metrics_frame(self, key: str | None = None) -> Any:
        import pandas as pd

        q = select(metrics) if key is None else select(metrics).where(metrics.c.key == key)
        with self.engine.connect() as conn:
            return pd.read_sql(q, conn)

    def predictions_frame(self, split: str | None = None, columns: list[str] | None = None) -> Any:
        """Per-image predictions; the class probabilities come as columns p0 … p(K−1) (NaN where a formulation has
        none), whichever schema version stored them."""
        import re

        import numpy as np
        import pandas as pd

        if columns is None:  # every column, the probabilities as the run's own K (a run from before scales: MES)
            from ..labels import Scale

            k = Scale.from_dict(self.get_meta("scale")).k
            columns = [c.name for c in predictions.columns if c.name != "proba"] + [f"p{g}" for g in range(k)]
        wanted = columns
        probas = [c for c in wanted if re.fullmatch(r"p\d+", c)]
        packed = bool(probas) and self.schema_version >= 3
        cols = [c for c in wanted if not (packed and c in probas)] + (["proba"] if packed else [])
        mark = "?" if self.engine.dialect.name == "sqlite" else "%s"  # the DB-API's own parameter style
        sql = f"SELECT {', '.join(cols)} FROM predictions" + (f" WHERE split = {mark}" if split else "")
        # The raw DB-API cursor: SQLAlchemy's row objects cost seconds on a paper-sized run.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, (split,) if split else ())
            rows = cur.fetchall()
        except sqlite3.DatabaseError as exc:  # the DB-API's own errors bypass SQLAlchemy's error handler
            raise self.explain_error(exc) from None
        finally:
            raw.close()
        for name in ("outputs", "proba"):  # PostgreSQL's bytea comes back as memoryview
            if rows and name in cols:
                k = cols.index(name)
                rows = [(*r[:k], bytes(r[k]) if r[k] is not None else None, *r[k + 1 :]) for r in rows]
        frame = pd.DataFrame.from_records(rows, columns=cols)
        if packed:
            width = max(int(c[1:]) for c in probas) + 1
            values = np.full((len(frame), width), np.nan)
            for i, b in enumerate(frame.pop("proba")):
                if b is not None:
                    v = np.frombuffer(b)[:width]
                    values[i, : len(v)] = v
            for c in probas:
                frame[c] = values[:, int(c[1:])]
            frame = frame[wanted]
        return frame


class Heartbeat:
    """Refreshes a claim from a background thread at a fixed interval while a cell trains, so a long epoch
    or evaluation never makes a live claim look stale. `lost` is set when the claim was taken over."""

    def __init__(self, store: Store, key: str, interval: float = HEARTBEAT_SECONDS) -> None:
        self.store, self.key, self.interval = store, key, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{key}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not retrying(self.store.heartbeat, self.key):
                    self.lost.set()
                    return
            except Exception:
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def retrying(fn: Callable[..., R], *args: Any, attempts: int = 5, **kwargs: Any) -> R:
    """SQLite under several writers can still report 'database is locked' past its timeout."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except OperationalError:
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")
