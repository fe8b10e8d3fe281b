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
