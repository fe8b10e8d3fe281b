"""Table 4 and its figure: what each fine-tuning stage changes against its stage 1 (and `+f1` against its `+ft`
control), per class, with paired tests."""

from __future__ import annotations

import numpy as np

from ..design import Design, legend, stars_allowed
from ..figures import grid, png, pyplot
from ..load import Run
from ..protocol import mark_in_sample, protocol_notes
from ..stats import adjust
from ..table import Options, Table, aligned, resolve
from .base import Context, register_section


def finetune_comparisons(run: Run) -> list[tuple[str, str, str]]:
    """(before, after, what the difference isolates) for every fine-tuned formulation, and +f1 vs +ft where
    both exist: the control separates re-weighting from extra epochs at a new learning rate."""
    out = []
    forms = run.suite.formulations
    what = {
        "inverse_f1": "re-weighting + extra training",
        "drw": "effective-number re-weighting + extra training",
        "plain": "extra training alone",
    }
    for f in forms:
        if f.finetune:
            out.append((f.base().display, f.display, what[f.finetune]))
    alone = {"inverse_f1": "re-weighting alone", "drw": "effective-number re-weighting alone"}
    for f in forms:
        if f.finetune in alone:
            for g in forms:
                if g.finetune == "plain" and g.base().display == f.base().display:
                    out.append((g.display, f.display, alone[f.finetune]))
    # the two re-weightings from the same stage 1, same stage 2 schedule: only the weights differ
    for f in forms:
        if f.finetune == "drw":
            for g in forms:
                if g.finetune == "inverse_f1" and g.base().display == f.base().display:
                    out.append((f.display, g.display, "inverse-F1 vs effective-number weights"))
    return out


def finetune_effect(run: Run, opts: Options) -> Table | None:
    opts = resolve(run, opts)
    pairs = finetune_comparisons(run)
    if not pairs:
        return None
    design = Design.of(run, opts)
    rows, pvals = [], []
    for b in run.backbones:
        for before, after, what in pairs:
            for k, cls in enumerate(run.scale.classes):
                row = [b, f"{before} → {mark_in_sample(run, opts.split, after)}", what, cls]
                for metric in ("f1", "recall", "precision"):
                    x, y = aligned(
                        run.series(b, before, opts.split, "mes", metric, str(k)),
                        run.series(b, after, opts.split, "mes", metric, str(k)),
                    )
                    if len(x) == 0:
                        row += ["—", "—"]
                        if metric == "f1":
                            pvals.append(np.nan)
                        continue
                    d = y - x
                    row += [f"{x.mean():.3f} → {y.mean():.3f}", f"{d.mean():+.3f}"]
                    if metric == "f1":
                        pvals.append(design.p_value(y, x))
                rows.append(row)
    valid = [p for p in pvals if not np.isnan(p)]
    adj = iter(adjust(valid, opts.correction))
    allowed = stars_allowed(opts, design, len(valid))
    for row, p in zip(rows, pvals):
        row.append("—" if np.isnan(p) else f"{next(adj):.3g}" + ("" if allowed else " (n.s. at this n)"))
    weights_note = (
        "Inverse-F1 weights: w ∝ 1/max(F1, ε) per class on the stage-1 model's validation fold, capped at "
        "max_weight × the smallest and normalised to mean 1 (stored per cell). Stage 2 of `+f1` and of its "
        "control `+ft` is identical (same start, epochs, learning rate) except the weights; model "
        "selection in stage 2 monitors the unweighted validation loss, as in stage 1."
    )
    if any(f.finetune == "drw" for f in run.suite.formulations):
        weights_note += (
            " `+drw` (deferred re-weighting, Cao et al. 2019) is the same stage 2 with effective-number weights of "
            "the fold's training class counts, w ∝ (1 − β)/(1 − β^n), normalised to mean 1 (β = finetune_options.beta, "
            "0.999 unless set); they use no validation data, so `+drw` is never in-sample."
        )
    notes = [
        "Before → after fine-tuning, mean over folds; Δ = after − before per fold, averaged.",
        weights_note,
        legend(
            opts,
            design,
            len(valid),
            None,
            subject="p (ΔF1): {paired} comparison of after with before (the 'reference' of each row)",
        ),
    ]
    notes += [n for n in protocol_notes(run, opts.split) if n.startswith("‡")]
    if not any(f.finetune == "plain" for f in run.suite.formulations):
        notes.append(
            "No `+ft` control in this suite: '+f1 vs stage 1' mixes re-weighting with extra training. Add "
            "`X+ft` next to `X+f1` to separate them."
        )
    return Table(
        "Table 4 — effect of fine-tuning",
        [
            "backbone",
            "comparison",
            "isolates",
            "class",
            "F1",
            "ΔF1",
            "recall",
            "Δrecall",
            "precision",
            "Δprecision",
            "p (ΔF1)",
        ],
        rows,
        notes=notes,
        key="finetune",
    )


@register_section("finetune")
def finetune(ctx: Context, opts: Options, section) -> None:
    """Table 4 — per-class F1, recall and precision before → after each fine-tuning stage."""
    ctx.table(finetune_effect(ctx.run, opts), section.title)


def finetune_change(run: Run, opts: Options) -> bytes | None:
    pairs = [(before, after) for before, after, _ in finetune_comparisons(run)]
    if not pairs:
        return None
    plt = pyplot()
    fig, axes, cols = grid(plt, len(run.backbones), 5.0, 3.5)
    for n, b in enumerate(run.backbones):
        ax = axes[n // cols, n % cols]
        width = 0.8 / len(pairs)
        for j, (before, after) in enumerate(pairs):
            diffs = []
            for k in run.scale.grades:
                x, y = aligned(
                    run.series(b, before, opts.split, "mes", "f1", str(k)),
                    run.series(b, after, opts.split, "mes", "f1", str(k)),
                )
                diffs.append((y - x).mean() if len(x) else np.nan)
            ax.bar(
                np.arange(run.scale.k) + (j - (len(pairs) - 1) / 2) * width,
                diffs,
                width,
                label=f"{before} → {mark_in_sample(run, opts.split, after)}",
            )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(run.scale.grades, list(run.scale.classes))
        ax.set_title(f"ΔF1 after fine-tuning — {b}")
        ax.legend(fontsize=7)
    return png(fig)


@register_section("figure_finetune")
def figure_finetune(ctx: Context, opts: Options, section) -> None:
    """Figure: ΔF1 per grade after each fine-tuning stage, one panel per backbone."""
    ctx.figure(section.title or "change after fine-tuning", lambda: finetune_change(ctx.run, opts))
