"""`bench data inspect`."""

from __future__ import annotations

from .console import console, err_console


def cmd_data_inspect(args):
    from rich.table import Table

    from ..data.hyperkvasir import inspect_colitis, test_set_yaml
    from ..data.limuc import inspect_tree

    colitis = inspect_colitis(args.path)
    if colitis is not None:  # HyperKvasir-shaped: an external test set, never a training set of MES 0–3
        t = Table(title=f"data inspect: HyperKvasir ulcerative-colitis folders in {colitis['root']}", show_header=False)
        for name, n in colitis["images"].items():
            grade = colitis["label_map"][name]
            t.add_row(name, f"{n} images → {'dropped (between two MES grades)' if grade is None else f'MES {grade}'}")
        console.print(t)
        console.print(
            "HyperKvasir grades colitis in six folders; the whole grades map onto MES 1–3, the in-between ones are "
            "dropped, and MES 0 is absent. Add it to a MES suite as an external test set (resize to your training "
            "images' size):"
        )
        console.print(test_set_yaml(colitis), highlight=False, markup=False, soft_wrap=True)
        return 0
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
    insp = dsub.add_parser(
        "inspect", help="what a LIMUC-like or HyperKvasir-like tree holds, what is wrong with it, how to use it"
    )
    insp.add_argument(
        "path", help="the LIMUC download (or any tree of Mayo 0..Mayo 3 folders), or a HyperKvasir download"
    )
    insp.set_defaults(fn=cmd_data_inspect)
