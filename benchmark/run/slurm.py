"""Slurm through submitit: `bench submit` sends K jobs (one array), each running the ordinary worker loop of
`bench run` (or of `bench tune`) against one shared store. Nothing here trains: a job is `bench ...` with the
same arguments, so a job, a local worker and a plain run do exactly the same work, and the store's claims are
what keep two jobs off the same cell.

A job that reaches its time limit or is pre-empted is requeued by submitit (the callable is `Checkpointable`);
its cell's claim goes stale after a minute and the requeued job (or any other) resumes that cell from its last
saved epoch. Submitting the same command again later does the same for whatever is left.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from ..errors import BenchError

# sbatch's own names for the options users write most; `time` also takes Slurm's D-HH:MM:SS.
_EXAMPLE = "partition=gpu,gpus_per_node=4,cpus_per_task=16,mem=64G,time=24:00:00"


def parse_slurm_options(text: str) -> dict[str, Any]:
    """`key=value,key=value` into submitit's SlurmExecutor parameters, checked against the ones it knows.

    A piece without `=` continues the previous value, so node lists (`exclude=n1,n2`) need no quoting."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    valid = sorted(SlurmExecutor._valid_parameters())
    pairs: list[list[str]] = []
    for piece in (p for p in text.split(",") if p.strip()):
        if "=" in piece:
            key, _, value = piece.partition("=")
            pairs.append([key.strip().replace("-", "_"), value.strip()])
        elif pairs:
            pairs[-1][1] += "," + piece.strip()
        else:
            raise BenchError(f"--slurm {text!r}: {piece!r} is not key=value; write e.g. --slurm {_EXAMPLE}.")
    annotations = inspect.signature(_make_sbatch_string).parameters
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key not in valid:
            from ..errors import closest

            raise BenchError(
                f"--slurm: {key!r} is not an option submitit passes to sbatch ({closest(key, valid)}). Valid: "
                f"{', '.join(valid)}."
            )
        if key == "time":
            options[key] = slurm_minutes(value)
        elif "int" in str(annotations[key].annotation) and "str" not in str(annotations[key].annotation):
            try:
                options[key] = int(value)
            except ValueError:
                raise BenchError(f"--slurm: {key}={value!r} must be a whole number.") from None
        elif value.lower() in ("true", "false") and "bool" in str(annotations[key].annotation):
            options[key] = value.lower() == "true"
        else:
            options[key] = value
    return options


def slurm_minutes(value: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise BenchError(f"--slurm: time={value!r} is not a Slurm time; write minutes, HH:MM:SS or D-HH:MM:SS.")
    if not any(int(g) for g in m.groups() if g):
        raise BenchError(
            f"--slurm: time={value!r} is zero, which Slurm reads as no limit at all; give the limit your partition "
            "allows, e.g. time=24:00:00 or time=7-00:00:00."
        )
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        seconds = days * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = (a or 0) * 3600 + (b or 0) * 60 + c
    elif b is not None:  # M:S
        seconds = (a or 0) * 60 + b
    else:
        seconds = (a or 0) * 60
    return max(1, -(-seconds // 60))


class BenchJob(Checkpointable):
    """One Slurm job: `bench ARGV` as a child of the job's Python (so the worker is exactly a command-line worker),
    with the job's CPUs as its thread budget. Checkpointable: on a time-out or pre-emption submitit requeues it."""

    def __call__(self, argv: list[str]) -> int:
        import subprocess

        env = dict(os.environ)
        cpus = env.get("SLURM_CPUS_PER_TASK")
        if cpus:  # the allocation, not whatever the submitting shell had (sbatch exports its environment)
            env["OMP_NUM_THREADS"] = cpus
        # the worker's index (an array task's), from which a tuning worker seeds its own sampler
        env["MESBENCH_WORKER"] = env.get("SLURM_ARRAY_TASK_ID", "0")
        code = subprocess.run([sys.executable, "-m", "benchmark.cli", *argv], env=env).returncode
        if code != 0:
            raise RuntimeError(f"`bench {' '.join(argv)}` exited with status {code}; see this job's log")
        return 0


def job_folder(run_dir: Path) -> Path:
    """Where submitit keeps a run's job pickles and logs: a folder only this user can read or write (mode 0700),
    under MESBENCH_SLURM_DIR or ~/.cache/mesbench/slurm, never the run directory. A job unpickles what is there, so
    whoever can write to it can run code as the job: a shared run directory must stay data."""
    import hashlib

    base = Path(os.environ.get("MESBENCH_SLURM_DIR") or Path.home() / ".cache" / "mesbench" / "slurm")
    key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    folder = base / f"{Path(run_dir).name}-{key}"
    for path in (base, folder):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)
    return folder


def submit_jobs(argv: list[str], jobs: int, options: dict[str, Any], folder: Path, name: str) -> list:
    """K array tasks, each running `bench ARGV`; returns submitit's job handles. `folder` is the private job folder
    (`job_folder`); a refused submission leaves no pickle behind."""
    from submitit import SlurmExecutor

    if jobs < 1:
        raise BenchError(f"--jobs must be at least 1 (got {jobs}).")
    before = set(folder.rglob("*"))
    try:
        executor = SlurmExecutor(folder=folder / "%j", python=sys.executable)
        executor.update_parameters(**{"job_name": name, **options})
        return executor.map_array(BenchJob(), [argv] * jobs)
    except Exception as exc:  # sbatch refused: no Slurm here, a wrong partition, a limit
        for path in sorted(set(folder.rglob("*")) - before, reverse=True):  # files first, then their folders
            if path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        lines = str(exc).strip().splitlines()
        raise BenchError(
            f"Slurm refused the submission ({type(exc).__name__}: {lines[-1] if lines else ''}). Check --slurm "
            f"({options}) against `sinfo`, and that sbatch works on this machine."
        ) from None


def queue_states(jobs: list) -> dict[str, str] | None:
    """The state of every listed job still in Slurm's queue, by job id (array tasks one by one); None when squeue
    could not answer (a busy controller), which must never read as "all ended". From squeue, not sacct: sacct
    needs slurmdbd, which many clusters and every single-node test cluster lack."""
    import subprocess

    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)


def wait_for(jobs: list, say=print, poll: float = 2.0) -> list[str]:
    """Block until no job is queued or running any more; returns one line per job that did not end well (its
    error, or no result at all: killed, cancelled or out of time, resumable by submitting again)."""
    shown: dict[str, str] = {}
    failures = 0
    while True:
        queued = queue_states(jobs)
        if queued is None:
            failures += 1
            if failures * poll > 600:
                raise BenchError("squeue has not answered for 10 minutes; the jobs go on: `bench status RUN`.")
            time.sleep(poll)
            continue
        failures = 0
        for job in jobs:
            state = queued.get(job.job_id, "ENDED")
            if shown.get(job.job_id) != state:
                shown[job.job_id] = state
                say(f"job {job.job_id}: {state.lower()}")
        if not queued:
            break
        time.sleep(poll)
    problems = []
    for job in jobs:
        if not job.paths.result_pickle.exists():
            problems.append(
                f"job {job.job_id} ended without a result (killed, cancelled or out of time; log: "
                f"{job.paths.stdout}); submit the same command again to resume what is left"
            )
            continue
        try:
            job.result()
        except Exception as exc:  # the job's own error, pickled by submitit
            lines = str(exc).strip().splitlines()
            problems.append(f"job {job.job_id}: {lines[-1] if lines else type(exc).__name__} (log: {job.paths.stdout})")
    return problems
