"""Table 8 and the reliability diagrams: ECE, adaptive ECE and Brier before → after temperature scaling, on
validation (cross-fitted) and on the held-out test set."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..calibration import CalibrationData
from ..figures import grid, png, pyplot
from ..load import Run
from ..protocol import mark_in_sample, protocol_notes
from ..table import Options, Table
from .base import Context, register_section


def calibration_table(run: Run, opts: Options, data: CalibrationData, with_test: bool = True) -> Table | None:
    """ECE, adaptive ECE and Brier before → after temperature scaling, on validation (cross-fitted) and on the
    held-out test set (T of each fold model fitted on its whole validation fold, never on test); `with_test`
    False leaves the test columns empty without reading the test predictions."""
    from ..calibration import N_BINS, calibration_scores, fit_temperature

    if not data.val:
        return None
    names = ["ECE", "adaptive ECE", "Brier"]
    rows = []
    without = []
    for b in run.backbones:
        for f in run.formulations:
            keys = data.cells(run, b, f)
            if not keys:
                if f not in without:
                    without.append(f)
                continue
            temps = {k: fit_temperature(data.val[k][1], data.val[k][2]) for k in keys}
            before = calibration_scores(*data.pooled_val(keys))
            after = calibration_scores(*data.pooled_val(keys, temperature=True))
            row = [b, mark_in_sample(run, "val", f), f"{np.median(list(temps.values())):.2f}"]
            row += [f"{before[n]:.3f} → {after[n]:.3f}" for n in names]
            ens = data.test_ensemble(keys) if with_test else None
            ens_t = data.test_ensemble(keys, temps) if with_test else None
            if ens is None or ens_t is None:
                row += ["—"] * len(names)
            else:
                tb, ta = calibration_scores(*ens), calibration_scores(*ens_t)
                row += [f"{tb[n]:.3f} → {ta[n]:.3f}" for n in names]
            rows.append(row)
    if not rows:
        return None
    notes = [
        f"Calibration of the top-class confidence: ECE with {N_BINS} equal-width bins, adaptive ECE with {N_BINS} "
        "equal-mass bins, multi-class Brier score (Σ over grades of the squared error of each probability; 0 best); "
        "each before → after temperature scaling (Guo et al. 2017: p ∝ p^(1/T), T minimising the validation NLL; the "
        "predicted grade of the mode is unchanged).",
        "Validation: every fold model's validation images pooled (out-of-fold). After-scaling numbers are "
        "cross-fitted: each fold's validation images are split into two grade-stratified halves"
        + (
            ", each patient's images in one half,"
            if data.halves_unit == "patient"
            else " of images (this run records no patient ids),"
        )
        + " each scaled with the T fitted on the other. T (median over fold models) is fitted on a model's whole "
        "validation fold.",
        "Test: the fold-ensemble's class probabilities (the mean of the fold models' probabilities) on the held-out "
        "test set; after scaling, each fold model's probabilities are scaled with its own validation T before the "
        "mean. The test set never fits anything.",
    ]
    if without:
        notes.append(f"Not shown (no class probabilities): {', '.join(without)}.")
    own = [f for f in run.formulations if run.formulation(f).options.get("calibration") == "temperature"]
    if own:
        notes.append(
            f"{', '.join(own)}: `calibration: temperature` — their stored probabilities are already temperature-scaled "
            "by their own decoding step (cross-fitted on validation), so 'before' is after that step and 'after' "
            "scales them once more."
        )
    notes += [n for n in protocol_notes(run, "val") if n.startswith("‡")]
    return Table(
        "Table 8 — calibration before → after temperature scaling",
        ["backbone", "formulation", "T"] + [f"val {n}" for n in names] + [f"test {n}" for n in names],
        rows,
        notes=notes,
        key="calibration",
    )


@register_section("calibration")
def calibration(ctx: Context, opts: Options, section) -> None:
    """Table 8 — calibration before → after temperature scaling, validation and test."""
    ctx.table(calibration_table(ctx.run, opts, ctx.calibration(), ctx.with_test), section.title)


def reliability_diagrams(run: Run, backbone: str, data) -> bytes | None:
    """Reliability diagrams (equal-mass bins of the top-class confidence), one panel per formulation with class
    probabilities: validation folds pooled, the same after cross-fitted temperature scaling, and the held-out test
    fold-ensemble."""
    from ..calibration import N_BINS, adaptive_ece, reliability_curve

    forms = [f for f in run.formulations if data.cells(run, backbone, f)]
    if not forms:
        return None
    plt = pyplot()
    fig, panels, cols = grid(plt, len(forms), 3.4, 3.4)
    for k, f in enumerate(forms):
        ax = panels[k // cols, k % cols]
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
    return png(fig)


@register_section("figure_reliability")
def figure_reliability(ctx: Context, opts: Options, section) -> None:
    """Figure: reliability diagrams per backbone (it reads the test predictions too, figure files included)."""

    def draw(backbone: str) -> bytes | None:
        return reliability_diagrams(ctx.run, backbone, ctx.calibration())

    for b in ctx.run.backbones:
        ctx.figure(f"{section.title or 'reliability diagrams'} — {b}", partial(draw, b))
