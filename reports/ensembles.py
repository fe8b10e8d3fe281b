"""The held-out test set's fold-ensembles: every cell's test outputs aligned by image, each backbone ×
formulation combined and decoded by the formulation's own rule, and the notes their bootstrap CIs need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.labels import Scale

from .load import Run


@dataclass
class FoldPredictions:
    """Test-set outputs of every cell, aligned by image, prepared once."""

    by_key: dict
    codes: np.ndarray
    image_ids: np.ndarray
    y_by_image: np.ndarray
    outputs: list  # per row: float64 outputs of the formulation

    @classmethod
    def from_frame(cls, preds: pd.DataFrame) -> FoldPredictions:
        codes, uniques = pd.factorize(preds.image_id)
        y = np.zeros(len(uniques), dtype=np.int64)
        y[codes] = preds.y_true.to_numpy()
        return cls(preds.groupby("key").indices, codes, np.asarray(uniques), y, preds.outputs.tolist())

    def stacked(self, keys):
        """(models, images, m) outputs of these cells on the images all of them predicted, and those images."""
        per_key = []
        for k in keys:
            pos = self.by_key[k]
            order = np.argsort(self.codes[pos], kind="stable")
            pos = pos[order]
            per_key.append((self.codes[pos], pos))
        common = per_key[0][0]
        for c, _ in per_key[1:]:
            common = np.intersect1d(common, c)
        mats = []
        for c, pos in per_key:
            sel = pos[np.isin(c, common)]
            # one buffer per cell: every row of a formulation's outputs has the same length
            mats.append(np.frombuffer(b"".join(self.outputs[i] for i in sel), dtype=np.float64).reshape(len(sel), -1))
        return np.stack(mats), common


def ensemble(run: Run, tp: FoldPredictions, b: str, f: str):
    """The fold-ensemble of backbone b × formulation f by the formulation's own rule: (image codes, true
    grades, predicted grades, number of models) or None."""
    keys = [
        k
        for k in run.cells[(run.cells.backbone == b) & (run.cells.formulation == f) & (run.cells.status == "done")].key
        if k in tp.by_key
    ]
    if not keys:
        return None
    formulation = run.formulation(f)
    stacked, codes = tp.stacked(keys)
    states = [state or formulation.initial_state() for state in run.states(keys)]
    pred = formulation.ensemble_predict(stacked, states)
    return codes, tp.y_by_image[codes], np.asarray(pred), len(keys)


def external_sets(run: Run) -> dict[str, dict]:
    """The run's external test sets (`test_sets:`): name -> what `bench run` recorded of it."""
    return run.meta.get("test_sets") or {}


MIN_PATIENTS_PER_GRADE = 5


def undefined_notes(dropped: dict[str, int], n_resamples: int, unit: str, scored: str = "image") -> list[str]:
    """Say which statistics were undefined on some resamples and left out of their CI there (`scored`: what the
    metrics count, images or patients)."""
    if not dropped:
        return []
    parts = [f"{name}: up to {n} of {n_resamples}" for name, n in dropped.items()]
    return [
        f"Some {unit} resamples contain no {scored} of a grade, on which that grade's recall and F1 are undefined: "
        "those resamples are left out of the statistic's CI (not scored as 0), and macro-F1 averages over the "
        f"grades present in each resample. Resamples left out — {'; '.join(parts)}."
    ]


def few_patient_notes(tp: FoldPredictions, groups: dict, scale: Scale) -> list[str]:
    """Warn where a grade's test images come from so few patients that a patient-level CI is fragile."""
    notes = []
    for k, cls in enumerate(scale.classes):
        ids = tp.image_ids[tp.y_by_image == k]
        n = len({groups.get(i, i) for i in ids})
        if 0 < n < MIN_PATIENTS_PER_GRADE:
            notes.append(
                f"WARNING: the {len(ids)} test images of {cls} come from only {n} patient(s) (fewer than "
                f"{MIN_PATIENTS_PER_GRADE}): every statistic of {cls} rests on {n} patient(s), and its interval "
                "says little."
            )
    return notes
