"""`bench data inspect`."""

from __future__ import annotations

from .console import console, err_console


def cmd_data_inspect(args):
    from rich.table import Table

    from ..data.limuc import inspect_tree

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
    insp.add_argument("path", help="the LIMUC download (or any tree of Mayo 0..Mayo 3 folders)")
    insp.set_defaults(fn=cmd_data_inspect)
