"""`bench tune`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BenchError
from ..run.threads import set_threads
from .console import add_set_option, add_threads_option, console


def make_tuner(args, worker: int = 0):
    from ..run.tune import Tuner
    from ..suite.loading import load_suite

    suite = load_suite(args.suite, args.set, paths=True)
    out = Path(args.out) if args.out else Path("runs") / f"{suite.name}-tune"
    return Tuner(
        suite,
        out,
        args.backbone,
        args.formulation,
        args.metric,
        args.folds,
        args.storage,
        args.study,
        args.device,
        worker=worker,
        space=args.space,
    )


def tune_worker_argv(args, tuner, targets: dict[int, int]) -> list[str]:
    """The `bench tune` arguments of one worker (a local process or a Slurm job) sharing these studies."""
    argv = ["tune", str(Path(args.suite).resolve()), "--trials", str(args.trials), "--out", str(tuner.out.resolve())]
    argv += ["--storage", tuner.storage, "--study", tuner.study_name, "--metric", args.metric]
    argv += ["--backbone", tuner.backbone.name, "--formulation", tuner.fcfg.name]
    argv += ["--targets", ",".join(f"{i}:{n}" for i, n in targets.items())]
    for value in args.set:
        argv += ["--set", value]
    for value in args.space or []:
        argv += ["--space", value]
    if args.folds:
        argv += ["--folds", str(args.folds)]
    if args.timeout:
        argv += ["--timeout", str(args.timeout)]
    if args.device:
        argv += ["--device", args.device]
    return argv


def progress_printer(args, total: int):
    from .console import err_console

    seen = [0]

    def report(study, trial):
        seen[0] += 1
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        pruned = sum(t.state.name == "PRUNED" for t in study.trials)
        best = f"{study.best_value:.4f}" if done else "—"
        value = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        err_console.print(
            f"[{seen[0]}/{total}] {study.study_name} trial {trial.number}: {args.metric} {value} · "
            f"best so far {best} · pruned {pruned}",
            highlight=False,
        )

    return report


def cmd_tune(args):
    from .console import err_console
    from .run import check_workers, start_workers, wait_workers, worker_index

    if args.trials < 1:
        raise BenchError(f"--trials {args.trials}: at least 1 trial per fold.")
    if args.timeout is not None and args.timeout <= 0:
        raise BenchError(f"--timeout {args.timeout}: a number of seconds above 0 (or leave it out).")
    check_workers(args.workers, args.devices)
    threads = set_threads(args.threads, args.workers)
    if args.targets:  # one of several workers: fill the studies, the command that started us reports
        targets = parse_targets(args.targets)
        tuner = make_tuner(args, worker=worker_index())
        tuner.optimize_to(targets, args.timeout, [progress_printer(args, sum(targets.values()))])
        return 0
    tuner = make_tuner(args)
    before = {i: len(s.trials) for i, s in tuner.studies.items()}
    if args.workers > 1:
        targets = tuner.targets(args.trials)
        procs, placement = start_workers(
            tune_worker_argv(args, tuner, targets), args.workers, args.devices, threads=threads
        )
        err_console.print(f"{args.workers} tuning workers on {tuner.storage} ({placement})")
        if wait_workers(procs) != 0:
            err_console.print("[red]a tuning worker failed[/]; its error is above. Finished trials are kept.")
            return 1
    else:
        tuner.optimize(args.trials, args.timeout, callbacks=[progress_printer(args, args.trials * len(tuner.studies))])
    return report_studies(args, tuner, before)


def parse_targets(text: str) -> dict[int, int]:
    return {int(i): int(n) for i, n in (pair.split(":") for pair in text.split(","))}


def report_studies(args, tuner, before: dict[int, int]) -> int:
    """The best trial per outer fold, the figures, and the override suite that trains the tuned weights."""
    from rich.table import Table

    table = Table(
        title=f"best trial per outer fold (nested: {args.metric} on an inner split of the fold's training part)"
    )
    for col in ("fold", "study", "trials (new)", "pruned", args.metric, *tuner.param_names):
        table.add_column(col, justify="right")
    best = tuner.best_weights()
    for i, study in tuner.studies.items():
        pruned = sum(t.state.name == "PRUNED" for t in study.trials)
        row = [str(i), study.study_name, f"{len(study.trials)} ({len(study.trials) - before[i]})", str(pruned)]
        if i in best:
            row += [f"{study.best_value:.4f}", *(value_text(best[i][k]) for k in tuner.param_names)]
        else:
            row += ["—"] * (1 + len(tuner.param_names))
        table.add_row(*row)
    console.print(f"studies in {tuner.storage}")
    if tuner.space:
        console.print("search space: " + "; ".join(p.text() for p in tuner.space))
    console.print(table)
    if tuner.space and best:
        console.print(spread_table(tuner, best))
    if len(best) < len(tuner.studies):
        console.print(
            "[red]no completed trial[/] in fold(s) "
            + ", ".join(str(i) for i in tuner.studies if i not in best)
            + ": every trial was pruned or failed; run more trials."
        )
        return 1
    figs = tuner.figures()
    console.print(f"figures: {', '.join(map(str, figs))}")
    if not tuner.writable_override():
        console.print(
            "no suite written: each outer fold has its own tuned values, and a suite holds per-fold values only for "
            "a formulation's options (options.*); one value for every fold picked from these would let each fold's "
            "choice see the other folds' validation images. Use the values above as a variant of their own, or "
            "tune only options.*."
        )
        return 0
    override = tuner.write_override()
    console.print(
        f"suite with the tuned formulation (each fold its own weights): {override} — train it under the "
        f"normal protocol with `bench run {override}`"
        + (
            f" (tuned folds {sorted(best)} only: add --only fold={','.join(map(str, sorted(best)))})"
            if tuner.k < len(tuner.splits.folds)
            else ""
        )
    )
    return 0


def value_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def spread_table(tuner, best: dict[int, dict]):
    """Per tuned parameter: its value per outer fold, their spread, and Optuna's importance (mean over folds)."""
    import numpy as np
    from rich.table import Table

    importances = tuner.importances()
    table = Table(title="tuned values per outer fold, their spread, and each parameter's importance (fANOVA)")
    for col in ("parameter", "per fold", "spread", "importance"):
        table.add_column(col)
    for name in tuner.param_names:
        values = [best[i][name] for i in sorted(best)]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(values) > 1:
            spread = f"{min(values):.4g} – {max(values):.4g} (median {float(np.median(values)):.4g})"
        elif numeric:
            spread = "one fold"
        else:
            counts = {str(v): values.count(v) for v in values}
            spread = ", ".join(f"{k} in {n} fold(s)" for k, n in counts.items())
        scores = [imp[name] for imp in importances.values() if name in imp]
        importance = f"{np.mean(scores):.2f} ({len(scores)} fold(s))" if scores else (
            "— (one parameter)" if len(tuner.param_names) < 2 else "— (too few completed trials)"
        )  # fmt: skip
        per_fold = ", ".join(f"{i}: {value_text(best[i][name])}" for i in sorted(best))
        table.add_row(name, per_fold, spread, importance)
    return table


def add_tune_options(r, trials_required: bool = True, store_alias: bool = True):
    r.add_argument("--trials", type=int, required=trials_required, help="trials per outer fold")
    r.add_argument("--backbone", help="backbone to tune on (default: the suite's first)")
    r.add_argument(
        "--formulation",
        help="formulation to tune (default: the suite's first formulation with tunable loss weights; with --space, the "
        "suite's first formulation)",
    )
    r.add_argument("--metric", default="macro_f1", help="any stored metric, e.g. macro_f1, f1@3, ra.f1")
    r.add_argument("--folds", type=int, help="tune only the first K outer folds (default: every fold)")
    r.add_argument(
        *(["--storage", "--store"] if store_alias else ["--storage"]),
        dest="storage",
        help="Optuna storage URL shared by every worker, e.g. postgresql://user@host/db (default: SQLite in the "
        "output directory)",
    )
    r.add_argument("--study", help="study name")
    r.add_argument(
        "--space",
        action="append",
        metavar="NAME=RANGE",
        help="search this setting instead of the loss weights (repeatable): NAME=LOW:HIGH[:log] (float), "
        "NAME=LOW..HIGH (int) or NAME=a,b,c, NAME a dotted suite field (training.lr, augment.rotation, "
        "backbone.lr_decay) or options.FIELD of the tuned formulation",
    )
    r.add_argument("--timeout", type=float, help="stop after this many seconds")
    r.add_argument("--targets", help=argparse.SUPPRESS)  # set for the workers that `--workers`/`submit` start


def add_commands(sub):
    r = sub.add_parser(
        "tune", help="nested Optuna search of the joint-loss weights alpha, beta, gamma, or of any --space"
    )
    r.add_argument("suite", help="suite YAML whose data, protocol and training are tuned under")
    add_tune_options(r)
    r.add_argument("--out", help="output directory (default runs/<suite>-tune)")
    add_set_option(r)
    add_threads_option(r)
    r.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine running trials of the same studies in parallel (default 1)",
    )
    r.add_argument("--devices", help="with --workers: comma-separated CUDA device indices, one per worker in turn")
    r.set_defaults(fn=cmd_tune)
