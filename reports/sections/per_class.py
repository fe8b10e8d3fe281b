"""Table 2 (and 2b under `--test bayes`): per-class values of the compared items within a fixed backbone or formulation,
or along an ablation axis, with paired tests against the reference; the Bayesian posteriors' figures."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..axes import (
    AXES,
    axis_reference,
    check_axis,
    default_backbone,
    section_reference,
    variant_reference,
    within_items,
)
from ..compare import bayes_compare, bayes_table, compare, comparison_table
from ..figures import grid, png, pyplot
from ..load import Run, variant_groups
from ..table import Options, Table, missing_note, resolve
from .base import Context, register_section


@register_section("per_class")
def per_class(ctx: Context, opts: Options, section) -> None:
    """Table 2 — per-class metric of the compared items, stars from paired tests (2b: Bayesian, --test bayes)."""
    run = ctx.run
    axis = section.compare or opts.compare
    check_axis(run, axis)
    if axis not in AXES:
        _per_class_variants(ctx, opts, section, axis)
        return
    present = run.backbones if axis == "formulations" else run.formulations
    for within in within_items(run, opts, section, axis):
        if within not in present:
            kind = "a backbone" if axis == "formulations" else "a formulation"
            ctx.table(
                Table(
                    section.title or f"Per-class comparison within {within}",
                    ["note"],
                    [[f"{within} is not {kind} of this run: nothing to show."]],
                    key="per_class",
                )
            )
            continue
        reference = section_reference(run, section, axis) or axis_reference(run, opts, axis)
        cmp = compare(
            run,
            opts,
            axis,
            within,
            section.metric or opts.metric,
            section.items,
            reference,
            section.pairs or opts.pairs,
        )
        out = comparison_table(cmp, run, section.title)
        out[0].notes += missing_note(
            section.items, run.formulations if axis == "formulations" else run.backbones, f"{axis}"
        )
        ctx.tables.extend(out)
    if opts.test == "bayes":
        _bayes(ctx, opts, section, axis)


def _per_class_variants(ctx: Context, opts: Options, section, axis: str) -> None:
    """One comparison per backbone and group: the variants of AXIS side by side, the first the reference unless
    --reference names one of them."""
    run = ctx.run
    for backbone in within_items(run, opts, section, "formulations"):
        if backbone not in run.backbones:
            continue
        for fixed, items, names in variant_groups(run, axis):
            reference = variant_reference(run, axis, items, names, opts)
            cmp = compare(
                run, opts, "formulations", backbone, section.metric or opts.metric, items, reference,
                section.pairs or opts.pairs,
            ).along_axis(axis, fixed)  # fmt: skip
            label = {"f1": "F1", "auc": "one-vs-rest AUC"}.get(cmp.metric, cmp.metric)
            title = section.title or f"Table 2 — per-class {label}, {backbone}: {axis} ({', '.join(names)}) of {fixed}"
            ctx.tables.extend(comparison_table(cmp, run, title))
            if opts.test == "bayes":
                ctx.table(bayes_table(bayes_compare(run, opts, "formulations", items, reference), run))


def _bayes(ctx: Context, opts: Options, section, axis: str) -> None:
    """Table 2b and the posterior figures baycomp draws: a density per block, a simplex per pair across blocks."""
    run = ctx.run
    reference = section_reference(run, section, axis) or axis_reference(run, opts, axis)
    cmp = bayes_compare(run, opts, axis, section.items, reference, section.pairs or opts.pairs)
    ctx.table(bayes_table(cmp, run))
    for block in cmp.blocks:
        if any(b == block for b, _, _ in cmp.within):
            ctx.figure(f"bayes posterior densities — {block}", partial(bayes_densities, cmp, block))
    for x, y in cmp.across:
        ctx.figure(f"bayes posterior simplex — {x} vs {y}", partial(bayes_simplex, cmp, x, y))


def per_class_f1(run: Run, opts: Options) -> Table:
    """Table 2 of the default view: the per-class metric of every formulation within one backbone."""
    opts = resolve(run, opts)
    cmp = compare(
        run, opts, "formulations", default_backbone(run, opts), opts.metric, reference=opts.reference, pairs=opts.pairs
    )
    if opts.reference not in run.formulations:
        cmp.reference = None
    table = comparison_table(cmp, run)[0]
    if opts.reference not in run.formulations:
        table.notes.insert(1, f"No stars: the reference formulation {opts.reference!r} is not in this run.")
    return table


def bayes_densities(cmp, block: str) -> bytes:
    """The posterior of Δ = y − x of every pair within one block, as baycomp draws one (the Student posterior of
    the correlated t-test, the ROPE as two lines), one panel per pair so a block is one figure."""
    from scipy import stats

    plt = pyplot()
    pairs = [(x, y) for x, y in cmp.pairs if (block, x, y) in cmp.within]
    fig, panels, cols = grid(plt, len(pairs), 4.2, 3.0)
    axes = [panels[k // cols, k % cols] for k in range(len(pairs))]
    for ax, (x, y) in zip(axes, pairs):
        res = cmp.within[block, x, y]
        post = res.posterior
        targs = (post.df, post.mean, np.sqrt(post.var))
        if post.var > 0:
            lo = min(stats.t.ppf(0.005, *targs), -1.05 * cmp.rope)
            hi = max(stats.t.ppf(0.995, *targs), 1.05 * cmp.rope)
            xs = np.linspace(lo, hi, 200)
            ys = stats.t.pdf(xs, *targs)
            ax.plot(xs, ys, color="#2f56e0", linewidth=1.5)
            ax.fill_between(xs, ys, 0, color="#34ccff", alpha=0.6)
        else:
            ax.axvline(post.mean, color="#2f56e0", linewidth=1.5)
        ax.axvline(-cmp.rope, color="#ffad2f", linewidth=1.5, label=f"ROPE ±{cmp.rope:g}")
        ax.axvline(cmp.rope, color="#ffad2f", linewidth=1.5)
        ax.set_yticks([])
        ax.set_xlabel(f"Δ macro {cmp.metric} = {y} − {x}", fontsize=7)
        ax.set_title(
            f"P({x}) = {res.left:.3f}, P(ROPE) = {res.rope:.3f}, P({y}) = {res.right:.3f}", fontsize=7, wrap=True
        )
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(
        f"Bayesian correlated t-test posteriors within {block} (validation folds, ROPE ±{cmp.rope:g})", fontsize=9
    )
    return png(fig)


def bayes_simplex(cmp, x: str, y: str) -> bytes:
    """baycomp's own simplex of the signed-rank posterior across blocks: each sample a point in the triangle
    (x better, practically equivalent, y better)."""
    pyplot()
    res = cmp.across[x, y]
    fig = res.posterior.plot_simplex((x, y))
    blocks = "backbones" if cmp.axis == "formulations" else "formulations"
    fig.suptitle(
        f"Bayesian signed-rank posterior across {len(cmp.blocks)} {blocks}: {x} vs {y} (ROPE ±{cmp.rope:g})",
        fontsize=9,
    )
    return png(fig)
