"""Rich progress for `bench run`: a bar over cells, a bar over epochs with live loss and metric."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, n_cells: int, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.cells = self.progress.add_task("cells", total=n_cells, info="")
        self.epochs = self.progress.add_task("epochs", total=1, info="", visible=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def cell_start(self, cell, epochs):
        self.progress.update(self.epochs, description=cell.label, total=epochs, completed=0, visible=True, info="")

    def epoch(self, row):
        self.progress.update(
            self.epochs,
            completed=row["epoch"],
            info=f"loss {row['train_loss']:.3f} val {row['val_loss']:.3f} F1 {row['val_macro_f1']:.3f}",
        )

    def cell_done(self, cell, outcome):
        self.progress.advance(self.cells)
        self.progress.update(self.cells, info=f"last: {outcome}")

    def note(self, text):
        self.progress.console.print(text)
