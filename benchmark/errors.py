"""User-facing errors: one paragraph that names the file, field or value and the fix."""

import difflib


class BenchError(Exception):
    """An error caused by the user's input; the CLI prints it without a traceback."""


class CellFailed(Exception):
    """A cell could not finish (NaN loss, exception); stored as failed, the suite goes on."""


class Interrupted(Exception):
    """Ctrl-C during a cell: the current epoch was saved, the run can be resumed."""


def closest(name, choices):
    """A 'did you mean' fragment listing the closest valid names."""
    near = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    valid = ", ".join(sorted(choices))
    if near:
        return f"did you mean {' or '.join(repr(n) for n in near)}? Valid names: {valid}"
    return f"valid names: {valid}"


def require_in_run(option, value, choices):
    """A command-line choice that must name something the run holds (a backbone, a formulation)."""
    if value not in choices:
        raise BenchError(f"{option} {value!r} is not in this run: {closest(value, choices)}.")


def not_a_file(path) -> str:
    """Why a path that should name a file does not, in words: 'does not exist', 'is a folder', 'is not a regular
    file' (a device such as /dev/zero)."""
    from pathlib import Path

    path = Path(path)
    return "does not exist" if not path.exists() else "is a folder" if path.is_dir() else "is not a regular file"


def env_number(name: str, default: float, cast=float, minimum: float = 0.0, unit: str = "seconds"):
    """A numeric environment setting, or one paragraph naming the variable and the values it takes."""
    import os

    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return cast(default)
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not value > minimum or value != value:
        raise BenchError(
            f"{name}={text!r}: a number of {unit} above {minimum:g} (e.g. {cast(default)}); unset it for the default."
        )
    return value


def explain_database_error(exc: BaseException) -> str | None:
    """A results store or tuning database that cannot be reached, or stopped answering, as one paragraph (SQLAlchemy's
    errors are recognised by their module, so this layer imports no database library)."""
    module = type(exc).__module__ or ""
    if not module.startswith(("sqlalchemy", "psycopg", "sqlite3")):
        return None
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    return (
        f"the database ({first}) could not be reached or stopped answering. Check that the server is running and "
        "that the URL's host, port, database, user, password and options (sslmode, connect_timeout) are right. "
        "Every finished cell is kept in the store, and a cell cut short resumes from its last epoch: run the same "
        "command again once the database answers."
    )
