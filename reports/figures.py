"""What every figure shares: matplotlib set up headless, a wrapped grid of panels, and the PNG (and PDF) bytes a
renderer embeds or writes. Each figure's drawing lives in its section's file (`reports/sections/`)."""

from __future__ import annotations

import io
from typing import Any


class Rendered(bytes):
    """A figure's PNG bytes, with its PDF when the report writes figure files."""

    pdf: bytes | None = None
    figure: Any = None  # the matplotlib Figure, kept only for the Python API (render_figures(keep=True))


WANT_PDF = False  # set by render_figures(pdf=True): PDFs cost a second rendering, only for figure files


KEEP_FIGURES = False


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    out = Rendered(buf.getvalue())
    if WANT_PDF:
        import matplotlib

        # The PNG's drawing laid the figure out: its tight box, in inches, crops the PDF too, which spares the PDF
        # its own dry-run drawing (a third of a many-panel figure's time).
        box = fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
        pdf = io.BytesIO()
        fig.savefig(pdf, format="pdf", bbox_inches=box)
        out.pdf = pdf.getvalue()
    if KEEP_FIGURES:
        out.figure = fig
    import matplotlib.pyplot as plt

    plt.close(fig)  # out of pyplot's list (it would hold every figure of a paper-sized report); a kept one still draws
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # Labels are user text: "$x$" in a formulation label must be drawn as written, not parsed as mathtext.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


PER_ROW = 4  # panels per row: a figure stays readable at page width however many formulations a run has


def grid(plt, n, panel_w, panel_h, rows_per_item=1):
    """A wrapped grid for n items, each `rows_per_item` panels tall; unused panels hidden."""
    cols = min(n, PER_ROW)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows * rows_per_item,
        cols,
        figsize=(panel_w * cols, panel_h * rows * rows_per_item),
        squeeze=False,
        layout="constrained",
    )
    for k in range(n, rows * cols):
        for r in range(rows_per_item):
            axes[(k // cols) * rows_per_item + r, k % cols].set_visible(False)
    return fig, axes, cols
