"""`bench report` and `bench check`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BenchError
from .console import console


def cmd_report(args):
    from reports.render import figure_links

    from .. import api

    run = api.load_run(args.run_dir, args.store)
    print(
        f"report of {run.path}" + ("" if args.run_dir else " (the run under ./runs that finished last)"),
        file=sys.stderr,
    )
    options = {
        name: getattr(args, name)
        for name in ("view", "split", "test", "correction", "alpha", "backbone", "reference", "compare", "pairs")
        + ("metric", "summary", "patient_quantile", "specificity", "rope")
    }
    opts = api.report_options(run._run, **options)  # every option checked before a figure folder is made
    fmt = "csv" if args.csv else "latex" if args.latex else "html" if args.html else "markdown"
    written: list[Path] = []
    # Figure files go beside -o (or into it, for --figures-only), else into the run directory, which may be
    # an archived, read-only one: then say so before anything is drawn.
    if args.figures_only:
        folder = Path(args.output) if args.output else run.path / "figures"
    elif args.output:
        folder = Path(args.output).resolve().parent / "figures"
    else:
        folder = run.path / "figures"
    if args.figures_only or fmt == "html":
        writable_or_refuse(folder, "figures")
        if fmt == "html" and not args.output:
            writable_or_refuse(run.path, "report.html")
    if args.figures_only:
        written = api.built_report(run, opts, with_test=False).write_figures(folder)
        for path in written:
            print(f"figure written: {path}", file=sys.stderr)
        return 0
    if fmt == "csv":
        text = to_csv(run)
    else:
        rep = api.built_report(run, opts)
        if fmt == "html":
            # PNG files beside the page; a PDF costs as much again to draw, so PDFs are --figures-only's
            written = rep.write_figures(folder, pdf=False)
            text = rep.to_html()
        elif fmt == "latex":
            text = rep.to_latex(standalone=args.standalone)
        else:
            where = Path(args.output).resolve().parent if args.output else Path.cwd()
            text = rep.to_markdown(figure_links(run.path / "figures", rep._built, where))  # where --figures-only wrote
    for path in written:
        print(f"figure written: {path}", file=sys.stderr)
    out = args.output
    if fmt == "html" and not out:
        out = str(run.path / "report.html")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"report written: {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def to_csv(run) -> str:
    from reports.render import to_csv as csv_text

    return csv_text(run._run)


REPORT_HINT = (
    "Give -o PATH elsewhere (figure files go beside it, or into it with --figures-only); Markdown, LaTeX and CSV "
    "without figures only read the run."
)


def writable_or_refuse(folder: Path, what: str, hint: str = REPORT_HINT) -> None:
    """A folder a command can write into (made if missing), or one paragraph saying where to write instead."""
    import os
    import uuid

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    refused = f"{folder} is not writable (a read-only or archived run directory?), so the {what} cannot be written"
    if not os.access(probe, os.W_OK):
        raise BenchError(f"{refused} there. {hint}")
    try:  # access() says yes to root on /proc or a read-only mount: only a real write tells
        folder.mkdir(parents=True, exist_ok=True)
        test = folder / f".write-test-{uuid.uuid4().hex}"
        test.write_text("")
        test.unlink()
    except OSError as exc:
        raise BenchError(f"{refused} there ({exc.strerror}). {hint}") from None


def _add_report(sub):
    r = sub.add_parser("report", help="tables and figures of a run, with significance tests")
    r.add_argument("run_dir", nargs="?", help="run directory (default: the most recent under ./runs)")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="Markdown to stdout (default)")
    fmt.add_argument("--latex", action="store_true", help="LaTeX tables (booktabs)")
    fmt.add_argument(
        "--html",
        action="store_true",
        help="one self-contained HTML file with figures (their PNGs also as files; PDFs: --figures-only)",
    )
    fmt.add_argument("--csv", action="store_true", help="the long-format metric table")
    r.add_argument("--standalone", action="store_true", help="with --latex: a complete document (pdflatex-ready)")
    r.add_argument(
        "--figures-only",
        action="store_true",
        help="only write the view's figures as RUN/figures/*.png and *.pdf, for a paper (Markdown then links them)",
    )
    r.add_argument(
        "--store", help="results store URL, e.g. postgresql://... (default: MESBENCH_STORE, else RUN/results.db)"
    )
    r.add_argument("-o", "--output", help="write to this file instead of stdout")
    r.add_argument(
        "--split",
        choices=["val", "test"],
        help="validation folds (default) or the held-out test set, each fold's model (overrides a view's split)",
    )
    r.add_argument("--backbone", help="backbone of Table 2 (default: densenet121 if present, else the first)")
    r.add_argument(
        "--reference",
        help="formulation the others are compared with (default: the registered "
        "baseline when the run has it, else the run's first formulation)",
    )
    r.add_argument(
        "--test",
        choices=["auto", "wilcoxon", "permutation", "corrected-t", "ranksum", "bayes"],
        help="test across folds (auto, the default: Wilcoxon signed-rank for k-fold designs, corrected t for "
        "Monte-Carlo splits; overrides a view's test). bayes: Table 2b, the Bayesian correlated t-test per block "
        "and signed-rank test across blocks (baycomp) with a ROPE (--rope), and their posterior figures; stars "
        "elsewhere stay those of auto",
    )
    r.add_argument(
        "--specificity",
        type=float,
        default=0.9,
        help="Table 8b: each grade's sensitivity at this specificity (threshold chosen on validation; default 0.9)",
    )
    r.add_argument(
        "--rope",
        type=float,
        default=0.01,
        help="--test bayes: region of practical equivalence, |difference| below this (default 0.01 of macro F1)",
    )
    r.add_argument(
        "--correction",
        choices=["holm", "fdr_bh", "bonferroni", "none"],
        help="multiple-comparison correction (statsmodels multipletests; default holm; overrides a view's)",
    )
    r.add_argument("--alpha", type=float, help="significance level of the stars (default 0.05; overrides a view's)")
    r.add_argument(
        "--patient-quantile",
        type=float,
        default=1.0,
        help="patient-level table: a patient's predicted grade is this quantile of their images' grades "
        "(default 1: the worst image, as a colonoscopy is scored)",
    )
    r.add_argument(
        "--metric",
        default="f1",
        choices=["f1", "recall", "precision", "specificity", "auc"],
        help="per-class metric of Table 2 and of the Friedman ranking (macro average)",
    )
    r.add_argument(
        "--view",
        default="default",
        help="which tables and figures: default, kim-lee-2025, polat-2023, or the path of a view YAML",
    )
    r.add_argument(
        "--compare",
        default="formulations",
        help="comparison axis: formulations within each backbone, backbones within each formulation, or an "
        "ablation axis of the suite's variants (its variants side by side within each backbone and formulation)",
    )
    r.add_argument(
        "--pairs",
        default="reference",
        choices=["reference", "all"],
        help="compare each with --reference, or every pair (corrected together)",
    )
    r.add_argument(
        "--summary",
        default="default",
        choices=["default", "ordinal", "polat", "ra"],
        help="Table 1's columns: the default view, or the ordinal one (QWK, MAE, AMAE, MMAE, RPS, ECE, AUC)",
    )
    r.set_defaults(fn=cmd_report)


def cmd_check(args):
    from reports.check import DEFAULT_TOLERANCE, check_comparable, read_baseline, run_table, write_baseline

    now = run_table(args.run_dir, args.store, predictions=args.update)
    if args.update:
        if not args.baseline:
            raise BenchError("--update needs --baseline FILE: the file to write.")
        if now.empty:
            raise BenchError(
                f"{args.run_dir} has no finished cell, so --update would write an empty baseline that "
                "every later check passes. Finish the run (`bench run SUITE --out RUN_DIR`) first."
            )
        tolerances: dict[str, float] = {}
        if Path(args.baseline).is_file():
            _, tolerances = read_baseline(args.baseline)
        write_baseline(now, args.baseline, tolerances, str(args.run_dir))
        console.print(
            f"[green]baseline written[/]: {args.baseline} ({len(now)} values and per-image predictions from "
            f"{args.run_dir}); commit it to make it the new reference."
        )
        return 0
    if args.against:
        base, tolerances = run_table(args.against, predictions=True), {}
        check_comparable(now, base, str(args.run_dir), str(args.against))
    elif args.baseline:
        base, tolerances = read_baseline(args.baseline)
        check_comparable(now, base, str(args.run_dir), str(args.baseline))
    else:
        raise BenchError("bench check needs --baseline FILE or --against RUN_DIR2.")
    from reports.check import check_tolerance

    for item in args.tolerance or []:  # command-line tolerances override the file's
        name, sep, value = item.rpartition("=")
        try:
            tolerances[name if sep else "default"] = check_tolerance(float(value), f"--tolerance {item!r}")
        except ValueError:
            raise BenchError(
                f"--tolerance {item!r}: give a number (all metrics) or METRIC=NUMBER, "
                "e.g. --tolerance 0.01 --tolerance f1@3=0.1."
            ) from None
    default = tolerances.pop("default", DEFAULT_TOLERANCE)
    metrics = [m for m in (args.metrics or "").split(",") if m]
    if args.exact:
        return exact_check(now, base, tolerances, default, metrics)
    return noise_aware_check(args, now, base, tolerances, default, metrics)


def exact_check(now, base, tolerances, default, metrics) -> int:
    """`--exact`: every stored value against the baseline's within its tolerance (for a machine whose numerics are
    pinned: the same code gives the same values there)."""
    from reports.check import compare, render
    from reports.noise import split_baseline

    result = compare(now, split_baseline(base)[0], tolerances, default, metrics)
    render(result, console)
    return 0 if result.ok else 1


def noise_aware_check(args, now, base, tolerances, default, metrics) -> int:
    """The default: a drop beyond the noise of training and beyond the tolerance is a regression (reports.noise)."""
    import math

    from reports.check import compare, render_structure, tolerance_for
    from reports.noise import enough_pairs, family, noise_check, render, split_baseline

    base_metrics, base_preds = split_baseline(base)
    structure = compare(now, base_metrics, {}, math.inf, metrics)  # cells, NaN, absent values, exact counts
    k = now.attrs.get("k", 4)
    m = len(now[["backbone", "formulation", "split"]].drop_duplicates()) * len(family(k))
    pairs = len(now[["seed", "fold"]].drop_duplicates())
    if base_preds.empty and not enough_pairs(pairs, m, args.alpha):
        raise BenchError(
            f"{args.baseline or args.against}: this baseline holds no per-image predictions (it was recorded before "
            f"they were kept), and this run's {pairs} fold(s) × seed(s) are too few for a test over folds to reach "
            f"α = {args.alpha:g} after Holm over {m} tests. Record it again with `bench check RUN --baseline FILE "
            "--update`, or compare value by value with --exact (for a machine with pinned numerics)."
        )

    class Row:
        def __init__(self, task, metric, cls):
            self.task, self.metric, self.cls = task, metric, cls

    result = noise_check(
        now, now.attrs["per_image"](), base_metrics, base_preds, now.attrs.get("groups") or {}, k,
        lambda t, mt, c: tolerance_for(Row(t, mt, c), tolerances, default), args.alpha,
    )  # fmt: skip
    exact = structure.regressions  # with an infinite tolerance only counts that must match exactly remain
    ok = structure.ok and not result.regressions
    verdict = (
        f"{'check passed' if ok else 'check FAILED'}: {len(result.regressions)} regression(s) beyond noise and "
        f"tolerance, {len(result.improvements)} improvement(s), {len(structure.missing_cells)} missing and "
        f"{len(structure.unexpected_cells)} unexpected cell(s)"
        + (f", {len(exact)} count(s) that differ" if len(exact) else "")
    )
    if args.markdown:
        lines = [f"## bench check: {'passed' if ok else 'FAILED'}", ""] + render(result, console, markdown=True)
        lines += ["", verdict]
        if not structure.ok:
            lines.append("Missing or unexpected cells, NaN values or absent values: see the job log.")
        print("\n".join(lines))
    else:
        render(result, console)
        render_structure(structure, console)
        for r in exact.head(20).itertuples():
            console.print(f"[red]count differs[/]: {r.backbone} · {r.formulation} · fold {r.fold} {r.split} "
                          f"{r.metric}@{r.cls}: {r.value_base:g} → {r.value_now:g}")  # fmt: skip
        console.print(("[bold green]" if ok else "[bold red]") + verdict + "[/]")
    return 0 if ok else 1


def _add_check(sub):
    c = sub.add_parser("check", help="compare a run's metrics with a baseline; exit 1 on a regression")
    c.add_argument("run_dir", help="run directory written by `bench run`")
    c.add_argument("--baseline", help="baseline CSV")
    c.add_argument("--store", help="results store URL (default: MESBENCH_STORE, else RUN/results.db)")
    c.add_argument("--against", help="compare with another run directory instead of a baseline file")
    c.add_argument(
        "--tolerance",
        action="append",
        metavar="[METRIC=]NUMBER",
        help="absolute tolerance: a number for every metric, or METRIC=NUMBER (e.g. f1@3=0.1, "
        "recall@*=0.1); repeatable; overrides the baseline header",
    )
    c.add_argument("--metrics", help="comma-separated metric names, e.g. accuracy,f1@macro,f1@3")
    c.add_argument("--update", action="store_true", help="write this run's table as the new baseline")
    c.add_argument(
        "--exact",
        action="store_true",
        help="compare every value within its tolerance (a pinned machine); default: drops beyond the noise of "
        "training and the tolerance",
    )
    c.add_argument("--markdown", action="store_true", help="print the check's table as Markdown (a CI job summary)")
    c.add_argument("--alpha", type=float, default=0.05, help="the family's level (Holm-corrected; default 0.05)")
    c.set_defaults(fn=cmd_check)


def add_commands(sub):
    _add_report(sub)
    _add_check(sub)
