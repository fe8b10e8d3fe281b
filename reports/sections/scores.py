"""Figure: the raw scores of score-based formulations per true grade, with their cut points."""

from __future__ import annotations

import numpy as np

from ..figures import grid, png, pyplot
from ..load import Run
from ..table import Options
from .base import Context, register_section


def score_distributions(run: Run, opts: Options) -> bytes | None:
    """Raw scores of score-based formulations (regression) per true grade, with their cut points."""
    cells = run.cells[run.cells.status == "done"]
    preds = run.store.predictions_frame(opts.split, ["key", "y_true", "score"])
    preds = preds[preds.score.notna() & preds.key.isin(cells.key)]
    if preds.empty:
        return None
    plt = pyplot()
    forms = [f for f in run.formulations if cells[cells.formulation == f].key.isin(preds.key).any()]
    fig, axes, cols = grid(plt, len(forms), 4.5, 3.4)
    for n, f in enumerate(forms):
        ax = axes[n // cols, n % cols]
        keys = cells[cells.formulation == f].key
        sub = preds[preds.key.isin(keys)]
        ax.violinplot(
            [sub[sub.y_true == k].score.to_numpy() if (sub.y_true == k).any() else [np.nan] for k in run.scale.grades],
            positions=run.scale.grades,
            showmedians=True,
        )
        formulation = run.formulation(f)
        cuts = formulation.score_thresholds(formulation.combine_states(run.states(keys))) or []
        for c in cuts:
            ax.axhline(c, color="red", lw=0.8, ls="--")
        ax.set_xticks(run.scale.grades, list(run.scale.classes))
        ax.set_ylabel("score")
        ax.set_title(f"{f} (dashed: mean thresholds)", fontsize=9)
    fig.suptitle("Scores by true grade, all backbones and folds")
    return png(fig)


@register_section("figure_scores")
def figure_scores(ctx: Context, opts: Options, section) -> None:
    """Figure: score distributions by true grade of the formulations that predict a score."""
    ctx.figure(section.title or "score distributions", lambda: score_distributions(ctx.run, opts))
