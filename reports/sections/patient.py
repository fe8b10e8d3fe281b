"""Table 5b: patient-level scores of the held-out test set — a patient's grade is the worst (or a quantile) of their
images'."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..bootstrap import patient_bootstrap, patient_grades, patient_metric_names
from ..ensembles import MIN_PATIENTS_PER_GRADE, FoldPredictions, ensemble, undefined_notes
from ..load import Run
from ..protocol import protocol_notes
from ..table import Options, Table, incomplete
from .base import Context, register_section


def patient_level(run: Run, opts: Options, preds: pd.DataFrame) -> Table | None:
    """Clinically a patient's (a colonoscopy's) MES is its worst segment's: each test patient's predicted grade is
    the maximum (or `opts.patient_quantile`) of the fold-ensemble's image grades, against the maximum of the true
    image grades; metrics with a bootstrap over patients. Absent, with a note, where the data has no patients."""
    title = "Table 5b — patient-level scores (held-out test set, fold-ensemble)"
    if preds.empty:
        return None
    groups = run.meta.get("test_groups") or {}
    if not groups:
        return Table(
            title,
            ["note"],
            [["this dataset has no patient ids (a folder tree without them): no patient-level scores"]],
            key="patient",
        )
    if preds.outputs.isna().any():
        return None  # said by Table 5: no ensemble can be decoded from this run's stored predictions
    tp = FoldPredictions.from_frame(preds)
    rule = "maximum" if opts.patient_quantile >= 1 else f"{opts.patient_quantile:g} quantile (next grade up)"
    rows = []
    n_patients = 0
    per_grade: np.ndarray | None = None
    absent: set[str] = set()
    dropped: dict[str, int] = {}  # metric -> most resamples on which it was undefined (a grade absent)
    scale = run.scale
    metric_names = patient_metric_names(scale)
    for b in run.backbones:
        for f in run.formulations:
            ens = ensemble(run, tp, b, f)
            if ens is None:
                rows.append([b, f, "—"] + ["—"] * len(metric_names))
                continue
            codes, y, pred, _ = ens
            patients = [groups.get(i, i) for i in tp.image_ids[codes]]
            ids, true_grade = patient_grades(patients, y, 1.0)
            _, pred_grade = patient_grades(patients, pred, opts.patient_quantile)
            n_patients = len(ids)
            per_grade = np.bincount(true_grade, minlength=scale.k)
            boot = patient_bootstrap(true_grade, pred_grade, opts.n_resamples, scale=scale)
            cells = []
            for i, name in enumerate(metric_names):
                if boot.undefined[i] and not np.isnan(boot.point[i]):
                    dropped[name] = max(dropped.get(name, 0), int(boot.undefined[i]))
                if np.isnan(boot.point[i]):
                    cells.append("absent")
                    absent.add(name)
                else:
                    cells.append(f"{boot.point[i]:.3f} [{boot.low[i]:.3f}, {boot.high[i]:.3f}]")
            rows.append([b, f + (" †" if incomplete(run, b, f) else ""), str(n_patients)] + cells)
    if scale.binary_cut is not None:
        low, high = scale.binary_names
        binary = f" {' vs '.join(scale.binary_short).capitalize()}: {low} against {high} at patient level."
    else:
        binary = ""
    notes = [
        f"Patient level: each test patient's predicted {scale.name} is the {rule} of the fold-ensemble's grades of "
        f"their images (each formulation decoded by its own rule, as in Table 5), its true {scale.name} the maximum "
        f"of the true image grades.{binary}",
        f"95% percentile CIs from a bootstrap over the {n_patients} test patients ({opts.n_resamples} resamples, "
        "scipy.stats.bootstrap); every patient counts once, whatever their number of images.",
    ]
    if per_grade is not None:
        notes.append(
            "Test patients per true patient grade: "
            + ", ".join(f"{c}: {int(n)}" for c, n in zip(scale.classes, per_grade))
            + (
                f" — a grade with fewer than {MIN_PATIENTS_PER_GRADE} patients has a recall resting on that few."
                if any(0 < n < MIN_PATIENTS_PER_GRADE for n in per_grade)
                else "."
            )
        )
    if absent:
        notes.append(
            f"absent: no test patient has that true grade ({', '.join(sorted(absent))}), so its recall is undefined "
            "(not 0)."
        )
    notes += undefined_notes(dropped, opts.n_resamples, "patient", scored="patient")
    notes += protocol_notes(run, "test")
    return Table(title, ["backbone", "formulation", "patients"] + metric_names, rows, notes=notes, key="patient")


@register_section("patient", needs=("test",))
def patient(ctx: Context, opts: Options, section) -> None:
    """Table 5b — patient-level scores of each fold-ensemble on the held-out test set."""
    ctx.table(patient_level(ctx.run, opts, ctx.outputs()))
