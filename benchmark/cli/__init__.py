"""The `bench` command line: one module per command group, one console, `main` here."""

from __future__ import annotations

import argparse
import sys
import traceback

from rich.markup import escape

from ..errors import BenchError, Interrupted, explain_database_error
from .console import err_console


def build_parser():
    from importlib.metadata import PackageNotFoundError, version

    from . import data, plan, report, run, status, submit, tools, tune

    try:
        v = version("mesbench")
    except PackageNotFoundError:  # running from a source tree without installing
        from .. import __version__ as v
    p = argparse.ArgumentParser(
        prog="bench",
        description="mesbench: compare learning formulations for ordinal "
        "medical-image classification under one protocol.",
    )
    p.add_argument("--version", action="version", version=f"mesbench {v}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (run, plan, report, tune, submit, tools, data, status):
        module.add_commands(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except BenchError as exc:
        if args.debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except Interrupted as exc:
        err_console.print(f"[yellow]interrupted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 130
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished cells are saved; run the same command again to resume.")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        database = explain_database_error(exc)
        if database:
            err_console.print(f"[bold red]error:[/] {escape(database)}", highlight=False, soft_wrap=True)
            return 2
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}. Run again with "
            "`bench --debug ...` for the traceback and report it.",
            highlight=False,
            soft_wrap=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
