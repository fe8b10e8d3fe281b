"""Figure: fold-summed, row-normalised confusion matrices, one panel per formulation, one figure per backbone."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..figures import grid, png, pyplot
from ..load import Run
from ..table import Options
from .base import Context, register_section


def confusion_matrices(run: Run, opts: Options, backbone: str) -> bytes:
    plt = pyplot()
    forms = run.formulations
    fig, axes, cols = grid(plt, len(forms), 3.0, 3.0)
    for n, f in enumerate(forms):
        ax = axes[n // cols, n % cols]
        keys = run.cells[
            (run.cells.backbone == backbone) & (run.cells.formulation == f) & (run.cells.status == "done")
        ].key
        cm = np.zeros((run.scale.k, run.scale.k))
        for k in keys:
            cm += np.asarray(run.result(k).confusion.get(opts.split, cm * 0))
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in run.scale.grades:
            for j in run.scale.grades:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_xticks(run.scale.grades, run.scale.classes, rotation=45 if run.scale.k > 4 else 0, fontsize=8)
        ax.set_yticks(run.scale.grades, run.scale.classes, fontsize=8)
        ax.set_xlabel(f"predicted {run.scale.name}")
        ax.set_ylabel(f"true {run.scale.name}")
        ax.set_title(f, fontsize=10)
    fig.suptitle(f"Confusion matrices, fold-summed, row-normalised — {backbone}")
    return png(fig)


@register_section("figure_confusion")
def figure_confusion(ctx: Context, opts: Options, section) -> None:
    """Figure: confusion matrices of every formulation, one figure per backbone."""
    for b in ctx.run.backbones:
        ctx.figure(f"{section.title or 'confusion matrices'} — {b}", partial(confusion_matrices, ctx.run, opts, b))
