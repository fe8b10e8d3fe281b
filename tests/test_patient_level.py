"""Patient-level scores: a patient's MES is the worst of their images; each number of Table 5b recomputed by hand
with scikit-learn from the stored test predictions."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score

from benchmark.cli import main
from reports.bootstrap import patient_grades
from reports.ensembles import FoldPredictions, ensemble
from reports.load import load_run
from reports.sections.patient import patient_level
from reports.table import Options

# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_patient_level")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny_suite

    tmp = tmp_path_factory.mktemp("patients")
    suite = tiny_suite(tmp, name="pl", formulations=["softmax", "coral"], training={"epochs": 3})
    out = tmp / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    return out


def test_a_patients_grade_is_the_worst_image_or_the_asked_quantile():
    ids, grades = patient_grades(["a", "a", "a", "b", "b"], [0, 3, 1, 2, 2])
    assert ids.tolist() == ["a", "b"] and grades.tolist() == [3, 2]
    _, median = patient_grades(["a", "a", "a", "b", "b"], [0, 3, 1, 2, 2], quantile=0.5)
    assert median.tolist() == [1, 2]  # an actual grade of the patient, never an interpolated 1.5


def _cells(table, backbone, formulation):
    row = next(r for r in table.rows if r[0] == backbone and r[1] == formulation)
    return dict(zip(table.columns, row))


def test_every_number_of_table_5b_equals_scikit_learn_on_patient_grades(run_dir):
    run = load_run(run_dir)
    preds = run.store.predictions_frame("test", ["key", "image_id", "y_true", "outputs"])
    table = patient_level(run, Options(n_resamples=200), preds)
    assert table.title.startswith("Table 5b — patient-level")
    groups = run.meta["test_groups"]
    tp = FoldPredictions.from_frame(preds)
    for f in ("softmax", "coral"):
        codes, y, pred, _ = ensemble(run, tp, "tiny", f)  # the fold-ensemble, decoded by the formulation's rule
        frame = pd.DataFrame({"patient": [groups[i] for i in tp.image_ids[codes]], "y": y, "pred": pred})
        per_patient = frame.groupby("patient").max()  # worst image, true and predicted
        yt, yp = per_patient.y.to_numpy(), per_patient.pred.to_numpy()
        shown = _cells(table, "tiny", f)
        assert shown["patients"] == str(len(per_patient))

        def point(name, shown=shown):
            return float(shown[name].split(" ")[0])

        assert point("accuracy") == pytest.approx(accuracy_score(yt, yp), abs=5e-4)
        assert point("QWK") == pytest.approx(cohen_kappa_score(yt, yp, weights="quadratic", labels=range(4)), abs=5e-4)
        present = np.unique(yt)
        recalls = recall_score(yt, yp, labels=present, average=None, zero_division=0)
        for k in range(4):
            if k in present:
                assert point(f"recall MES {k}") == pytest.approx(recalls[list(present).index(k)], abs=5e-4)
            else:
                assert shown[f"recall MES {k}"] == "absent"  # no patient of that grade: undefined, not 0
        assert point("remission vs active accuracy") == pytest.approx(accuracy_score(yt >= 2, yp >= 2), abs=5e-4)
        low, high = (float(v) for v in shown["accuracy"].split("[")[1].rstrip("]").split(", "))
        assert low <= point("accuracy") <= high
    assert any(n.startswith("Test patients per true patient grade: MES 0:") for n in table.notes)


def test_the_quantile_option_changes_the_rule_and_says_so(run_dir, capsys):
    assert main(["report", str(run_dir), "--markdown", "--patient-quantile", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "## Table 5b — patient-level scores" in out
    assert "the 0.5 quantile (next grade up) of the fold-ensemble's grades" in out
    assert main(["report", str(run_dir), "--markdown"]) == 0
    assert "is the maximum of the fold-ensemble's grades" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--markdown", "--patient-quantile", "0"]) == 2
    assert "--patient-quantile 0" in capsys.readouterr().err


def test_without_patient_ids_the_table_says_so(run_dir):
    run = load_run(run_dir)
    run.meta.pop("test_groups", None)
    preds = run.store.predictions_frame("test", ["key", "image_id", "y_true", "outputs"])
    table = patient_level(run, Options(n_resamples=50), preds)
    assert table.columns == ["note"] and "no patient ids" in table.rows[0][0]


@pytest.mark.parametrize("fmt", ["--html", "--latex"])
def test_the_patient_level_view_renders_in_every_format(run_dir, tmp_path, fmt):
    out = tmp_path / ("r.html" if fmt == "--html" else "r.tex")
    assert main(["report", str(run_dir), fmt, "--view", "patient-level", "-o", str(out)]) == 0
    text = out.read_text()
    assert "patient-level scores" in text and "remission vs active accuracy" in text
