"""`bench tune`."""

from __future__ import annotations

from pathlib import Path

from .console import add_set_option, console


def cmd_tune(args):
    from rich.table import Table

    from ..run.tune import Tuner
    from ..suite.loading import load_suite

    suite = load_suite(args.suite, args.set)
    out = Path(args.out) if args.out else Path("runs") / f"{suite.name}-tune"
    tuner = Tuner(
        suite, out, args.backbone, args.formulation, args.metric, args.folds, args.storage, args.study, args.device
    )
    before = {i: len(s.trials) for i, s in tuner.studies.items()}
    from .console import err_console

    total = args.trials * len(tuner.studies)
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

    tuner.optimize(args.trials, args.timeout, callbacks=[report])
    table = Table(
        title=f"best trial per outer fold (nested: {args.metric} on an inner split of the fold's training part)"
    )
    for col in ("fold", "study", "trials (new)", "pruned", args.metric, *tuner.weight_keys):
        table.add_column(col, justify="right")
    best = tuner.best_weights()
    for i, study in tuner.studies.items():
        pruned = sum(t.state.name == "PRUNED" for t in study.trials)
        row = [str(i), study.study_name, f"{len(study.trials)} ({len(study.trials) - before[i]})", str(pruned)]
        if i in best:
            row += [f"{study.best_value:.4f}", *(f"{best[i][k]:.3f}" for k in tuner.weight_keys)]
        else:
            row += ["—"] * (1 + len(tuner.weight_keys))
        table.add_row(*row)
    console.print(f"studies in {tuner.storage}")
    console.print(table)
    if len(best) < len(tuner.studies):
        console.print(
            "[red]no completed trial[/] in fold(s) "
            + ", ".join(str(i) for i in tuner.studies if i not in best)
            + ": every trial was pruned or failed; run more trials."
        )
        return 1
    figs = tuner.figures()
    override = tuner.write_override()
    console.print(f"figures: {', '.join(map(str, figs))}")
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


def add_commands(sub):
    r = sub.add_parser("tune", help="Optuna search of the joint-loss weights alpha, beta, gamma")
    r.add_argument("suite", help="suite YAML whose data, protocol and training are tuned under")
    r.add_argument("--trials", type=int, required=True, help="trials per outer fold")
    r.add_argument("--backbone", help="backbone to tune on (default: the suite's first)")
    r.add_argument(
        "--formulation",
        help="formulation whose loss weights to tune (default: the suite's first formulation that has tunable weights)",
    )
    r.add_argument("--metric", default="macro_f1", help="any stored metric, e.g. macro_f1, f1@3, ra.f1")
    r.add_argument("--folds", type=int, help="tune only the first K outer folds (default: every fold)")
    r.add_argument("--storage", help="Optuna storage URL (default: SQLite in the output directory)")
    r.add_argument("--study", help="study name")
    r.add_argument("--out", help="output directory (default runs/<suite>-tune)")
    r.add_argument("--timeout", type=float, help="stop after this many seconds")
    add_set_option(r)
    r.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    r.set_defaults(fn=cmd_tune)
