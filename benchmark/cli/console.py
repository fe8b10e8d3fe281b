"""One console for every command: results on stdout, progress and messages on stderr."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
# Piped output (CI logs, files) defaults to 80 columns, too narrow for result tables.
for _c in (console, err_console):
    if not _c.is_terminal:
        _c.width = 160


def add_threads_option(parser) -> None:
    """`--threads N`, the same for every command that trains."""
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch's kernels per process (default: the cores this process may use divided by the "
        "workers; one process: OMP_NUM_THREADS if set)",
    )


def available_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))  # a container's or a Slurm task's share, not the machine's
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(requested: int | None, workers: int = 1) -> int:
    """Decide and apply the CPU threads per process: --threads; else with several workers the cores this process may
    use divided by them (whatever OMP_NUM_THREADS says, which is one process's share); else the user's
    OMP_NUM_THREADS, else every core it may use (torch's own default took every core in each of several processes,
    so two on a shared 2-core machine used 4–5× the CPU for the same wall time)."""
    import os

    from ..errors import BenchError

    cores = available_cores()
    if requested is not None and not 1 <= requested <= 4 * cores:
        raise BenchError(
            f"--threads {requested}: between 1 and {4 * cores} (this process may use {cores} cores); leave it out "
            f"for {max(1, cores // max(workers, 1))}."
        )
    env = os.environ.get("OMP_NUM_THREADS", "")
    share = max(1, cores // max(workers, 1))
    n = requested or (int(env) if workers == 1 and env.isdigit() and int(env) > 0 else share)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    import sys

    if "torch" in sys.modules or workers == 1:
        import torch

        torch.set_num_threads(n)
    return n


def add_set_option(parser) -> None:
    """`--set FIELD=VALUE`, the same for every command that loads a suite."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a suite field, e.g. training.epochs=3",
    )
