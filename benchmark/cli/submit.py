"""`bench submit`: a suite (or, with --tune, its nested tuning) on a Slurm cluster through submitit."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BenchError
from .console import add_set_option, console, err_console


def shared_store(url: str | None, what: str) -> str:
    """Jobs on several nodes need one server they all reach; SQLite must never be shared over a network
    filesystem."""
    if not url or "://" not in url or url.startswith("sqlite"):
        raise BenchError(
            f"bench submit needs {what} every node can reach: pass a PostgreSQL URL (e.g. postgresql://user@host/db"
            f"{', or set MESBENCH_STORE' if what == 'a results store' else ''}). SQLite (the default) is for one "
            "machine and must never be shared over a network filesystem; on one machine use `--workers N` instead."
        )
    return url


def cmd_submit(args):
    import shutil

    from ..run.slurm import job_folder, parse_slurm_options, submit_jobs, wait_for

    options = parse_slurm_options(args.slurm or "")
    if "time" not in options:
        raise BenchError(
            "--slurm needs time=… (the jobs' time limit, minutes or D-HH:MM:SS, e.g. time=24:00:00): submitit would "
            "otherwise ask for 5 minutes. A job that reaches it is requeued and resumes, so a limit below a whole "
            "run is fine."
        )
    if not shutil.which("sbatch"):
        raise BenchError(
            "bench submit needs Slurm's sbatch on this machine (run it on a login node of the cluster); on one "
            "machine use `bench run --workers N` instead."
        )
    gpus = int(options.get("gpus_per_node") or 0)
    if args.tune:
        return submit_tune(args, options, gpus)
    from reports.summary import print_summary

    from ..run.runner import Runner
    from ..suite.loading import check_size, load_suite
    from .run import run_argv, suite_overrides

    if args.trials is not None:
        raise BenchError("--trials belongs to --tune: `bench submit SUITE --tune --trials N ...`.")
    args.store = shared_store(args.store or os.environ.get("MESBENCH_STORE"), "a results store")
    suite = load_suite(args.suite, suite_overrides(args))
    check_size(suite, args.yes)
    if args.jobs < 1:
        raise BenchError(f"--jobs {args.jobs}: at least 1 array task.")
    out = (Path(args.out) if args.out else Path("runs") / suite.name).resolve()
    # everything a job would trip over (names, weights, data, splits, a changed protocol) fails here, once
    cells = Runner(suite, out, store=args.store).prepare(args.only)
    argv = run_argv(args, out)
    if gpus > 1:  # one job per node, one worker process per GPU of the node
        argv += ["--workers", str(gpus), "--devices", ",".join(map(str, range(gpus)))]
    folder = job_folder(out)
    jobs = submit_jobs(argv, args.jobs, options, folder, f"bench-{suite.name}")
    err_console.print(
        f"submitted {len(jobs)} job(s) ({', '.join(j.job_id for j in jobs)}) for {len(cells)} cells of {out}; "
        f"logs in {folder} (private to you); `bench status {out} --store {args.store}` shows progress. Submitting "
        "the same command again resumes whatever is left."
    )
    if not args.wait:
        return 0
    problems = wait_for(jobs, err_console.print)
    print_summary(out, console, args.store)
    return report_problems(problems)


def submit_tune(args, options, gpus: int) -> int:
    from ..run.slurm import job_folder, submit_jobs, wait_for
    from .tune import make_tuner, report_studies, tune_worker_argv

    if args.trials is None:
        raise BenchError("bench submit --tune needs --trials N (trials per outer fold, shared by every job).")
    args.storage = shared_store(args.storage or args.store, "an Optuna storage")
    tuner = make_tuner(args)
    before = {i: len(s.trials) for i, s in tuner.studies.items()}
    argv = tune_worker_argv(args, tuner, tuner.targets(args.trials))
    jobs = submit_jobs(argv, args.jobs, options, job_folder(tuner.out), f"tune-{tuner.study_name}")
    err_console.print(
        f"submitted {len(jobs)} tuning job(s) ({', '.join(j.job_id for j in jobs)}) on {tuner.storage}"
        + (f"; with gpus_per_node={gpus} each job uses its first GPU" if gpus > 1 else "")
    )
    if not args.wait:
        err_console.print("when they have ended, the same `bench tune` with --trials 0 writes the result")
        return 0
    if report_problems(wait_for(jobs, err_console.print)):
        return 1
    return report_studies(args, tuner, before)


def report_problems(problems: list[str]) -> int:
    for line in problems:
        err_console.print(f"[red]{line}[/]")
    return 1 if problems else 0


def add_commands(sub):
    from .tune import add_tune_options

    s = sub.add_parser("submit", help="run a suite (or tune it) on a Slurm cluster through submitit")
    s.add_argument("suite", help="suite YAML file")
    s.add_argument(
        "--slurm",
        default="",
        help="sbatch options as key=value,...: partition, time (minutes or D-HH:MM:SS), gpus_per_node, "
        "cpus_per_task, mem, account, qos, constraint, exclude, array_parallelism, ...",
    )
    s.add_argument("--jobs", type=int, default=1, help="array tasks, each a worker (or one per GPU of its node)")
    s.add_argument("--yes", action="store_true", help="submit a suite even if it expands to more than 20,000 cells")
    s.add_argument("--store", help="results store URL every node reaches, e.g. postgresql://user@host/db")
    s.add_argument("--out", help="run directory on a filesystem every node reaches (default runs/<suite name>)")
    s.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="as for bench run")
    add_set_option(s)
    s.add_argument("--retry-failed", action="store_true", help="train failed cells again")
    s.add_argument("--offline", action="store_true", help="never download pretrained weights on the nodes")
    s.add_argument("--log", action="append", default=[], metavar="TRACKER", help="as for bench run")
    s.add_argument("--compile", action="store_true", help="torch.compile every model")
    s.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    s.add_argument("--wait", action="store_true", help="wait for the jobs and print the summary (or the tuning result)")
    s.add_argument("--tune", action="store_true", help="submit workers of `bench tune` sharing one Optuna storage")
    add_tune_options(s, trials_required=False, store_alias=False)
    s.set_defaults(fn=cmd_submit)
