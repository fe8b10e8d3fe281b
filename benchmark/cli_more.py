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
    _add_report(sub)
    _add_report_speed(sub)
    _add_perf(sub)
    _add_tune(sub)
    _add_explain(sub)


def cmd_check(args):
    from .check import DEFAULT_TOLERANCE, compare, read_baseline, render, run_table, write_baseline
    from .cli import console
    from .errors import BenchError

    now = run_table(args.run_dir)
    if args.update:
        if not args.baseline:
            raise BenchError("--update needs --baseline FILE: the file to write.")
        if now.empty:
            raise BenchError(f"{args.run_dir} has no finished cell, so --update would write an empty baseline that "
                             "every later check passes. Finish the run (`bench run SUITE --out RUN_DIR`) first.")
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
    from .check import check_tolerance

    for item in args.tolerance or []:  # command-line tolerances override the file's
        name, sep, value = item.rpartition("=")
        try:
            tolerances[name if sep else "default"] = check_tolerance(float(value), f"--tolerance {item!r}")
        except ValueError:
            raise BenchError(f"--tolerance {item!r}: give a number (all metrics) or METRIC=NUMBER, "
                             "e.g. --tolerance 0.01 --tolerance f1@3=0.1.") from None
    default = tolerances.pop("default", DEFAULT_TOLERANCE)
    metrics = [m for m in (args.metrics or "").split(",") if m]
    result = compare(now, base, tolerances, default, metrics)
    render(result, console)
    return 0 if result.ok else 1


def _add_check(sub):
    c = sub.add_parser("check", help="compare a run's metrics with a baseline; exit 1 on a regression")
    c.add_argument("run_dir")
    c.add_argument("--baseline", help="baseline CSV")
    c.add_argument("--against", help="compare with another run directory instead of a baseline file")
    c.add_argument("--tolerance", action="append", metavar="[METRIC=]NUMBER",
                   help="absolute tolerance: a number for every metric, or METRIC=NUMBER (e.g. f1@3=0.1, "
                        "recall@*=0.1); repeatable; overrides the baseline header")
    c.add_argument("--metrics", help="comma-separated metric names, e.g. accuracy,f1@macro,f1@3")
    c.add_argument("--update", action="store_true", help="write this run's table as the new baseline")
    c.set_defaults(fn=cmd_check)


def cmd_report(args):
    import sys

    from reports.load import load_run
    from reports.render import build, to_csv, to_html, to_latex, to_markdown
    from reports.tables import Options

    from .errors import require_in_run

    run = load_run(args.run_dir)
    if args.reference != "softmax":  # the default may be absent: the tables then say there is no reference
        require_in_run("--reference", args.reference, run.formulations)
    if args.backbone:
        require_in_run("--backbone", args.backbone, run.backbones)
    opts = Options(split=args.split, backbone=args.backbone, reference=args.reference, test=args.test,
                   correction=args.correction, alpha=args.alpha)
    fmt = "csv" if args.csv else "latex" if args.latex else "html" if args.html else "markdown"
    if fmt == "csv":
        text = to_csv(run)
    else:
        rep = build(run, opts)
        if fmt == "html":
            from reports.figures import all_figures

            rep.figures = all_figures(run, opts, rep.friedman)
            text = to_html(rep)
        else:
            text = to_latex(rep) if fmt == "latex" else to_markdown(rep)
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


def _add_report(sub):
    r = sub.add_parser("report", help="tables and figures of a run, with significance tests")
    r.add_argument("run_dir", nargs="?", help="run directory (default: the most recent under ./runs)")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="Markdown to stdout (default)")
    fmt.add_argument("--latex", action="store_true")
    fmt.add_argument("--html", action="store_true", help="one self-contained HTML file with figures")
    fmt.add_argument("--csv", action="store_true", help="the long-format metric table")
    r.add_argument("-o", "--output", help="write to this file instead of stdout")
    r.add_argument("--split", choices=["val", "test"], default="val")
    r.add_argument("--backbone")
    r.add_argument("--reference", default="softmax")
    r.add_argument("--test", choices=["auto", "wilcoxon", "permutation", "corrected-t", "ranksum"], default="auto",
                   help="paired test across folds (auto: Wilcoxon signed-rank for k-fold designs, corrected t for "
                        "Monte-Carlo splits)")
    r.add_argument("--correction", choices=["holm", "fdr_bh", "bonferroni", "none"], default="holm")
    r.add_argument("--alpha", type=float, default=0.05)
    r.set_defaults(fn=cmd_report)


def cmd_report_speed(args):
    import tempfile
    import time

    from reports.fake_run import write_fake_run

    from .cli import console

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bbs = ["resnet18", "resnet50", "densenet121", "inception_v3", "mobilenetv3_large_100"][:args.backbones]
        forms = ["softmax", "regression", "coral", "corn", "mtl", "mtl+f1"][:args.formulations]
        run = write_fake_run(Path(tmp) / "run", bbs, forms, args.folds)
        setup = time.perf_counter() - t0
        from reports.load import load_run
        from reports.render import build, to_markdown
        from reports.tables import Options

        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            text = to_markdown(build(load_run(run), Options()))
            times.append(time.perf_counter() - t0)
        import subprocess
        import sys

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmark.cli", "report", str(run), "--markdown"], check=True,
                       stdout=subprocess.DEVNULL)
        whole = time.perf_counter() - t0
    console.print(f"report-speed: {len(bbs)} backbones × {len(forms)} formulations × {args.folds} folds "
                  f"(+ test predictions, {len(text)} characters of markdown); store written in {setup:.1f} s; "
                  f"markdown rendered in {min(times):.2f} s (best of {args.repeat}; all: "
                  + ", ".join(f"{t:.2f}" for t in times) + f"); whole `bench report --markdown` command incl. "
                  f"interpreter start-up and imports: {whole:.2f} s")
    return 0


def _add_report_speed(sub):
    r = sub.add_parser("report-speed", help="benchmark: time the markdown report of a large run (no training)")
    r.add_argument("--backbones", type=int, default=5)
    r.add_argument("--formulations", type=int, default=6)
    r.add_argument("--folds", type=int, default=10)
    r.add_argument("--repeat", type=int, default=3)
    r.set_defaults(fn=cmd_report_speed)


def cmd_perf(args):
    from rich.table import Table

    from .cli import console
    from .perf import run_perf

    h, w = _hw(args.size)
    plan, path, res, memory = run_perf(args.backbone, (h, w), args.batch, args.images, args.device, args.compile,
                                       args.no_model)
    t = Table(title=f"bench perf — {args.images} images {w}×{h}, batch {args.batch}, device {plan.description}")
    t.add_column("measurement")
    t.add_column("images/s", justify="right")
    t.add_column("seconds", justify="right")
    for r in res.values():
        t.add_row(r.name, f"{r.images_per_s:,.1f}", f"{r.seconds:.2f}")
    console.print(t)
    console.print(f"augmentation path on this device: {path}")
    console.print(f"ratio (1)/(2) data path vs usual recipe: {res['data'].images_per_s / res['usual'].images_per_s:.2f}×")
    if "harness" in res:
        console.print(f"ratio (4)/(3) harness epoch vs bare model step: "
                      f"{res['harness'].images_per_s / res['bare'].images_per_s:.3f}×")
    console.print(f"memory: {memory}; a decoded cache of full LIMUC (11,276 × {h}×{w}×3 uint8) takes "
                  f"{11276 * h * w * 3 / 1e9:.2f} GB (memory-mapped with `dataset.mmap: true`)")
    return 0


def _hw(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        from .errors import BenchError

        raise BenchError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 352x288.") from None
    return h, w


def _add_perf(sub):
    r = sub.add_parser("perf", help="measure the data path and training epoch against the usual PyTorch recipe")
    r.add_argument("--backbone", default="resnet18")
    r.add_argument("--size", default="352x288", help="WIDTHxHEIGHT (LIMUC native: 352x288)")
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--images", type=int, default=256)
    r.add_argument("--device", choices=["cpu", "cuda"], default=None)
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--no-model", action="store_true", help="only the data paths (1) and (2)")
    r.set_defaults(fn=cmd_perf)


def cmd_tune(args):
    from rich.table import Table

    from .cli import console
    from .config import load_suite
    from .tune import WEIGHT_KEYS, Tuner

    suite = load_suite(args.suite, args.set)
    out = Path(args.out) if args.out else Path("runs") / f"{suite.name}-tune"
    tuner = Tuner(suite, out, args.backbone, args.formulation, args.metric, args.folds, args.storage, args.study,
                  args.device)
    before = {i: len(s.trials) for i, s in tuner.studies.items()}
    tuner.optimize(args.trials, args.timeout)
    table = Table(title=f"best trial per outer fold (nested: {args.metric} on an inner split of the fold's training "
                        "part)")
    for col in ("fold", "study", "trials (new)", "pruned", args.metric, *WEIGHT_KEYS):
        table.add_column(col, justify="right")
    best = tuner.best_weights()
    for i, study in tuner.studies.items():
        pruned = sum(t.state.name == "PRUNED" for t in study.trials)
        row = [str(i), study.study_name, f"{len(study.trials)} ({len(study.trials) - before[i]})", str(pruned)]
        if i in best:
            row += [f"{study.best_value:.4f}", *(f"{best[i][k]:.3f}" for k in WEIGHT_KEYS)]
        else:
            row += ["—"] * (1 + len(WEIGHT_KEYS))
        table.add_row(*row)
    console.print(f"studies in {tuner.storage}")
    console.print(table)
    if len(best) < len(tuner.studies):
        console.print("[red]no completed trial[/] in fold(s) "
                      + ", ".join(str(i) for i in tuner.studies if i not in best)
                      + ": every trial was pruned or failed; run more trials.")
        return 1
    figs = tuner.figures()
    override = tuner.write_override()
    console.print(f"figures: {', '.join(map(str, figs))}")
    console.print(f"suite with the tuned formulation (each fold its own weights): {override} — train it under the "
                  f"normal protocol with `bench run {override}`"
                  + (f" (tuned folds {sorted(best)} only: add --only fold={','.join(map(str, sorted(best)))})"
                     if tuner.k < len(tuner.splits.folds) else ""))
    return 0


def _add_tune(sub):
    r = sub.add_parser("tune", help="Optuna search of the joint-loss weights alpha, beta, gamma")
    r.add_argument("suite")
    r.add_argument("--trials", type=int, required=True, help="trials per outer fold")
    r.add_argument("--backbone")
    r.add_argument("--formulation", default="mtl")
    r.add_argument("--metric", default="macro_f1", help="any stored metric, e.g. macro_f1, f1@3, ra.f1")
    r.add_argument("--folds", type=int, help="tune only the first K outer folds (default: every fold)")
    r.add_argument("--storage", help="Optuna storage URL (default: SQLite in the output directory)")
    r.add_argument("--study", help="study name")
    r.add_argument("--out", help="output directory (default runs/<suite>-tune)")
    r.add_argument("--timeout", type=float, help="stop after this many seconds")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    r.add_argument("--device", choices=["cpu", "cuda"])
    r.set_defaults(fn=cmd_tune)


def cmd_explain(args):
    from .cli import console
    from .explain import explain

    written, _, flat = explain(args.run_dir, args.backbone, args.formulation, args.fold, args.split, args.per_class,
                               args.head, args.output, args.device)
    for p in written:
        console.print(f"written: {p}")
    console.print(f"{len(flat)} images, {args.per_class} per true MES grade; `bench report --html` includes "
                  "these figures when they are in RUN_DIR/explain.")
    return 0


def _add_explain(sub):
    r = sub.add_parser("explain", help="Grad-CAM grids of stored checkpoints, per formulation and head")
    r.add_argument("run_dir")
    r.add_argument("--backbone")
    r.add_argument("--formulation", nargs="+")
    r.add_argument("--fold", type=int, default=0)
    r.add_argument("--split", choices=["val", "test"], default="val")
    r.add_argument("--per-class", type=int, default=2)
    r.add_argument("--head", default="grade", choices=["grade", "primary", "remission", "active"])
    r.add_argument("-o", "--output", help="output folder (default RUN_DIR/explain)")
    r.add_argument("--device", choices=["cpu", "cuda"])
    r.set_defaults(fn=cmd_explain)
