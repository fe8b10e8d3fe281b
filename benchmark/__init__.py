"""mesbench harness: config, data, protocol, training loop, metrics, store, runner, CLI.

`import benchmark as mb` gives the Python API (benchmark/api.py): `mb.load_run`, `mb.report`, `mb.run_suite`. Its
names are imported on first use, so that importing any part of the harness stays as light as that part."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Report", "Run", "load_run", "report", "run_suite"]

if TYPE_CHECKING:
    from .api import Report, Run, load_run, report, run_suite


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
