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


def add_set_option(parser) -> None:
    """`--set FIELD=VALUE`, the same for every command that loads a suite."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a suite field, e.g. training.epochs=3",
    )
