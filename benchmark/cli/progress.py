"""Progress for `bench run`: live rich bars on a terminal; plain, timestamped lines otherwise (CI logs, Slurm
logs, `| tee`), so a long run is never one silent frame."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..errors import env_number

# without a terminal: a line every this many epochs (a worker under `--workers` reports every epoch) ...
PLAIN_EVERY_EPOCHS = env_number("MESBENCH_PROGRESS_EPOCHS", 10, int, 0, "epochs")
PLAIN_EVERY_SECONDS = 60.0  # ... or this many seconds, whichever comes first
WORKER = bool(os.environ.get("MESBENCH_WORKER"))  # one of several processes sharing a run


class RunProgress:
    def __init__(self, n_cells: int, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.live,
            transient=False,
        )
        self.cells = self.progress.add_task("cells", total=n_cells, info="")
        self.epochs: TaskID | None = None
        self.n_cells, self.done = n_cells, 0
        self._cell: Any = None
        self._t0 = self._last_line = time.perf_counter()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def set_total(self, n_cells):
        self.n_cells = n_cells
        self.progress.update(self.cells, total=n_cells)

    def cell_start(self, cell, epochs):
        # a fresh task per cell, so its timer shows this cell's time (a fine-tuned cell's included)
        if self.epochs is not None:
            self.progress.remove_task(self.epochs)
        self.epochs = self.progress.add_task(escape(cell.label), total=epochs, info="")
        self._cell, self._t0 = cell, time.perf_counter()
        self._last_line = self._t0

    def epoch(self, row):
        info = f"loss {row['train_loss']:.3f} · val loss {row['val_loss']:.3f} · val macro-F1 {row['val_macro_f1']:.3f}"
        if self.epochs is not None:
            self.progress.update(self.epochs, completed=row["epoch"], info=info)
        now = time.perf_counter()
        if (
            self.enabled
            and not self.live
            and (row["epoch"] % PLAIN_EVERY_EPOCHS == 0 or now - self._last_line >= PLAIN_EVERY_SECONDS)
        ):
            self._last_line = now
            self.console.print(f"  {escape(self._cell.label)} · epoch {row['epoch']} · {info}", highlight=False)

    def cell_done(self, cell, outcome, metrics: dict | None = None):
        self.done += 1
        self.progress.advance(self.cells)
        self.progress.update(self.cells, info=f"last: {outcome}")
        if self.enabled and not self.live:
            if WORKER and outcome in ("busy", "done"):  # another worker's cell: its own worker reports it
                return
            shown = " · ".join(f"{k} {v:.3f}" for k, v in (metrics or {}).items())
            took = f" in {time.perf_counter() - self._t0:.1f} s" if outcome == "trained" else ""
            count = "" if WORKER else f"[{self.done}/{self.n_cells}] "  # a worker sees only its share
            self.console.print(
                f"{count}{escape(cell.label)}: {outcome}{took}" + (f" · {shown}" if shown else ""),
                highlight=False,
            )

    def note(self, text):
        self.progress.console.print(text)


class WorkerBoard:
    """One display for the worker processes of `--workers N`: on a terminal a live table of each worker's latest
    line (its cell, epoch, losses); otherwise every worker line, prefixed with its worker."""

    def __init__(self, procs, console: Console, title: str):
        self.procs, self.console, self.title = procs, console, title
        self.live = console.is_terminal
        self.last = ["starting"] * len(procs)
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(i, p.stdout), daemon=True) for i, p in enumerate(procs)
        ]
        for t in self._readers:
            t.start()

    def _read(self, i, stream):
        for raw in stream:
            line = raw.rstrip()
            if not line.strip():
                continue
            with self._lock:
                self.last[i] = line.strip()
            if not self.live:
                self.console.print(f"[worker {i}] {line}", highlight=False, markup=False)

    def table(self):
        from rich.table import Table

        t = Table(title=self.title, title_justify="left")
        t.add_column("worker", justify="right")
        t.add_column("latest")
        with self._lock:
            for i, line in enumerate(self.last):
                state = "" if self.procs[i].poll() is None else f" (exited {self.procs[i].returncode})"
                t.add_row(str(i), escape(line) + state)
        return t

    def wait(self, wait_workers) -> int:
        """`wait_workers(procs, tick)` with this board drawn at every tick; the readers drained afterwards."""
        if not self.live:
            code = wait_workers(self.procs, lambda: None)
        else:
            from rich.live import Live

            with Live(self.table(), console=self.console, refresh_per_second=4) as live:
                code = wait_workers(self.procs, lambda: live.update(self.table()))
        for t in self._readers:
            t.join(timeout=5)
        return code
