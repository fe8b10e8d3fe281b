"""Any ordinal scale, any centre (#26): K, the grades' names and the binary split come from the data (or the suite's
`scale:`), every formulation and table is sized by them, and external test sets (`test_sets:`) are evaluated with
each fold model and fold-ensemble and reported on their own, their grades mapped through `label_map`."""

from __future__ import annotations

import sqlite3

import cv2
import numpy as np
import pytest
import yaml

from benchmark.cli import main
from benchmark.errors import BenchError
from formulations import FORMULATIONS
from reports.load import load_run


def write_tree(root, folders, per_class=14, size=24, seed=0, shift=0.0):
    """One folder per class; the image's brightness grows with the class (a learnable grade), plus noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(folders):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            level = 40 + 35 * k + 20 * shift
            img = np.clip(rng.normal(level, 18, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{i:03d}.png"), img)
    return root


def write_suite(tmp_path, doc, name="s"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


TRAINING = {"epochs": 2, "lr": 0.003, "batch_size": 16, "finetune_epochs": 1, "finetune_lr": 0.001}
PROTOCOL = {"kind": "study", "folds": 2, "seed": 0, "test_fraction": 0.25}


def markdown(tmp_path, run_dir, *extra):
    out = tmp_path / f"report{len(extra)}.md"
    assert main(["report", str(run_dir), "--markdown", "-o", str(out), *extra]) == 0
    return out.read_text()


def test_a_five_folder_tree_with_a_second_centre_trains_every_cell_and_reports_both(tmp_path):
    """The issue's first check: folders u0…u4, the formulations it names (MTL with a given hierarchy, with and
    without inverse-F1 fine-tuning) and a second five-folder tree as an external test set through label_map."""
    train = write_tree(tmp_path / "centre-a", [f"u{k}" for k in range(5)])
    second = write_tree(tmp_path / "centre-b", ["c0", "c1", "c2", "c3", "c4", "c-unsure"], per_class=8, seed=1)
    groups = [[0, 1], [2, 3, 4]]
    doc = {
        "name": "five",
        "dataset": {"name": "folder", "root": str(train), "class_dirs": [f"u{k}" for k in range(5)]},
        "protocol": PROTOCOL,
        "training": {**TRAINING, "epochs": 1},
        "backbones": ["tiny"],
        "formulations": [
            "softmax",
            "regression",
            "coral",
            "corn",
            "cdw_ce",
            {"name": "mtl", "options": {"groups": groups}},
            {"name": "mtl", "options": {"groups": groups}, "finetune": "inverse_f1"},
        ],
        "test_sets": [
            {
                "name": "second-centre",
                "dataset": {
                    "name": "folder",
                    "root": str(second),
                    "class_dirs": ["c0", "c1", "c2", "c3", "c4", "c-unsure"],
                },
                "label_map": {"c0": 0, "c1": 1, "c2": 2, "c3": "u3", "c4": 4, "c-unsure": None},
            }
        ],
    }
    run_dir = tmp_path / "run"
    assert main(["run", str(write_suite(tmp_path, doc)), "--out", str(run_dir), "--quiet"]) == 0
    run = load_run(run_dir)
    assert run.complete and run.counts["done"] == 7 * 2
    assert run.scale.classes == ("u0", "u1", "u2", "u3", "u4") and run.scale.binary_cut is None
    # every cell predicted every mapped image of the second centre, with the mapped grade as its truth
    ext = run.store.predictions_frame("external:second-centre", ["key", "image_id", "y_true", "y_pred"])
    assert set(ext.key) == set(run.cells.key)
    per_cell = ext.groupby("key").size()
    assert (per_cell == 5 * 8).all()  # c-unsure dropped
    folder_grade = ext.image_id.str.split("/").str[0].map({"c0": 0, "c1": 1, "c2": 2, "c3": 3, "c4": 4})
    assert (folder_grade == ext.y_true).all() and ext.y_pred.between(0, 4).all()
    md = markdown(tmp_path, run_dir, "--split", "test")
    assert "| u4 |" in md  # Table 2's row of the fifth grade
    assert "Table 5c — external test set 'second-centre', fold-ensemble" in md
    assert "Table 5d — from the internal to the external test set 'second-centre'" in md
    assert "c-unsure → dropped" in md and "c3 → u3" in md and "8 more dropped by its label_map" in md
    assert "remission" not in md and "MES" not in md  # a scale of its own, no binary split borrowed from MES
    assert "g2-4 (u2 vs u3 vs u4)" in md  # the MTL's sub-head of the given hierarchy
    # Grad-CAM on five grades: images of every grade, the grade and a sub-head of the given hierarchy
    explain = tmp_path / "explain"
    for head in ("grade", "g2-4"):
        args = ["explain", str(run_dir), "--formulation", "mtl", "--head", head, "--per-class", "1", "-o", str(explain)]
        assert main(args) == 0
        assert (explain / f"tiny__mtl__{head}.png").stat().st_size > 0


def _sklearn_check(run, k):
    """Every stored grade metric of the held-out test split, recomputed by scikit-learn at K grades from the stored
    per-image predictions."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score

    preds = run.store.predictions_frame("test", ["key", "y_true", "y_pred"])
    long = run.long[(run.long.split == "test") & (run.long.task == "mes")]
    labels = list(range(k))
    checked = 0
    for key, g in preds.groupby("key"):
        y, p = g.y_true.to_numpy(), g.y_pred.to_numpy()
        cells = run.cells[run.cells.key == key].iloc[0]
        rows = long[(long.formulation == cells.formulation) & (long.fold == cells.fold)]
        value = {(m, c): v for m, c, v in zip(rows.metric, rows.cls, rows.value)}
        assert value[("accuracy", "")] == pytest.approx(accuracy_score(y, p))
        assert value[("f1", "macro")] == pytest.approx(f1_score(y, p, labels=labels, average="macro", zero_division=0))
        assert value[("qwk", "")] == pytest.approx(cohen_kappa_score(y, p, labels=labels, weights="quadratic"))
        top = str(k - 1)
        assert value[("recall", top)] == pytest.approx(
            recall_score(y, p, labels=[k - 1], average=None, zero_division=0)[0]
        )
        assert (("f1", str(k)) not in value) and ("f1", top) in value
        checked += 1
    return checked


MTL_GROUPS = {3: [[0], [1, 2]], 5: [[0, 1], [2, 3, 4]], 9: [[0, 1], [2, 3, 4], [5, 6, 7, 8]]}


@pytest.mark.parametrize("k", [3, 5, 9])
def test_every_formulation_trains_on_synthetic_scales_of_three_five_and_nine_grades(tmp_path, k):
    names = [f"U{g}" for g in range(k)] if k == 9 else None
    params = {"n_images": 40 * k, "n_patients": 10 * k, "size": [16, 16], "seed": 3, "classes": k}
    params["shares"] = [1.0] * k
    if k == 3:
        params["classes"] = ["mild", "moderate", "severe"]
    formulations = [
        {"name": n, "options": {"groups": MTL_GROUPS[k]}} if n == "mtl" else n for n in sorted(FORMULATIONS)
    ]
    doc = {
        "name": f"k{k}",
        "dataset": {"name": "synthetic", "params": params},
        "protocol": PROTOCOL,
        "training": {**TRAINING, "epochs": 1},
        "backbones": ["tiny"],
        "formulations": formulations,
    }
    if names:
        doc["scale"] = {"name": "UCEIS", "classes": names, "binary_cut": 2}
    run_dir = tmp_path / "run"
    # every formulation on one fold (CI's time; the five-folder tree's test reports two folds)
    assert main(["run", str(write_suite(tmp_path, doc)), "--out", str(run_dir), "--quiet", "--only", "fold=0"]) == 0
    run = load_run(run_dir)
    assert run.counts["done"] == len(FORMULATIONS) and run.scale.k == k
    expected = tuple(names or (["mild", "moderate", "severe"] if k == 3 else [f"grade {g}" for g in range(k)]))
    assert run.scale.classes == expected
    assert _sklearn_check(run, k) == len(FORMULATIONS)
    md = markdown(tmp_path, run_dir, "--split", "test")
    for name in expected:
        assert f"| {name} |" in md, name  # a row of the per-class table
    assert f"{expected[-1]} recall" in md  # Table 5's highest grade
    if k == 9:  # the suite's binary split, named from its grades
        assert "low-vs-high F1" in md and "low (U0–U1)" in md
        assert ((run.long.task == "ra") & (run.long.metric == "auc")).any()
    else:
        assert not (run.long.task == "ra").any()
    view = markdown(tmp_path, run_dir, "--view", "polat-2023")
    assert "macro F1" in view
    csv = tmp_path / "r.csv"
    assert main(["report", str(run_dir), "--csv", "-o", str(csv)]) == 0
    text = csv.read_text()
    assert f",mes,recall,{k - 1},{expected[-1]}," in text and f",mes,recall,{k}," not in text


def test_shifted_second_centre_and_a_hyperkvasir_tree_are_external_test_sets_of_a_mes_suite(tmp_path, capsys):
    """A MES suite on the synthetic data, tested on the synthetic second centre (colour/illumination shift, another
    class balance) and on a HyperKvasir-shaped tree whose six folders load through the label_map that `bench data
    inspect` prints (in-between grades dropped, MES 0 absent — reported absent, never 0)."""
    hk = tmp_path / "hyper-kvasir" / "labeled-images" / "lower-gi-tract" / "pathological-findings"
    folders = [f"ulcerative-colitis-grade-{g}" for g in ("0-1", "1", "1-2", "2", "2-3", "3")]
    write_tree(hk, folders, per_class=5, size=20, seed=4)
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "hyper-kvasir")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "ulcerative-colitis-grade-1-2 │ 5 images → dropped" in said and "→ MES 3" in said
    label_map = {
        n: {"0-1": None, "1": 1, "1-2": None, "2": 2, "2-3": None, "3": 3}[n.rsplit("grade-")[1]] for n in folders
    }
    assert "'ulcerative-colitis-grade-0-1': null" in said and "'ulcerative-colitis-grade-3': 3" in said
    params = {"n_images": 160, "n_patients": 24, "size": [16, 16], "seed": 1}
    doc = {
        "name": "mes-external",
        "dataset": {"name": "synthetic", "params": params},
        "protocol": {"kind": "grouped", "folds": 2, "seed": 0, "test_fraction": 0.25},
        "training": {**TRAINING, "epochs": 1},
        "backbones": ["tiny"],
        "formulations": ["softmax", "mtl"],
        "test_sets": [
            {
                "name": "second-centre",
                "dataset": {
                    "name": "synthetic",
                    "params": {
                        **params,
                        "seed": 9,
                        "n_images": 80,
                        "n_patients": 16,
                        "shift": 1.0,
                        "shares": [0.25] * 4,
                    },
                },
            },
            {
                "name": "hyperkvasir",
                "dataset": {"name": "folder", "root": str(hk), "class_dirs": folders, "resize": [16, 16]},
                "label_map": label_map,
            },
        ],
    }
    run_dir = tmp_path / "run"
    assert main(["run", str(write_suite(tmp_path, doc)), "--out", str(run_dir), "--quiet"]) == 0
    run = load_run(run_dir)
    info = run.meta["test_sets"]
    assert info["hyperkvasir"]["images"] == 15 and info["hyperkvasir"]["dropped"] == 15
    assert info["hyperkvasir"]["absent"] == ["MES 0"] and info["second-centre"]["patients"] == 16
    md = markdown(tmp_path, run_dir, "--split", "test")
    assert "Table 5 — held-out test set" in md
    assert "Table 5c — external test set 'second-centre'" in md and "Table 5c — external test set 'hyperkvasir'" in md
    assert "Grades absent from it: MES 0" in md
    # the absent grade's per-fold recall is no row at all (never a 0), and macro-F1 averages the grades present
    hk_rows = run.long[run.long.split == "external:hyperkvasir"]
    recall = hk_rows[hk_rows.metric.isin(["recall", "f1"])]
    assert not ((recall.task == "mes") & (recall.cls == "0")).any()
    assert not ((recall.task == "remission") & (recall.cls == "0")).any()  # the MTL's MES 0-vs-1 head: MES 0 absent
    assert ((recall.task == "mes") & (recall.cls == "3")).any()
    from sklearn.metrics import f1_score

    preds = run.store.predictions_frame("external:hyperkvasir", ["key", "y_true", "y_pred"])
    key, g = next(iter(preds.groupby("key")))
    stored = hk_rows[(hk_rows.metric == "f1") & (hk_rows.cls == "macro")]
    cell = run.cells[run.cells.key == key].iloc[0]
    value = stored[(stored.formulation == cell.formulation) & (stored.fold == cell.fold)].value.iloc[0]
    assert value == pytest.approx(f1_score(g.y_true, g.y_pred, labels=[1, 2, 3], average="macro", zero_division=0))
    # the second centre's own patients are the resampling unit of its table
    assert "the 16 test patients are resampled" in md


def test_a_drop_ci_is_scipys_independent_bootstrap_of_sklearns_metric():
    from scipy import stats
    from sklearn.metrics import accuracy_score

    from reports.bootstrap import independent_difference

    rng = np.random.default_rng(0)
    ya, yb = rng.integers(0, 4, 120), rng.integers(0, 4, 90)
    pa = np.where(rng.random(120) < 0.7, ya, rng.integers(0, 4, 120))
    pb = np.where(rng.random(90) < 0.5, yb, rng.integers(0, 4, 90))
    res = independent_difference(ya, pa, np.arange(120), yb, pb, np.arange(90), 4, n_resamples=200, seed=3)
    assert res.point[0] == pytest.approx(accuracy_score(yb, pb) - accuracy_score(ya, pa))
    ref = stats.bootstrap(
        (np.arange(120), np.arange(90)),
        lambda ia, ib: accuracy_score(yb[ib], pb[ib]) - accuracy_score(ya[ia], pa[ia]),
        paired=False,
        vectorized=False,
        n_resamples=200,
        method="percentile",
        random_state=np.random.default_rng(3),
    )
    assert res.low[0] == pytest.approx(ref.confidence_interval.low, abs=1e-9)
    assert res.high[0] == pytest.approx(ref.confidence_interval.high, abs=1e-9)


def _error(capsys, *args):
    capsys.readouterr()
    code = main(list(args))
    text = " ".join((capsys.readouterr().err).split())
    assert "Traceback" not in text
    return code, text


def test_a_scale_the_suite_cannot_train_is_refused_at_load_with_its_line(tmp_path, capsys):
    base = {
        "name": "bad",
        "dataset": {
            "name": "synthetic",
            "params": {"n_images": 200, "n_patients": 40, "size": [16, 16], "seed": 1, "classes": 5},
        },
        "training": TRAINING,
        "backbones": ["tiny"],
    }
    path = write_suite(tmp_path, {**base, "formulations": ["softmax", "mtl"]})
    code, text = _error(capsys, "run", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "line" in text and "formulations[1] (mtl)" in text and "groups: [[0, 1], [2, 3, 4]]" in text
    path = write_suite(
        tmp_path, {**base, "formulations": ["softmax"], "scale": {"name": "KL", "classes": ["a", "b", "c"]}}
    )
    code, text = _error(capsys, "run", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "scale.classes names 3 grades" in text and "the data has 5" in text
    assert not (tmp_path / "o" / "results.db").exists()


def test_a_label_map_that_does_not_fit_names_the_class_and_the_fix(tmp_path, capsys):
    other = write_tree(tmp_path / "b", ["x0", "x1", "x2"], per_class=3, size=16)
    base = {
        "name": "ext",
        "dataset": {"name": "synthetic", "params": {"n_images": 160, "n_patients": 24, "size": [16, 16], "seed": 1}},
        "protocol": PROTOCOL,
        "training": TRAINING,
        "backbones": ["tiny"],
        "formulations": ["softmax"],
    }
    folder = {"name": "folder", "root": str(other), "class_dirs": ["x0", "x1", "x2"]}
    cases = [
        ({"x0": 0, "x1": 1}, "no entry for 'x2'"),
        ({"x0": 0, "x1": 1, "x2": 1, "x9": 2}, "'x9' is none of the set's classes"),
        ({"x0": 0, "x1": 1, "x2": 7}, "7 is not a grade of the suite's scale"),
        (None, "the set has 3 classes"),
        ({"x0": None, "x1": None, "x2": None}, "drops every image"),
    ]
    for label_map, needle in cases:
        entry = {"name": "b", "dataset": folder} | ({} if label_map is None else {"label_map": label_map})
        path = write_suite(tmp_path, {**base, "test_sets": [entry]})
        code, text = _error(capsys, "run", str(path), "--out", str(tmp_path / "o"))
        assert code == 2 and needle in text and "test_sets[b]" in text, (needle, text)
    big = write_tree(tmp_path / "c", ["y0", "y1", "y2", "y3"], per_class=3, size=20)
    entry = {"name": "c", "dataset": {"name": "folder", "root": str(big), "class_dirs": ["y0", "y1", "y2", "y3"]}}
    code, text = _error(
        capsys, "run", str(write_suite(tmp_path, {**base, "test_sets": [entry]})), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "resize: [16, 16]" in text


def test_a_run_stored_before_scales_existed_still_reports_and_refuses_new_cells(tmp_path, make_suite):
    """Schema 2 (four probability columns p0…p3) is read as it is; `bench run` does not add cells to it."""
    from benchmark.run.store import Store

    run_dir = tmp_path / "old"
    suite = make_suite(name="old", formulations=["softmax", "coral"])
    assert main(["run", str(suite), "--out", str(run_dir), "--quiet"]) == 0
    before = load_run(run_dir).store.predictions_frame("test", ["key", "image_id", "p0", "p1", "p2", "p3"])
    md_before = markdown(tmp_path, run_dir, "--split", "test")
    db = sqlite3.connect(run_dir / "results.db")
    db.execute("ALTER TABLE predictions ADD COLUMN p0 FLOAT")
    for c in ("p1", "p2", "p3"):
        db.execute(f"ALTER TABLE predictions ADD COLUMN {c} FLOAT")
    rows = db.execute("SELECT rowid, proba FROM predictions").fetchall()
    for rowid, blob in rows:
        values = [None] * 4 if blob is None else np.frombuffer(blob).tolist()
        db.execute("UPDATE predictions SET p0 = ?, p1 = ?, p2 = ?, p3 = ? WHERE rowid = ?", (*values, rowid))
    db.execute("ALTER TABLE predictions DROP COLUMN proba")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.execute("DELETE FROM meta WHERE key = 'scale'")  # not stored before schema 3: MES, the only scale then
    db.commit()
    db.close()
    old = load_run(run_dir)
    assert old.store.schema_version == 2 and old.scale.classes == ("MES 0", "MES 1", "MES 2", "MES 3")
    after = old.store.predictions_frame("test", ["key", "image_id", "p0", "p1", "p2", "p3"])
    assert after.equals(before) or np.allclose(
        after[["p0", "p1"]].to_numpy(float), before[["p0", "p1"]].to_numpy(float), equal_nan=True
    )
    assert markdown(tmp_path, run_dir, "--split", "test") == md_before
    with pytest.raises(BenchError, match="schema version 2"):
        Store(run_dir)
