"""The `bench` command line: run, list, report, check, tune, perf, explain, data inspect."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import BenchError, Interrupted

console = Console()
err_console = Console(stderr=True)
# Piped output (CI logs, files) defaults to 80 columns, too narrow for result tables.
for _c in (console, err_console):
    if not _c.is_terminal:
        _c.width = 160


def cmd_run(args):
    from .config import load_suite
    from .progress import RunProgress
    from .runner import Runner
    from .summary import print_summary

    suite = load_suite(args.suite, args.set)
    out = Path(args.out) if args.out else Path("runs") / suite.name
    runner = Runner(suite, out, device=args.device, retry_failed=args.retry_failed)
    with RunProgress(0, err_console, enabled=not args.quiet) as progress:
        runner.progress = progress
        cells = runner.prepare(args.only)
        progress.progress.update(progress.cells, total=len(cells))
        if runner.stale_cells:
            progress.note(f"[yellow]note[/]: the suite changed since this directory was last used: "
                          f"{runner.new_cells} cell(s) have a new configuration hash and will be trained; "
                          f"{runner.stale_cells} cell(s) of the earlier configuration are kept but not reported.")
        report = runner.run(args.only)
    err_console.print(f"{len(report.trained)} trained, {len(report.skipped)} already done, "
                      f"{len(report.failed)} failed in {report.seconds:.1f} s · device {runner.plan.description} · "
                      f"results in {out}")
    print_summary(out, console)
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} cell(s) failed[/]; see `bench report {out}`; retry with "
                          f"`bench run {args.suite} --retry-failed`.")
        return 1
    return 0


def cmd_list(args):
    from rich.table import Table

    from backbones import list_backbones
    from formulations import FORMULATIONS

    from .data import DATASETS
    from . import limuc  # noqa: F401

    t = Table(title="backbones (any timm model name also works)")
    for col in ("name", "timm model", "input size", "default batch"):
        t.add_column(col)
    for b in list_backbones():
        t.add_row(b.name, b.timm_name, "native" if not b.input_size else "×".join(map(str, b.input_size)),
                  str(b.batch_size or "suite"))
    console.print(t)
    t = Table(title="formulations (append +f1 for inverse-F1 fine-tuning)")
    t.add_column("name")
    t.add_column("what")
    for name, cls in FORMULATIONS.items():
        t.add_row(name, cls.description)
    console.print(t)
    console.print("datasets: " + ", ".join(sorted(DATASETS)))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="bench", description="mesbench: compare learning formulations for ordinal "
                                "medical-image classification under one protocol.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate every cell of a suite")
    r.add_argument("suite")
    r.add_argument("--out", help="run directory (default runs/<suite name>)")
    r.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict to backbone=, formulation=, fold= or seed= (repeatable)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a suite field, e.g. training.epochs=3")
    r.add_argument("--retry-failed", action="store_true", help="train failed cells again")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)

    sub.add_parser("list", help="backbones, formulations, datasets").set_defaults(fn=cmd_list)

    from .cli_more import add_commands

    add_commands(sub)
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
    except Exception as exc:  # noqa: BLE001 - never a bare traceback without --debug
        if args.debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}. Run again with "
                          "`bench --debug ...` for the traceback and report it.", highlight=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
