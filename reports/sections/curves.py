"""Figure: training curves of every fold, one panel per formulation, one figure per backbone."""

from __future__ import annotations

from functools import partial

from ..figures import grid, png, pyplot
from ..load import Run
from ..table import Options
from .base import Context, register_section


def training_curves(run: Run, backbone: str) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    forms = run.formulations
    fig, axes, cols = grid(plt, len(forms), 3.4, 2.5, rows_per_item=2)
    monitor = run.suite.training.monitor
    shown = monitor if monitor != "val_loss" else "val_macro_f1"
    for n, f in enumerate(forms):
        top, bottom = axes[(n // cols) * 2, n % cols], axes[(n // cols) * 2 + 1, n % cols]
        keys = run.cells[(run.cells.backbone == backbone) & (run.cells.formulation == f) & (run.cells.status == "done")]
        for r in keys.itertuples():
            hist = run.result(r.key).history
            ep = [h["epoch"] for h in hist]
            top.plot(ep, [h["train_loss"] for h in hist], color="C0", alpha=0.6, lw=1)
            top.plot(ep, [h["val_loss"] for h in hist], color="C1", alpha=0.6, lw=1)
            bottom.plot(ep, [h.get(shown) for h in hist], color="C2", alpha=0.6, lw=1)
        top.set_title(f, fontsize=10)
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        bottom.set_xlabel("epoch")
        if n % cols == 0:
            top.set_ylabel("loss (blue train, orange val)", fontsize=8)
            bottom.set_ylabel(shown.replace("_", " ").replace("macro f1", "macro-F1"), fontsize=8)
    fig.suptitle(f"Training curves, all folds — {backbone}")
    return png(fig)


@register_section("figure_curves")
def figure_curves(ctx: Context, opts: Options, section) -> None:
    """Figure: training and validation loss and the monitored metric per epoch, one figure per backbone."""
    for b in ctx.run.backbones:
        ctx.figure(f"{section.title or 'training curves'} — {b}", partial(training_curves, ctx.run, b))
