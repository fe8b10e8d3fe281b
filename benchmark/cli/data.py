"""`bench data inspect`."""

from __future__ import annotations

from .console import console, err_console


def cmd_data_inspect(args):
    from pathlib import Path

    from rich.table import Table

    from ..data.hyperkvasir import inspect_colitis, test_set_yaml
    from ..data.limuc import detect_layout, inspect_tree

    path = Path(args.path).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        from ..data.inspect import inspect_suite
        from ..suite.loading import load_suite

        return show_inspections(inspect_suite(load_suite(path, args.set)))
    # LIMUC and HyperKvasir downloads are recognised by their folders; any other tree or file is read generically
    generic = bool(args.class_dirs or args.patient_pattern or args.patients) or not path.is_dir()
    if generic or (detect_layout(path)[0] is None and inspect_colitis(path) is None):
        from ..data.inspect import inspect_path

        dirs = [d for d in (args.class_dirs or "").split(",") if d] or None
        return show_inspections(inspect_path(args.path, dirs, args.patient_pattern, args.patients))
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


def show_inspections(found) -> int:
    """Print each inspected dataset; exit 1 when anything would stop a run."""
    from rich.markup import escape
    from rich.table import Table

    problems = 0
    for ins in found:
        t = Table(title=f"data inspect: {escape(ins.title)}", show_header=False)
        for key, value in ins.rows:
            t.add_row(escape(key), escape(value))
        console.print(t)
        for note in ins.notes:
            console.print(f"note: {escape(note)}", highlight=False)
        if ins.problems:
            problems += len(ins.problems)
            err_console.print(f"[bold red]{len(ins.problems)} problem(s)[/] in {escape(ins.title)}:")
            for p in ins.problems:
                err_console.print(f"  - {p}", highlight=False, markup=False)
    if problems:
        return 1
    console.print("[green]usable[/]: nothing found that would stop a run.")
    return 0


def add_commands(sub):
    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser(
        "inspect",
        help="what a data folder, manifest or suite's data holds (per grade, per patient, duplicates), what is "
        "wrong with it, how to use it",
    )
    insp.add_argument(
        "path",
        help="a data folder (one sub-folder per grade; a LIMUC or HyperKvasir download is recognised), a CSV manifest, "
        "or a suite YAML (its dataset and every test set after its label_map)",
    )
    insp.add_argument("--class-dirs", help="a folder tree's grade folders in order, comma-separated (default: sorted)")
    insp.add_argument("--patient-pattern", help="as dataset.patient_pattern: a regex with a named group 'patient'")
    insp.add_argument("--patients", help="as dataset.patients: a CSV of path,patient")
    from .console import add_set_option

    add_set_option(insp)
    insp.set_defaults(fn=cmd_data_inspect)
