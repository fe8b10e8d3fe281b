"""`bench run` and `bench list`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.markup import escape

from ..errors import BenchError
from ..run.threads import available_cores, set_threads
from .console import add_set_option, add_threads_option, console, err_console


def suite_overrides(args) -> list[str]:
    """--set, with --compile and --deterministic as the suite fields they stand for."""
    overrides = list(args.set) + (["training.compile=true"] if args.compile else [])
    return overrides + (["training.deterministic=true"] if args.deterministic else [])


def cmd_run(args):
    import os

    from ..suite.loading import check_size, load_suite

    if args.offline:
        os.environ["MESBENCH_OFFLINE"] = "1"

    suite = load_suite(args.suite, suite_overrides(args), paths=True)  # refused before torch is even imported
    check_size(suite, args.yes)
    check_workers(args.workers, args.devices)
    threads = set_threads(args.threads, args.workers)
    if args.workers > 1:
        return run_workers(args, suite, threads)
    err_console.print(
        f"bench run {escape(suite.name)}: {threads} CPU thread(s) per process"
        + (" (--threads)" if args.threads else f" (of {available_cores()} cores; --threads to change)")
    )

    from reports.summary import print_summary

    from ..api import execute
    from .progress import RunProgress

    out = Path(args.out) if args.out else Path("runs") / suite.name
    with RunProgress(0, err_console, enabled=not args.quiet) as progress:
        runner, report = execute(
            suite, out, only=args.only, device=args.device, store=args.store, retry_failed=args.retry_failed,
            log=args.log, progress=progress,
        )  # fmt: skip
    err_console.print(
        f"{report.trained_text()}, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed in {report.seconds:.1f} s · device {runner.plan.description} · "
        f"results in {escape(str(out))}"
    )
    if not os.environ.get("MESBENCH_WORKER"):  # a worker's summary is printed by the command that started it
        print_summary(out, console, args.store)
    if report.failed:
        err_console.print(
            f"[red]{len(report.failed)} cell(s) failed[/]; see `bench report {escape(str(out))}`; retry with "
            f"`bench run {escape(str(args.suite))} --retry-failed`."
        )
        return 1
    return 0


def run_argv(args, out: Path) -> list[str]:
    """The `bench run` arguments a worker (a local process or a Slurm job) needs to do this run's work."""
    argv = ["run", str(Path(args.suite).resolve()), "--out", str(out.resolve())]
    if getattr(args, "quiet", False):
        argv.append("--quiet")
    if args.store:
        argv += ["--store", args.store]
    for flag in ("only", "set", "log"):
        for value in getattr(args, flag):
            argv += [f"--{flag}", value]
    for flag in ("retry_failed", "compile", "deterministic", "offline"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if getattr(args, "device", None):
        argv += ["--device", args.device]
    return argv


def device_ids(devices: str | None, visible: str | None) -> list[str]:
    """--devices as CUDA_VISIBLE_DEVICES values: indices into the GPUs this process already sees (a Slurm
    allocation without device cgroups sets CUDA_VISIBLE_DEVICES=2,3, and then --devices 0,1 means GPUs 2 and 3)."""
    wanted = [d.strip() for d in (devices or "").split(",") if d.strip()]
    seen = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if not (seen and wanted):
        return wanted
    try:
        return [seen[int(d)] for d in wanted]
    except (ValueError, IndexError):
        raise BenchError(
            f"--devices {devices}: this process sees GPUs {','.join(seen)} (CUDA_VISIBLE_DEVICES); --devices "
            f"counts them from 0 to {len(seen) - 1}."
        ) from None


WORKERS_PER_DEVICE = 4  # several cells may share a GPU the model leaves idle; more is a typo


def assign_devices(workers: int, wanted: list[str]) -> list[str]:
    """Worker i runs on wanted[i mod len(wanted)]: a device named twice (`--devices 0,0,1,1`) takes two workers,
    so small models that leave a GPU idle share it."""
    return [wanted[i % len(wanted)] for i in range(workers)] if wanted else []


def check_workers(workers: int, devices: str | None) -> None:
    """--workers and --devices as the machine can hold them, refused at the edge with the valid values."""
    import os

    cores = os.cpu_count() or 1
    if workers < 1:
        raise BenchError(f"--workers {workers}: at least 1 (1, the default, trains in this process).")
    wanted = [d.strip() for d in (devices or "").split(",") if d.strip()]
    if devices is not None:
        bad = [d for d in wanted if not d.isdigit()]
        if bad or not wanted:
            raise BenchError(f"--devices {devices!r}: comma-separated GPU indices such as 0,1,2,3.")
        import torch

        visible = torch.cuda.device_count()
        missing = [d for d in wanted if int(d) >= visible]
        if missing:
            raise BenchError(
                f"--devices {devices}: this process sees {visible} CUDA GPU(s)"
                + (f" (indices 0 to {visible - 1})" if visible else "")
                + f", so {', '.join(missing)} do(es) not exist. Drop --devices to run on the CPU."
            )
        per_gpu = Counter(assign_devices(workers, wanted))
        crowded = sorted(d for d, n in per_gpu.items() if n > WORKERS_PER_DEVICE)
        if crowded:
            raise BenchError(
                f"--workers {workers} --devices {devices} puts {per_gpu[crowded[0]]} workers on GPU {crowded[0]}: at "
                f"most {WORKERS_PER_DEVICE} workers per GPU."
            )
    elif workers > cores:
        raise BenchError(
            f"--workers {workers}: this machine has {cores} CPU core(s), so at most {cores} CPU workers (each needs a "
            "core); on GPUs give --devices."
        )


def _die_with_parent() -> None:
    """Run in each worker before exec: Linux sends it SIGTERM when the parent dies, so no worker is orphaned."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):  # not Linux: workers are still stopped by the parent's own handlers
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_workers(
    argv: list[str], workers: int, devices: str | None, capture: bool = False, threads: int | None = None
):
    """N `bench ARGV` processes on this machine: each pinned to one of --devices in turn (indices into the GPUs
    this process may see, so they stay right inside a Slurm allocation), else to its share of the CPU cores.
    Returns the processes and a line saying where they run."""
    import os
    import subprocess
    import sys

    wanted = device_ids(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    threads = threads or max(1, available_cores() // workers)
    first = worker_index() * workers  # inside a Slurm array task: indices distinct across tasks too
    procs = []
    devices_of = assign_devices(workers, wanted)
    for i in range(workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MESBENCH_WORKER": str(first + i)}
        if devices_of:
            env["CUDA_VISIBLE_DEVICES"] = devices_of[i]
        if capture:  # their lines go to one WorkerBoard: plain, every epoch
            env.update(MESBENCH_PROGRESS_EPOCHS="1", COLUMNS="250")  # one line per event, never wrapped
        out = subprocess.PIPE if capture else None
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmark.cli", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if capture else None,
                text=True,
                bufsize=1,
                preexec_fn=_die_with_parent,
            )
        )
    shown = ", ".join(f"GPU {d}" + (f" ×{n}" if n > 1 else "") for d, n in Counter(devices_of).items())
    return procs, (shown or f"{threads} CPU threads each")


def worker_index() -> int:
    """This worker's index among those sharing a run or a study (0 outside workers)."""
    import os

    text = os.environ.get("MESBENCH_WORKER", "0")
    return int(text) if text.isdigit() else 0


def wait_workers(procs, tick=lambda: None) -> int:
    """Wait for every worker; Ctrl-C is passed on, and each stops after saving its current epoch."""
    import signal
    import time

    try:
        while any(p.poll() is None for p in procs):
            tick()
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return max(p.returncode for p in procs)


def run_workers(args, suite, threads: int | None = None) -> int:
    """`--workers N`: N `bench run` processes on this machine claim cells from the one store; this process
    prepares the run once (splits, store, decoded images) and waits for them. A worker that dies (killed, out of
    memory) leaves its cell to the others, which take it over once its heartbeat is stale; the exit status then
    follows what the store holds, not the dead worker."""
    from reports.summary import print_summary

    from ..run.location import store_location
    from ..run.runner import Runner
    from ..run.store import Store

    out = Path(args.out) if args.out else Path("runs") / suite.name
    cells = Runner(suite, out, device=args.device, store=args.store).prepare(args.only)
    procs, placement = start_workers(
        run_argv(args, out), args.workers, args.devices, capture=not args.quiet, threads=threads
    )
    shown = escape(str(out))
    title = f"{args.workers} workers on {shown} ({placement}); `bench status {shown}` shows each worker's cell"
    if args.quiet:
        err_console.print(title)
        code = wait_workers(procs)
    else:
        from .progress import WorkerBoard

        err_console.print(title)
        code = WorkerBoard(procs, err_console, f"{len(cells)} cells").wait(wait_workers)
    print_summary(out, console, args.store)
    died = [(i, -p.returncode) for i, p in enumerate(procs) if p.returncode < 0]
    if not died:
        return code
    rows = {r["key"]: r for r in Store(store_location(out, args.store), create=False, readonly=True).cell_rows()}
    states = [rows[c.key]["status"] if c.key in rows else "pending" for c in cells]
    left = len(states) - states.count("done") - states.count("failed")
    err_console.print(
        "; ".join(f"worker {i} was ended by signal {sig}" for i, sig in died)
        + (
            f"; the other workers finished its cells ({states.count('done')} of {len(cells)} done)."
            if not left
            else f"; {left} cell(s) are not finished: run the same command again to resume them."
        )
    )
    return 1 if left or states.count("failed") or any(p.returncode > 0 for p in procs) else 0


def cmd_list(args):
    from rich.table import Table

    from ..api import catalogue

    titles = {
        "backbones": "backbones (any timm model name also works, and a factory as package.module:function)",
        "formulations": "formulations (append a fine-tuning suffix below for a second stage)",
        "fine-tuning": "fine-tuning stages, for any formulation",
        "metrics": "metrics (per task: the grade `mes`, the binary split `ra`, each head of a multi-task formulation)",
        "tests": "statistical tests (bench report --test; the Bayesian ones with --test bayes)",
        "corrections": "multiple-comparison corrections (bench report --correction)",
        "report sections": "report sections (the `kind:` of a view's section; bench report --view)",
    }
    shown = {"formulations": ["name", "what", "reference", "from"], "report sections": ["name", "what", "from"]}
    everything = catalogue()
    for section, rows in everything.items():
        if section == "datasets":
            continue
        t = Table(title=titles[section])
        columns = shown.get(section) or list(rows[0])
        for col in columns:
            t.add_column(col)
        for row in rows:
            t.add_row(*(escape(str(row[c])) for c in columns))
        console.print(t)
    console.print("datasets: " + ", ".join(row["name"] for row in everything["datasets"]))
    if args.timm:
        import timm

        console.print("timm models: " + ", ".join(timm.list_models()), soft_wrap=True)
    return 0


def add_commands(sub):
    r = sub.add_parser("run", help="train and evaluate every cell of a suite")
    r.add_argument("suite", help="suite YAML file, e.g. suites/smoke.yaml")
    r.add_argument("--out", help="run directory, relative to the current directory (default runs/<suite name>)")
    r.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="restrict to backbone=, formulation=, fold= or seed= (repeatable; comma-separated values)",
    )
    add_set_option(r)
    add_threads_option(r)
    r.add_argument(
        "--retry-failed",
        action="store_true",
        help="train failed cells again (discarding checkpoints that cannot be loaded)",
    )
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument(
        "--store",
        help="results store URL, e.g. postgresql://user@host/db (one database per run; default: MESBENCH_STORE, "
        "else RUN/results.db)",
    )
    r.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine sharing the run (default 1)"
    )
    r.add_argument("--devices", help="with --workers: comma-separated CUDA device indices, one per worker in turn")
    r.add_argument(
        "--yes", action="store_true", help="run a suite even if it expands to more than 20,000 cells (a typo guard)"
    )
    r.add_argument(
        "--offline",
        action="store_true",
        help="never download pretrained weights (as HF_HUB_OFFLINE=1): local files and caches only",
    )
    r.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="TRACKER",
        help="also log to mlflow (./mlruns), mlflow=URI, tensorboard (RUN/tensorboard), wandb or wandb=PROJECT (one "
        "W&B run per cell, grouped by suite; WANDB_MODE=offline works); repeatable",
    )
    r.add_argument("--compile", action="store_true", help="torch.compile every model (= --set training.compile=true)")
    r.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (= --set training.deterministic=true)",
    )
    r.set_defaults(fn=cmd_run)
    lst = sub.add_parser("list", help="backbones, formulations, datasets")
    lst.add_argument("--timm", action="store_true", help="also list every timm model name a suite may use")
    lst.set_defaults(fn=cmd_list)
    add_weights_command(sub)
    add_store_command(sub)


def cmd_weights_fetch(args):
    """Download (or find) the ImageNet weights of every pretrained backbone of a suite, before a cluster run whose
    compute nodes are offline, and say where they are."""
    from backbones import ensure_weights

    from ..suite.loading import load_suite

    suite = load_suite(args.suite)
    wanted = [b for b in suite.backbones if b.pretrained]
    if not wanted:
        console.print(f"suite {suite.name!r} has no backbone with `pretrained: true`: nothing to fetch.")
        return 0
    for b in wanted:
        path = ensure_weights(b.name, b.weights)
        console.print(f"{b.name}: {path}")
    console.print(
        "copy the HF cache (HF_HOME, ~/.cache/huggingface) and the torch hub cache (TORCH_HOME) to the "
        "compute nodes, or point `weights:` at these files."
    )
    return 0


def add_weights_command(sub):
    w = sub.add_parser("weights", help="pretrained weights")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download every pretrained backbone of a suite ahead of an offline run")
    f.add_argument("suite", help="suite YAML whose pretrained backbones to fetch")
    f.set_defaults(fn=cmd_weights_fetch)


def cmd_store_copy(args):
    """Copy a run's results store into another, e.g. an SQLite run into PostgreSQL for more workers."""
    from ..run.store import Store

    src = Store(args.source, create=False, readonly=True)
    dst = Store(args.target)
    counts = src.copy_to(dst)
    console.print(f"copied {args.source} -> {args.target}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    return 0


def add_store_command(sub):
    s = sub.add_parser("store", help="results stores")
    ssub = s.add_subparsers(dest="store_command", required=True)
    c = ssub.add_parser("copy", help="copy one run's store into another (e.g. SQLite into PostgreSQL)")
    c.add_argument("source", help="run directory or store URL to copy from")
    c.add_argument("target", help="store URL (or run directory) to copy into; must hold no cells")
    c.set_defaults(fn=cmd_store_copy)
