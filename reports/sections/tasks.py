"""Table 3: the accuracy of each task of the multi-task formulations (the formulations' own `tasks`)."""

from __future__ import annotations

from ..design import Design
from ..load import Run
from ..protocol import mark_in_sample, protocol_notes
from ..table import Options, Table, fmt, spread_text
from .base import Context, register_section


def mtl_tasks(run: Run, opts: Options, items: list[str] | None = None, title: str | None = None) -> Table | None:
    tasks = run.extra_tasks()
    forms = [
        f
        for f in run.formulations
        if (items is None or f in items)
        and any(len(run.series(b, f, opts.split, t, "accuracy")) for b in run.backbones for t in tasks)
    ]
    if not forms:
        return None
    rows = []
    for b in run.backbones:
        for f in forms:
            rows.append(
                [b, mark_in_sample(run, opts.split, f)]
                + [fmt(run.series(b, f, opts.split, t, "accuracy")) for t in list(tasks) + ["mes"]]
            )
    return Table(
        title or "Table 3 — per-task accuracy of the multi-task formulations",
        ["backbone", "formulation"]
        + [f"{t} ({' vs '.join(c)})" for t, c in tasks.items()]
        + [f"{run.scale.k}-class {run.scale.name}"],
        rows,
        notes=[
            "Each task's accuracy on the images that belong to that task only (sub-task labels −1 "
            f"excluded); {spread_text(run)}, on the {Design.of(run, opts).split_text()}."
        ]
        + protocol_notes(run, opts.split),
        key="mtl_tasks",
    )


@register_section("tasks")
def tasks(ctx: Context, opts: Options, section) -> None:
    """Table 3 — per-task accuracy of the formulations that have sub-tasks."""
    ctx.table(mtl_tasks(ctx.run, opts, section.items, section.title))
