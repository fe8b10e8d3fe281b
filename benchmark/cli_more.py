"""Sub-commands beyond run/list, each a thin layer over its module."""

from __future__ import annotations

from pathlib import Path


def cmd_data_inspect(args):
    from rich.table import Table

    from .cli import console, err_console
    from .limuc import inspect_tree

    info, problems = inspect_tree(args.path)
    t = Table(title=f"data inspect: {info['root']}", show_header=False)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "—"
        t.add_row(key.replace("_", " "), str(value))
    console.print(t)
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s) make this tree unusable:[/]")
        for p in problems:
            err_console.print(f"  - {p}", highlight=False, markup=False)
        return 1
    console.print("[green]usable[/]: `dataset: {name: limuc, root: ...}` will load it.")
    return 0


def add_commands(sub):
    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser("inspect", help="what a LIMUC-like tree holds, and what is wrong with it")
    insp.add_argument("path")
    insp.set_defaults(fn=cmd_data_inspect)
    _add_check(sub)


def cmd_check(args):
    from .check import DEFAULT_TOLERANCE, compare, read_baseline, render, run_table, write_baseline
    from .cli import console
    from .errors import BenchError

    now = run_table(args.run_dir)
    if args.update:
        if not args.baseline:
            raise BenchError("--update needs --baseline FILE: the file to write.")
        tolerances = {}
        if Path(args.baseline).is_file():
            _, tolerances = read_baseline(args.baseline)
        write_baseline(now, args.baseline, tolerances, str(args.run_dir))
        console.print(f"[green]baseline written[/]: {args.baseline} ({len(now)} values from {args.run_dir}); "
                      "commit it to make it the new reference.")
        return 0
    if args.against:
        base, tolerances = run_table(args.against), {}
    elif args.baseline:
        base, tolerances = read_baseline(args.baseline)
    else:
        raise BenchError("bench check needs --baseline FILE or --against RUN_DIR2.")
    default = args.tolerance if args.tolerance is not None else tolerances.pop("default", DEFAULT_TOLERANCE)
    if args.tolerance is not None:
        tolerances.pop("default", None)
    metrics = [m for m in (args.metrics or "").split(",") if m]
    result = compare(now, base, tolerances, default, metrics)
    render(result, console)
    return 0 if result.ok else 1


def _add_check(sub):
    c = sub.add_parser("check", help="compare a run's metrics with a baseline; exit 1 on a regression")
    c.add_argument("run_dir")
    c.add_argument("--baseline", help="baseline CSV")
    c.add_argument("--against", help="compare with another run directory instead of a baseline file")
    c.add_argument("--tolerance", type=float, help="absolute tolerance for every metric (overrides the file's)")
    c.add_argument("--metrics", help="comma-separated metric names, e.g. accuracy,f1@macro,f1@3")
    c.add_argument("--update", action="store_true", help="write this run's table as the new baseline")
    c.set_defaults(fn=cmd_check)
