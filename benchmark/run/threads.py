"""How many CPU threads a process trains with: `--threads`, else its share of the cores it may use."""


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
