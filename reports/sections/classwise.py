"""Figure: class-wise boxplots over folds of the compared items, bracketed with the very stars of Table 2's family."""

from __future__ import annotations

import warnings

from ..axes import AXES, axis_reference, check_axis, figure_withins, section_reference, variant_reference
from ..figures import png, pyplot
from ..load import Run, variant_groups
from ..table import Options
from .base import Context, register_section


@register_section("figure_classwise")
def figure_classwise(ctx: Context, opts: Options, section) -> None:
    """Figure: per-class boxplots of each compared item, one per fixed backbone (or formulation, or setting)."""
    run = ctx.run
    axis = section.compare or opts.compare
    check_axis(run, axis)
    if axis not in AXES:
        for backbone in [w for w in figure_withins(run, section, "formulations") if w in run.backbones]:
            for fixed, items, names in variant_groups(run, axis):

                def draw_variants(
                    backbone=backbone, items=items, fixed=fixed,
                    reference=variant_reference(run, axis, items, names, opts),
                ):  # fmt: skip
                    return comparison_boxplots(
                        run, opts, "formulations", backbone, tuple(section.metrics), items, reference,
                        section.pairs or opts.pairs, along=(axis, fixed),
                    )[0]  # fmt: skip

                ctx.figure(f"class-wise metrics — {backbone} — {axis} of {fixed}", draw_variants)
        return
    present = run.backbones if axis == "formulations" else run.formulations
    withins = [w for w in figure_withins(run, section, axis) if w in present]
    for within in withins:
        if section.title:  # a view's own title, told apart only when it covers several figures
            title = section.title if len(withins) == 1 else f"{section.title} ({within})"
        else:
            title = f"class-wise metrics — {within}"
        reference = section_reference(run, section, axis) or axis_reference(run, opts, axis)

        def draw(within=within, reference=reference):
            return comparison_boxplots(
                run, opts, axis, within, tuple(section.metrics), section.items, reference, section.pairs or opts.pairs
            )[0]

        ctx.figure(title, draw)


def comparison_boxplots(
    run: Run,
    opts: Options,
    axis: str,
    within: str,
    metrics=("precision", "recall", "f1", "specificity"),
    items=None,
    reference=None,
    pairs="reference",
    along: tuple[str, str] | None = None,
):
    """Per-class boxplots over folds, one panel per metric, the compared items side by side, with the
    significant pairs bracketed by statannotations using the very p-values of the matching tables. `along`:
    (ablation axis, the row held fixed) when the items are one axis's variants. Returns
    (png, {metric: Comparison}) so a caller can check figure and table agree."""
    import pandas as pd
    import seaborn as sns
    from statannotations.Annotator import Annotator

    from ..compare import compare, figure_legend

    plt = pyplot()
    comparisons = {m: compare(run, opts, axis, within, m, items, reference, pairs) for m in metrics}
    if along:
        comparisons = {m: cmp.along_axis(*along) for m, cmp in comparisons.items()}
    classes = run.scale.classes
    first = next(iter(comparisons.values()))
    drawn: dict[str, list[tuple[str, str, str, str]]] = {m: [] for m in metrics}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.6), squeeze=False)
    for ax, (metric, cmp) in zip(axes[0], comparisons.items()):
        records = [
            {"class": name, "item": it, "value": v}
            for (name, cls) in [(n, str(k)) for k, n in enumerate(classes)]
            for it in cmp.items
            for v in cmp.values[cls, it].to_numpy()
        ]
        df = pd.DataFrame(records)
        if df.empty:
            ax.set_title(f"{metric}: no values")
            continue
        with warnings.catch_warnings():  # seaborn 0.13 still passes matplotlib's deprecated `vert`
            warnings.simplefilter("ignore", DeprecationWarning)
            sns.boxplot(
                data=df,
                x="class",
                y="value",
                hue="item",
                hue_order=cmp.items,
                ax=ax,
                showfliers=False,
                legend=ax is axes[0][0],
            )
        marked = [
            ((classes[int(cls)], a), (classes[int(cls)], b), star)
            for (cls, a, b), star in cmp.stars.items()
            if star and cls != "macro"
        ]
        if marked:
            ann = Annotator(
                ax,
                [(x, y) for x, y, _ in marked],
                data=df,
                x="class",
                y="value",
                hue="item",
                hue_order=cmp.items,
                verbose=False,
            )
            ann.configure(verbose=0, use_fixed_offset=True)
            ann.set_custom_annotations([star for _, _, star in marked])
            # statannotations redraws pyplot's current figure after every bracket to measure its text, which a
            # fixed offset makes unnecessary: a blank stand-in spares a whole four-panel drawing per bracket
            blank = plt.figure(figsize=(0.1, 0.1))
            try:
                ann.annotate()
            finally:
                plt.close(blank)
                plt.figure(fig.number)
            shown = {t.get_text() for t in ax.texts}
            for a in ann.annotations:
                (c1, h1), (_, h2) = a.structs[0]["group"], a.structs[1]["group"]
                if a.text in shown:
                    drawn[metric].append((c1, h1, h2, a.text))
        ax.set_title(metric)
        ax.set_xlabel("")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Class-wise metrics over folds: {first.subject()}", y=1.0)
    fig.text(0.5, -0.02, figure_legend(first, len(comparisons)), ha="center", va="top", fontsize=7, wrap=True)
    fig.tight_layout()
    return png(fig), comparisons, drawn
