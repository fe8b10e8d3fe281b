"""Table 6 and the critical-difference diagram: the Friedman / Nemenyi ranking of formulations over backbones, or of
an ablation axis's variants over the settings they share."""

from __future__ import annotations

import numpy as np

from ..axes import ranking_axis
from ..design import Design
from ..figures import png, pyplot
from ..load import Run, variant_groups
from ..protocol import in_sample, mark_in_sample, protocol_notes
from ..stats import friedman
from ..table import Options, Table
from .base import Context, register_section

MIN_FRIEDMAN_BLOCKS = 3


def friedman_table(run: Run, opts: Options, axis: str | None = None) -> tuple[Table | None, object]:
    if axis is not None:
        return axis_friedman_table(run, opts, axis)
    forms, bbs = run.formulations, run.backbones
    if len(forms) < 3 or len(bbs) < 2:
        return None, None
    if len(bbs) < MIN_FRIEDMAN_BLOCKS:
        return Table(
            "Table 6 — Friedman ranking",
            ["note"],
            [
                [
                    "not shown: the Friedman test ranks formulations within blocks (here backbones) and needs at "
                    f"least {MIN_FRIEDMAN_BLOCKS}; this run has {len(bbs)}, with which no ranking difference can be "
                    "significant. "
                    "Folds of one dataset are not independent blocks."
                ]
            ],
            key="friedman",
        ), None
    scores = np.array([[run.series(b, f, opts.split, "mes", opts.metric, "macro").mean() for f in forms] for b in bbs])
    if np.isnan(scores).any():
        return Table(
            "Table 6 — Friedman ranking",
            ["note"],
            [["incomplete run: every backbone × formulation needs results to rank"]],
            key="friedman",
        ), None
    res = friedman(scores, forms, opts.alpha)
    rank_rows = []
    from scipy.stats import rankdata

    per_block = {b: rankdata(-scores[i]) for i, b in enumerate(bbs)}
    for f in sorted(forms, key=lambda f: res.mean_ranks[f]):
        j = forms.index(f)
        rank_rows.append(
            [mark_in_sample(run, opts.split, f), f"{res.mean_ranks[f]:.2f}"] + [f"{per_block[b][j]:g}" for b in bbs]
        )
    notes = [
        f"Blocks: the {len(bbs)} backbones (macro {opts.metric} on the {Design.of(run, opts).split_text()}, "
        "averaged over "
        f"folds); rank 1 = best. {res.text()}; Nemenyi critical difference CD = "
        f"{res.critical_difference:.3f} at α = {opts.alpha} — formulations whose mean ranks differ by less than "
        "CD are not distinguishable." + (f" {res.note}" if res.note else "")
    ] + [n for n in protocol_notes(run, opts.split) if n.startswith("‡")]
    return Table(
        "Table 6 — Friedman / Nemenyi ranking of formulations",
        ["formulation", "mean rank"] + bbs,
        rank_rows,
        notes=notes,
        key="friedman",
    ), (res, scores, sorted(in_sample(run, opts.split) & set(forms)))


def axis_friedman_table(run: Run, opts: Options, axis: str) -> tuple[Table | None, object]:
    """Table 6 along an ablation axis (`--compare AXIS`): the axis's variants ranked within every setting held fixed
    (backbone × formulation × the other axes' variants)."""
    groups = [(b, fixed, items) for b in run.backbones for fixed, items, _ in variant_groups(run, axis)]
    names = list(run.stored_suite.variants[axis])
    title = f"Table 6 — Friedman / Nemenyi ranking of the {axis} variants"
    if len(names) < 3:
        note = (
            f"not shown: a Friedman ranking needs at least three variants to rank, and the axis {axis!r} has "
            f"{len(names)} ({', '.join(names)}); Table 2 compares them pairwise, within each backbone and setting."
        )
        return Table(title, ["note"], [[note]], key="friedman"), None
    if len(groups) < MIN_FRIEDMAN_BLOCKS:
        note = (
            f"not shown: the Friedman test ranks the {axis} variants within blocks (here backbone × the settings "
            f"held fixed) and needs at least {MIN_FRIEDMAN_BLOCKS}; this run has {len(groups)}."
        )
        return Table(title, ["note"], [[note]], key="friedman"), None
    scores = np.array(
        [[run.series(b, it, opts.split, "mes", opts.metric, "macro").mean() for it in items] for b, _, items in groups]
    )
    if np.isnan(scores).any():
        note = f"incomplete run: every backbone × setting × {axis} variant needs results to rank"
        return Table(title, ["note"], [[note]], key="friedman"), None
    res = friedman(scores, names, opts.alpha)
    from scipy.stats import rankdata

    ranks = np.vstack([rankdata(-row) for row in scores])
    blocks = [f"{b} · {fixed}" for b, fixed, _ in groups]
    rows = [
        [n, f"{res.mean_ranks[n]:.2f}"] + [f"{r:g}" for r in ranks[:, names.index(n)]]
        for n in sorted(names, key=lambda n: res.mean_ranks[n])
    ]
    notes = [
        f"Blocks: the {len(groups)} settings the {axis} variants share (backbone × formulation"
        + (" × the other axes' variants" if len(run.stored_suite.variants) > 1 else "")
        + f"; macro {opts.metric} on the {Design.of(run, opts).split_text()}, averaged over folds); rank 1 = best. "
        f"{res.text()}; Nemenyi critical difference CD = {res.critical_difference:.3f} at α = {opts.alpha} — variants "
        "whose mean ranks differ by less than CD are not distinguishable. These blocks share one dataset and its "
        "folds, so they are not the independent data sets the test assumes: read the ranking as a summary of "
        "consistency across settings, not as evidence about new data." + (f" {res.note}" if res.note else "")
    ]
    table = Table(title, [axis, "mean rank"] + blocks, rows, notes=notes, key="friedman")
    leak = in_sample(run, opts.split)
    leaky = [n for i, n in enumerate(names) if any(items[i] in leak for _, _, items in groups)]
    others = " × other axes" if len(run.stored_suite.variants) > 1 else ""
    return table, (res, scores, leaky, f"settings (backbone × formulation{others})", f"{axis} variants")


def _ranking(ctx: Context, opts: Options, section) -> tuple[Table | None, object]:
    return ctx.once("friedman", lambda: friedman_table(ctx.run, opts, ranking_axis(ctx.run, opts, section)))


@register_section("friedman")
def friedman_section(ctx: Context, opts: Options, section) -> None:
    """Table 6 — mean ranks within blocks, the Friedman test and the Nemenyi critical difference."""
    ctx.shared.pop("friedman", None)  # the table is computed with this section's own statistics
    ctx.table(_ranking(ctx, opts, section)[0])


def cd_diagram(friedman_result) -> bytes:
    """scikit-posthocs' critical-difference diagram: mean ranks, with formulations that the Nemenyi post-hoc
    test cannot tell apart joined by a bar (a clique)."""
    res, scores, leaky, *words = friedman_result
    blocks, what = words or ("backbones", "formulations")  # along an ablation axis: its variants within settings
    plt = pyplot()
    names = list(res.mean_ranks)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.25 * len(names)), layout="constrained")
    draw_cd(ax, res, scores)
    title = (
        f"Critical difference diagram: mean rank over {res.n_blocks} {blocks} (1 = best); bars join "
        f"{what} the Nemenyi test cannot tell apart (α = {res.alpha:g}, CD = {res.critical_difference:.2f})"
    )
    if leaky:
        title += f"\n‡ in-sample validation numbers: {', '.join(leaky)} (inverse-F1 weights from the same fold)"
    ax.set_title(title, fontsize=8)
    return png(fig)


def draw_cd(ax, res, scores):
    """The diagram's elements (scikit-posthocs): 'crossbars' are the cliques of indistinguishable formulations."""
    import pandas as pd
    import scikit_posthocs as sp

    from ..stats import nemenyi_matrix

    names = list(res.mean_ranks)
    elements = sp.critical_difference_diagram(
        pd.Series(res.mean_ranks), nemenyi_matrix(scores, names), ax=ax, alpha=res.alpha
    )
    # scikit-posthocs draws each crossbar through its clique's points in set order, which follows Python's per-process
    # string hashing: the same bar, drawn point by point in another order, rasterises to other PNG bytes. In rank order
    # the figure is the same in every process.
    for group in elements.get("crossbars", []):
        for line in group:
            x, y = line.get_data()
            order = sorted(range(len(x)), key=lambda i: x[i])
            line.set_data([x[i] for i in order], [y[i] for i in order])
    return elements


@register_section("figure_cd")
def figure_cd(ctx: Context, opts: Options, section) -> None:
    """Figure: the critical-difference diagram of Table 6's ranking."""
    result = _ranking(ctx, opts, section)[1]
    if result is not None:
        ctx.figure(section.title or "critical difference diagram", lambda: cd_diagram(result))
