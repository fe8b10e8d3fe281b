"""Where a run's results store is and whether mesbench can open it: `--store`, MESBENCH_STORE or the run
directory's results.db; the URL forms a store takes (PostgreSQL with psycopg 3, SQLite files — never in memory); an
SQLite URL built from a path, read-only for archived runs."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import URL

from ..errors import BenchError


def store_location(run_dir: str | Path, store: str | None = None) -> str:
    """The results store of a run: `--store URL`, else MESBENCH_STORE, else RUN/results.db. A run directory that
    holds its own results.db while MESBENCH_STORE names another store is a conflict, never silently resolved: the
    report would be titled with one run and filled with another's tables."""
    if store:
        return store
    env = os.environ.get("MESBENCH_STORE")
    if not env:
        return str(run_dir)
    local = Path(run_dir) / "results.db"
    if local.is_file() and not _same_sqlite(env, local):
        from ..errors import BenchError

        raise BenchError(
            f"{run_dir} holds its own results store ({local}), but MESBENCH_STORE={env!r} names another. Say which: "
            f"`--store {local}` for the run directory's, `--store $MESBENCH_STORE` for the other, or unset "
            "MESBENCH_STORE."
        )
    return env


STORE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


def check_store_url(text: str) -> None:
    """A store URL mesbench can open, or one paragraph with the forms it takes."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    forms = "postgresql://user:password@host:5432/database, sqlite:////abs/path/results.db, or a run directory"
    try:
        scheme = make_url(text).drivername
    except (ArgumentError, ValueError) as exc:
        raise BenchError(f"store {text!r} is not a database URL ({exc}). Give {forms}.") from None
    if scheme == "postgres":
        raise BenchError(f"store {text!r}: SQLAlchemy names the scheme postgresql://, not postgres://. Give {forms}.")
    if scheme not in STORE_SCHEMES:
        raise BenchError(
            f"store {text!r}: the {scheme!r} scheme is not a results store mesbench supports (PostgreSQL with "
            f"psycopg 3, or SQLite). Give {forms}."
        )
    if scheme == "sqlite":
        _check_sqlite_file(text, forms)


def _check_sqlite_file(text: str, forms: str) -> None:
    """An SQLite URL must name a file in an existing folder: an in-memory database vanishes with the process that
    trained into it (every result lost), and a missing folder reads to SQLite like a damaged or missing store."""
    from sqlalchemy.engine import make_url

    url = make_url(text)
    database = url.database or ""
    memory = database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database
    if memory or url.query.get("mode") == "memory":
        raise BenchError(
            f"store {text!r} is an in-memory SQLite database: it is gone when the process ends, so every trained "
            f"cell would be lost. Give a file, e.g. sqlite:////abs/path/results.db, or a run directory (--out)."
        )
    if database.startswith("file:"):
        return  # SQLite's own URI form: its path is SQLite's to resolve
    folder = Path(database).parent
    if not folder.is_dir():
        raise BenchError(
            f"store {text!r}: the folder {str(folder.resolve())!r} of its SQLite file does not exist "
            f"(a relative path after sqlite:/// is relative to the current directory, {os.getcwd()!r}). Create the "
            f"folder, or give an absolute path with four slashes: sqlite:////abs/path/results.db."
        )


def _same_sqlite(location: str, db: Path) -> bool:
    if "://" in location:
        return location.startswith("sqlite:///") and Path(location.removeprefix("sqlite:///")).resolve() == db.resolve()
    return (Path(location) / "results.db").resolve() == db.resolve()  # a path names a run directory


def sqlite_url(db: Path, readonly: bool = False) -> URL:
    """Built with URL.create, never by pasting a path into a URL string (`?` or `#` in a path)."""
    if not readonly:
        return URL.create("sqlite", database=str(db))
    from urllib.parse import quote

    query = {"mode": "ro", "uri": "true"}
    wal, shm = db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")
    if not os.access(db.parent, os.W_OK) and not (wal.exists() and shm.exists()):
        # An archived (read-only) run directory cannot hold SQLite's shared-memory file: read it as
        # immutable, which is what it is (`bench run` checkpoints the log into the file when it ends).
        query["immutable"] = "1"
    return URL.create("sqlite", database=f"file:{quote(str(db.resolve()))}", query=query)
