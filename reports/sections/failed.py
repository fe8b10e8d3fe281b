"""The failed cells of a run and why, so that no missing row goes unexplained."""

from __future__ import annotations

from ..table import Options, Table
from .base import Context, register_section


@register_section("failed")
def failed(ctx: Context, opts: Options, section) -> None:
    """Failed cells — backbone, formulation, seed, fold and the first line of the error."""
    cells = ctx.run.cells
    rows = [
        [r.backbone, r.formulation, str(r.seed), str(r.fold), (r.error or "").splitlines()[0] if r.error else ""]
        for r in cells[cells.status == "failed"].itertuples()
    ]
    if rows:
        ctx.table(Table("Failed cells", ["backbone", "formulation", "seed", "fold", "reason"], rows, key="failed"))
