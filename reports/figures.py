"""Figures (matplotlib, PNG bytes) for the HTML report."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from .load import Run
from .tables import Options, aligned, finetune_comparisons, mark_in_sample


class Rendered(bytes):
    """A figure's PNG bytes, with its PDF when the report writes figure files."""

    pdf: bytes | None = None
    figure: Any = None  # the matplotlib Figure, kept only for the Python API (render_figures(keep=True))


WANT_PDF = False  # set by render_figures(pdf=True): PDFs cost a second rendering, only for figure files
KEEP_FIGURES = False


def _png(fig) -> bytes:
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    # Labels are user text: "$x$" in a formulation label must be drawn as written, not parsed as mathtext.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


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

    from .compare import compare, figure_legend

    plt = _plt()
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
    return _png(fig), comparisons, drawn


def finetune_change(run: Run, opts: Options) -> bytes | None:
    pairs = [(before, after) for before, after, _ in finetune_comparisons(run)]
    if not pairs:
        return None
    plt = _plt()
    fig, axes, cols = _grid(plt, len(run.backbones), 5.0, 3.5)
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
    return _png(fig)


PER_ROW = 4  # panels per row: a figure stays readable at page width however many formulations a run has


def _grid(plt, n, panel_w, panel_h, rows_per_item=1):
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


def confusion_matrices(run: Run, opts: Options, backbone: str) -> bytes:
    plt = _plt()
    forms = run.formulations
    fig, axes, cols = _grid(plt, len(forms), 3.0, 3.0)
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
    return _png(fig)


def cd_diagram(friedman_result) -> bytes:
    """scikit-posthocs' critical-difference diagram: mean ranks, with formulations that the Nemenyi post-hoc
    test cannot tell apart joined by a bar (a clique)."""
    res, scores, leaky, *words = friedman_result
    blocks, what = words or ("backbones", "formulations")  # along an ablation axis: its variants within settings
    plt = _plt()
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
    return _png(fig)


def draw_cd(ax, res, scores):
    """The diagram's elements (scikit-posthocs): 'crossbars' are the cliques of indistinguishable formulations."""
    import pandas as pd
    import scikit_posthocs as sp

    from .stats import nemenyi_matrix

    names = list(res.mean_ranks)
    return sp.critical_difference_diagram(
        pd.Series(res.mean_ranks), nemenyi_matrix(scores, names), ax=ax, alpha=res.alpha
    )


def training_curves(run: Run, backbone: str) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    forms = run.formulations
    fig, axes, cols = _grid(plt, len(forms), 3.4, 2.5, rows_per_item=2)
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
    return _png(fig)


def score_distributions(run: Run, opts: Options) -> bytes | None:
    """Raw scores of score-based formulations (regression) per true grade, with their cut points."""
    cells = run.cells[run.cells.status == "done"]
    preds = run.store.predictions_frame(opts.split, ["key", "y_true", "score"])
    preds = preds[preds.score.notna() & preds.key.isin(cells.key)]
    if preds.empty:
        return None
    plt = _plt()
    forms = [f for f in run.formulations if cells[cells.formulation == f].key.isin(preds.key).any()]
    fig, axes, cols = _grid(plt, len(forms), 4.5, 3.4)
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
    return _png(fig)


def bayes_densities(cmp, block: str) -> bytes:
    """The posterior of Δ = y − x of every pair within one block, as baycomp draws one (the Student posterior of
    the correlated t-test, the ROPE as two lines), one panel per pair so a block is one figure."""
    from scipy import stats

    plt = _plt()
    pairs = [(x, y) for x, y in cmp.pairs if (block, x, y) in cmp.within]
    fig, grid, cols = _grid(plt, len(pairs), 4.2, 3.0)
    axes = [grid[k // cols, k % cols] for k in range(len(pairs))]
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
    return _png(fig)


def bayes_simplex(cmp, x: str, y: str) -> bytes:
    """baycomp's own simplex of the signed-rank posterior across blocks: each sample a point in the triangle
    (x better, practically equivalent, y better)."""
    _plt()
    res = cmp.across[x, y]
    fig = res.posterior.plot_simplex((x, y))
    blocks = "backbones" if cmp.axis == "formulations" else "formulations"
    fig.suptitle(
        f"Bayesian signed-rank posterior across {len(cmp.blocks)} {blocks}: {x} vs {y} (ROPE ±{cmp.rope:g})",
        fontsize=9,
    )
    return _png(fig)


def reliability_diagrams(run: Run, backbone: str, data) -> bytes | None:
    """Reliability diagrams (equal-mass bins of the top-class confidence), one panel per formulation with class
    probabilities: validation folds pooled, the same after cross-fitted temperature scaling, and the held-out test
    fold-ensemble."""
    from .calibration import N_BINS, adaptive_ece, reliability_curve

    forms = [f for f in run.formulations if data.cells(run, backbone, f)]
    if not forms:
        return None
    plt = _plt()
    fig, grid, cols = _grid(plt, len(forms), 3.4, 3.4)
    for k, f in enumerate(forms):
        ax = grid[k // cols, k % cols]
        keys = data.cells(run, backbone, f)
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=1, linestyle=":")
        parts = []
        curves = [("validation", data.pooled_val(keys), "o-", "#1f77b4")]
        curves.append(("validation, T-scaled", data.pooled_val(keys, temperature=True), "s--", "#2ca02c"))
        ens = data.test_ensemble(keys)
        if ens is not None:
            curves.append(("test ensemble", ens, "^-", "#d62728"))
        for label, (y, p), style, color in curves:
            conf, acc, _ = reliability_curve(y, p)
            ax.plot(conf, acc, style, color=color, markersize=3, linewidth=1, label=label)
            parts.append(f"{label}: aECE {adaptive_ece(y, p):.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.set_title(mark_in_sample(run, "val", f), fontsize=8)
        ax.text(0.02, 0.98, "\n".join(parts), fontsize=5.5, va="top", transform=ax.transAxes)
        ax.legend(fontsize=5.5, loc="lower right")
    fig.suptitle(
        f"Reliability diagrams — {backbone} ({N_BINS} equal-mass bins; the diagonal is perfect calibration)", fontsize=9
    )
    return _png(fig)
