"""The third audit (#35): a store that would lose every result, runs that would hang, images that would leak across
splits, inputs accepted without a word, internal errors, and printed words that said something else than what was
computed. Each test fails on the code the audit ran."""

import os
import time

import numpy as np
import pytest
import yaml
from fake_run import write_fake_run
from PIL import Image

from benchmark.cli import main


def refused(capsys, args) -> str:
    capsys.readouterr()
    code = main(args)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "internal error" not in err and "Traceback" not in err, (code, err)
    return err


def run_args(suite, tmp_path, *extra):
    return ["run", str(suite), "--out", str(tmp_path / "out"), "--quiet", *extra]


# ---------------------------------------------------------------------------- lost, hung or leaked


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"])
def test_an_in_memory_store_is_refused_before_anything_trains(make_suite, tmp_path, capsys, url):
    t0 = time.perf_counter()
    err = refused(capsys, run_args(make_suite(name="mem"), tmp_path, "--store", url))
    assert "in-memory" in err and "every trained cell would be lost" in err
    assert time.perf_counter() - t0 < 30  # refused at the door, not after training
    assert not (tmp_path / "out" / "cells").exists()


def test_a_sqlite_file_in_a_missing_folder_is_named_as_such(make_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, run_args(make_suite(name="rel"), tmp_path, "--store", "sqlite:///rel/missing-dir/x.db"))
    assert "folder" in err and "missing-dir" in err and "does not exist" in err
    assert "damaged" not in err


@pytest.mark.parametrize(
    "formulations",
    [
        [{"name": "softmax", "label": "mtl"}, "mtl+f1"],
        [{"name": "softmax", "label": "foo"}, {"name": "mtl", "finetune": "inverse_f1", "label": "foo+f1"}],
    ],
)
def test_a_label_that_names_another_formulations_stage_1_is_refused_with_its_line(
    make_suite, tmp_path, capsys, formulations
):
    suite = make_suite(name="clash", formulations=formulations)
    err = refused(capsys, run_args(suite, tmp_path))
    lines = suite.read_text().splitlines()
    line = int(err.split("line ")[1].split(",")[0])
    assert "formulations" in lines[line - 1] or lines[line - 1].lstrip().startswith("-")
    assert "stage 1" in err and "distinct 'label'" in err
    assert not (tmp_path / "out" / "results.db").exists()


def test_a_fine_tuned_formulation_next_to_its_own_stage_1_is_still_accepted(make_suite):
    from benchmark.suite.cells import expand_cells
    from benchmark.suite.loading import load_suite

    suite = load_suite(make_suite(name="ok", formulations=["mtl", "mtl+f1", {"name": "mtl", "label": "M"}]))
    cells = expand_cells(suite, 2)
    keys = {c.key for c in cells}
    assert all(c.depends in keys for c in cells if c.depends)  # every stage 2 has its stage 1


def test_a_huge_resize_is_refused_like_the_synthetic_size(make_suite, tmp_path, capsys):
    suite = make_suite(name="big", dataset={"name": "folder", "root": str(tmp_path), "resize": [100000, 100000]})
    err = refused(capsys, run_args(suite, tmp_path))
    assert "dataset.resize" in err and "4096" in err


def _tree(root, classes=("c0", "c1", "c2", "c3"), per=6):
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per):
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(root / c / f"p{i}_{k}.png")
    return root


@pytest.mark.parametrize(
    ("class_dirs", "words"),
    [
        (["c0", "c0/", "c2", "c3"], ["overlap"]),
        (["", "c1", "c2", "c3"], ["not the root itself"]),
        ([".", "c1", "c2", "c3"], ["not the root itself"]),
        (["c0", "c0/sub", "c2", "c3"], ["overlap"]),
        (["../x/c0", "c1", "c2", "c3"], ["leading out of it"]),
        (["/abs/c0", "c1", "c2", "c3"], ["absolute path"]),
        ([], ["at least two grades"]),
        (["c0"], ["at least two grades"]),
    ],
)
def test_class_folders_that_overlap_or_leave_the_root_are_refused(make_suite, tmp_path, capsys, class_dirs, words):
    root = _tree(tmp_path / "tree")
    suite = make_suite(name="dirs", dataset={"name": "folder", "root": str(root), "class_dirs": class_dirs})
    err = refused(capsys, run_args(suite, tmp_path))
    assert "class_dirs" in err
    for w in words:
        assert w in err, (w, err)


def test_overlapping_folders_would_have_put_one_image_in_two_grades(tmp_path):
    """What the refusal prevents: the same files loaded under two grades (the audit's leak)."""
    from benchmark.suite.schema import DatasetConfig

    root = _tree(tmp_path / "tree")
    ok = DatasetConfig(name="folder", root=str(root), class_dirs=["c0/", "c1", "c2", "c3"])
    assert ok.class_dirs == ["c0", "c1", "c2", "c3"]  # normalised: one spelling, so ids are c0/x.png


@pytest.mark.parametrize("second", ["./a.png", "ABS", "sub/../a.png"])
def test_a_manifest_that_names_one_file_twice_is_refused(make_suite, tmp_path, capsys, second):
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / f"{name}.png")
    second = str(d / "a.png") if second == "ABS" else second
    rows = ["path,label", "a.png,0", "b.png,1", "c.png,2", "d.png,3", f"{second},3"]
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    suite = make_suite(name="man", dataset={"name": "manifest", "manifest": str(d / "m.csv")})
    err = refused(capsys, run_args(suite, tmp_path))
    assert "rows 2" in err and "row" in err and "same file" in err and "label 0" in err and "label 3" in err


@pytest.mark.parametrize("what", ["folder", "/dev/zero"])
def test_a_manifest_that_is_not_a_file_says_what_it_is(make_suite, tmp_path, capsys, what):
    path = str(tmp_path) if what == "folder" else what
    suite = make_suite(name="mf", dataset={"name": "manifest", "manifest": path})
    err = refused(capsys, run_args(suite, tmp_path))
    assert ("is a folder" if what == "folder" else "is not a regular file") in err
    assert "does not exist" not in err


def test_task_metrics_of_a_task_without_valid_images_are_absent_not_an_error():
    from benchmark.metrics import all_rows
    from formulations import create_formulation

    mtl = create_formulation("mtl", {})
    y = np.array([0, 1, 1, 0, 1])  # remission only: the active sub-task has no image
    heads = {name: np.zeros(len(y), int) for name in mtl.tasks if name != "mes"}
    rows, _ = all_rows(y, y, heads, mtl.tasks, absent_undefined=True)
    tasks = {t for t, *_ in rows}
    assert "mes" in tasks and "primary" in tasks and "remission" in tasks
    assert "active" not in tasks  # absent, not 0 and not an exception


@pytest.mark.slow
def test_a_remission_only_external_set_that_is_the_training_data_finishes_and_is_called_in_sample(
    make_suite, tmp_path, capsys
):
    """Two audit items in one run: every `mtl` cell failed after training on a remission-only centre, and a set
    whose images are the training data was reported as another centre."""
    data = {"name": "synthetic", "params": {"n_images": 160, "n_patients": 24, "size": [32, 32], "seed": 1}}
    ext = [{"name": "same", "dataset": data, "label_map": {0: 0, 1: 1, 2: None, 3: None}}]
    suite = make_suite(name="ext", formulations=["mtl"], test_sets=ext, training={"epochs": 1})
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "in-sample" in err and "test_sets[same]" in err
    from reports.load import load_run

    run = load_run(tmp_path / "run")
    assert set(run.cells.status) == {"done"}
    ext_rows = run.long[run.long.split == "external:same"]
    assert not ext_rows.empty and "active" not in set(ext_rows.task)  # the task without images is absent
    assert main(["report", str(tmp_path / "run"), "--markdown"]) == 0
    md = capsys.readouterr().out
    table5c = md.split("## Table 5c")[1].split("\n## ")[0]
    assert "IN-SAMPLE" in table5c and "another centre; never used" not in table5c
    assert "Grades absent from it: MES 2, MES 3" in table5c
    n = run.meta["test_sets"]["same"]["images"]
    assert f"IN-SAMPLE: {run.meta['test_sets']['same']['in_sample']} of its images" in table5c
    assert run.meta["test_sets"]["same"]["in_sample"] == n  # every kept image is a training-data image


def test_shared_images_counts_identical_pixels_only():
    from benchmark.data.external import shared_images

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    b = np.concatenate([a[:3], rng.integers(0, 255, (5, 4, 4, 3), dtype=np.uint8)])
    b[1, 0, 0, 0] ^= 1  # one pixel changed: not the same image
    assert shared_images(b, a) == 2
    assert shared_images(a[:, :2], a) == 0  # another size


# ---------------------------------------------------------------------------- accepted without a word


def test_a_repeated_seed_is_refused(make_suite, tmp_path, capsys):
    err = refused(capsys, run_args(make_suite(name="s", training={"epochs": 1, "seeds": [0, 0]}), tmp_path))
    assert "training.seeds" in err and "[0] listed twice" in err


def test_a_stored_run_with_a_repeated_seed_is_still_read():
    from benchmark.suite.schema import TrainingConfig

    assert TrainingConfig.model_validate({"seeds": [0, 0]}, context={"stored": True}).seeds == [0, 0]


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, capsys):
    text = (
        "name: dup\nbackbones: [tiny]\nformulations: [softmax]\ntraining: {epochs: 1}\n"
        "variants:\n  lr:\n    low: {training.lr: 0.001}\n    low: {training.lr: 0.002}\ntraining: {epochs: 2}\n"
    )
    suite = tmp_path / "dup.yaml"
    suite.write_text(text)
    err = refused(capsys, run_args(suite, tmp_path))
    assert "'low' appears twice (first on line 7)" in err and "line 8" in err


def test_label_map_naming_one_class_twice_is_refused(make_suite, tmp_path, capsys):
    data = {"name": "synthetic", "params": {"n_images": 160, "n_patients": 24, "size": [32, 32], "seed": 2}}
    ext = [{"name": "b", "dataset": data, "label_map": {"MES 0": 0, 0: 3, 1: 1, 2: 2, 3: 3}}]
    err = refused(capsys, run_args(make_suite(name="lm", test_sets=ext), tmp_path))
    assert "'MES 0' and 0 both name the set's class 'MES 0'" in err


@pytest.mark.parametrize(
    "override",
    [
        "formulations=[{name: mtl, options: {groups: [[false, true], [2, 3]]}}]",
        "test_sets=[{name: b, dataset: {name: synthetic}, label_map: {0: true, 1: 1, 2: 2, 3: 3}}]",
    ],
)
def test_booleans_are_never_read_as_grades(make_suite, tmp_path, capsys, override):
    err = refused(capsys, run_args(make_suite(name="b"), tmp_path, "--set", override))
    assert "integer" in err or "string" in err


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("augment.blur={sigma: [0.1, .inf]}", "augment.blur.sigma"),
        ("augment.color_jitter=[.inf, 0, 0, 0]", "augment.color_jitter"),
        ("augment.resized_crop={ratio: [0.5, .nan]}", "augment.resized_crop.ratio"),
        ("protocol={kind: polat, val_fraction: 1.5}", "protocol.val_fraction"),
        ("protocol={kind: polat, val_share_tolerance: -1}", "protocol.val_share_tolerance"),
    ],
)
def test_non_finite_and_out_of_range_settings_are_refused(make_suite, tmp_path, capsys, override, field):
    err = refused(capsys, run_args(make_suite(name="v"), tmp_path, "--set", override))
    assert field in err


@pytest.mark.parametrize(
    "variants",
    [
        {"lr": {"a": {"training.lr": 0.001}, "b": {"training.lr": 0.001}}},
        {"lr": {"study": {}, "same": {"training.lr": 0.003}}},  # the suite's own lr (tiny_suite: 0.003)
    ],
)
def test_two_variants_that_train_the_same_are_refused(make_suite, tmp_path, capsys, variants):
    err = refused(capsys, run_args(make_suite(name="twins", variants=variants), tmp_path))
    assert "train with the same settings" in err and "axis 'lr'" in err


def test_a_grid_of_a_million_combinations_is_refused_in_seconds(make_suite, tmp_path, capsys):
    fields = ["lr", "weight_decay", "plateau_factor", "finetune_lr", "class_weights_beta", "epochs"]
    variants = {}
    for a, field in enumerate(fields):
        values = [2 + i for i in range(10)] if field == "epochs" else [0.0001 * (i + 1) for i in range(10)]
        if field == "class_weights_beta":
            variants[f"ax{a}"] = {f"v{i}": {"augment.rotation": float(i)} for i in range(10)}
        else:
            variants[f"ax{a}"] = {f"v{i}": {f"training.{field}": v} for i, v in enumerate(values)}
    t0 = time.perf_counter()
    err = refused(capsys, run_args(make_suite(name="huge", variants=variants), tmp_path))
    assert "1,000,000 variant combinations" in err and "--yes" in err
    assert time.perf_counter() - t0 < 10


def test_a_heartbeat_as_slow_as_the_stale_time_is_refused(make_suite, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "MESBENCH_HEARTBEAT_SECONDS": "60", "MESBENCH_STALE_SECONDS": "60"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *run_args(make_suite(name="hb"), tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "trained twice" in err and "internal error" not in err, err


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    a = write_fake_run(d / "a", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3, n_test=60)
    b = write_fake_run(d / "b", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3, n_test=60, seed=1)
    return a, b


def test_check_against_a_run_of_another_suite_is_refused_naming_the_difference(two_runs, tmp_path, capsys):
    from benchmark.run.store import Store

    a, b = two_runs
    capsys.readouterr()
    assert main(["check", str(a), "--against", str(b)]) in (0, 1)  # same suite and protocol: compared
    other = tmp_path / "other"
    import shutil

    shutil.copytree(b, other)
    store = Store(other, create=False)
    doc = store.get_meta("suite")
    store.set_meta("suite", {**doc, "name": "another", "protocol": {**doc["protocol"], "folds": 5}})
    store.close()
    err = refused(capsys, ["check", str(a), "--against", str(other)])
    assert "suite name" in err and "protocol" in err and "'fake'" in err and "'another'" in err


# ---------------------------------------------------------------------------- internal errors


def test_explain_on_splits_that_do_not_match_the_data_is_one_paragraph(two_runs, tmp_path, capsys):
    import shutil

    a, _ = two_runs
    run = tmp_path / "run"
    shutil.copytree(a, run)
    (run / "splits.json").write_text("{not json")
    err = refused(capsys, ["explain", str(run), "-o", str(tmp_path / "x")])
    assert "splits.json" in err and "not readable" in err
    (run / "splits.json").write_text('{"protocol": "grouped", "grouped": true, "test": ["nope"], "folds": []}')
    err = refused(capsys, ["explain", str(run), "-o", str(tmp_path / "x")])
    assert "'nope'" in err and "does not hold" in err


@pytest.mark.parametrize("target", ["/proc/x", "/proc/x/y"])
def test_output_folders_that_cannot_be_made_are_one_paragraph(two_runs, capsys, target):
    a, _ = two_runs
    err = refused(capsys, ["explain", str(a), "-o", target])
    assert "not writable" in err and target in err


def test_check_update_to_an_unwritable_baseline_is_one_paragraph(two_runs, capsys):
    a, _ = two_runs
    err = refused(capsys, ["check", str(a), "--baseline", "/proc/nope/base.csv", "--update"])
    assert "cannot be written" in err and "/proc/nope/base.csv" in err


# ---------------------------------------------------------------------------- words against what was computed


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    return write_fake_run(
        tmp_path_factory.mktemp("paper") / "run",
        backbones=("resnet18", "densenet121", "resnet50"),
        formulations=("softmax", "regression", "mtl", "mtl+f1"),
        folds=3,
        n_test=60,
        n_patients=8,
    )


def test_a_flag_that_overrides_a_views_statistics_drops_the_views_reason(paper_run, capsys):
    capsys.readouterr()
    assert main(["report", str(paper_run), "--view", "kim-lee-2025"]) == 0
    plain = capsys.readouterr().out
    assert "set by the view (as in the study: unpaired rank-sum on the held-out test split): Wilcoxon rank-sum" in plain
    assert main(["report", str(paper_run), "--view", "kim-lee-2025", "--test", "wilcoxon"]) == 0
    md = capsys.readouterr().out
    assert "as in the study" not in md
    line = next(x for x in md.splitlines() if "Statistics of some sections" in x)
    view_part, flag_part = line.split("set by the command line")
    assert "held-out test" in view_part and "signed-rank" not in view_part  # the view still sets the split
    assert "(--test, overriding the view): Wilcoxon signed-rank" in flag_part


def test_table_5b_says_how_many_patient_resamples_lacked_a_grade(paper_run, capsys):
    from reports.bootstrap import patient_bootstrap, patient_grades
    from reports.ensembles import FoldPredictions, ensemble
    from reports.load import load_run
    from reports.table import Options, resolve

    capsys.readouterr()
    assert main(["report", str(paper_run), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "&lt;" not in md and "&gt;" not in md and "* p < 0.05" in md  # the characters, not HTML entities
    table = md.split("## Table 5b")[1].split("\n## ")[0]
    run = load_run(paper_run)
    opts = resolve(run, Options())
    preds = run.store.predictions_frame("test", ["key", "image_id", "y_true", "outputs"])
    tp = FoldPredictions.from_frame(preds)
    groups = run.meta["test_groups"]
    worst: dict[str, int] = {}
    for b in run.backbones:
        for f in run.formulations:
            codes, y, pred, _ = ensemble(run, tp, b, f)
            ids, true_grade = patient_grades([groups[i] for i in tp.image_ids[codes]], y, 1.0)
            _, pred_grade = patient_grades([groups[i] for i in tp.image_ids[codes]], pred, 1.0)
            boot = patient_bootstrap(true_grade, pred_grade, opts.n_resamples, scale=run.scale)
            for i in range(len(boot.point)):
                if boot.undefined[i] and not np.isnan(boot.point[i]):
                    worst[i] = max(worst.get(i, 0), int(boot.undefined[i]))
    assert worst, "the fixture must have patient resamples that lack a grade"
    assert "Some patient resamples contain no patient of a grade" in table
    for n in worst.values():
        assert f"up to {n} of {opts.n_resamples}" in table


def test_figures_of_a_five_grade_run_name_its_scale_not_mes(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    from reports.load import load_run
    from reports.sections import confusion
    from reports.table import Options, resolve

    run = load_run(_five_grade_run(tmp_path))
    drawn = []
    monkeypatch.setattr(confusion, "png", lambda fig: drawn.append(fig) or b"")
    confusion.confusion_matrices(run, resolve(run, Options()), run.backbones[0])
    fig: matplotlib.figure.Figure = drawn[0]
    ax = fig.axes[0]
    assert ax.get_xlabel() == f"predicted {run.scale.name}" and "MES" not in ax.get_xlabel() + ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(run.scale.classes)


def _five_grade_run(tmp_path):
    """A trained run on a 5-grade folder tree (one fold, one epoch)."""
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for k in range(5):
        (root / f"g{k}").mkdir(parents=True)
        for i in range(12):
            img = np.clip(rng.normal(40 * k + 20, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"g{k}" / f"UC_patient_{i}_{k}.png")
    doc = {
        "name": "five",
        "dataset": {"name": "folder", "root": str(root), "class_dirs": [f"g{k}" for k in range(5)]},
        "protocol": {"kind": "grouped", "folds": 2, "test_fraction": 0.25},
        "training": {"epochs": 1, "batch_size": 16},
        "backbones": ["tiny"],
        "formulations": ["softmax"],
    }
    suite = tmp_path / "five.yaml"
    suite.write_text(yaml.safe_dump(doc))
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0"]) == 0
    return tmp_path / "run"


def test_friedman_names_its_tie_correction_and_gives_demsars_uncorrected_values():
    """Demšar (2006), Table 6: AUC of four C4.5 variants on 14 data sets. His χ²_F = 9.28 and F_F = 3.69 have no tie
    correction; scipy's (and so ours) divides by 1 − Σ(t³ − t)/(N·k(k² − 1)). These scores reproduce his rank sums
    (mean ranks 3.143, 2.000, 2.893, 1.964) with ties in four data sets."""
    from scipy.stats import friedmanchisquare

    from reports.stats import friedman

    auc = np.array(
        [
            [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
            [0.628, 0.661, 0.657, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
            [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
            [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
            [0.972, 0.981, 0.975, 0.975], [0.957, 0.978, 0.946, 0.970],
        ]
    )  # fmt: skip
    res = friedman(auc, ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"])
    assert [round(v, 3) for v in res.mean_ranks.values()] == [3.143, 2.0, 2.893, 1.964]
    assert round(res.statistic_uncorrected, 2) == 9.28 and round(res.iman_davenport_f_uncorrected, 2) == 3.69
    assert res.statistic == pytest.approx(friedmanchisquare(*auc.T).statistic)  # the corrected one is scipy's
    assert round(res.critical_difference, 2) == 1.25
    text = res.text()
    assert "corrected for tied ranks" in text
    assert f"χ² = {res.statistic_uncorrected:.3f}, F = {res.iman_davenport_f_uncorrected:.3f}" in text
    assert f"Friedman χ² = {res.statistic:.3f}" in text
    no_ties = friedman(np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3]], float), ["a", "b", "c"])
    assert "tied" not in no_ties.text() and no_ties.statistic == pytest.approx(no_ties.statistic_uncorrected)


def test_dlordinal_weighted_cdw_ce_is_ours_scaled_as_the_readme_says():
    import torch
    from dlordinal.losses import CDWCELoss

    from formulations import create_formulation

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 4, (32,))
    w = torch.tensor([0.5, 1.0, 3.0, 2.0])
    ours = create_formulation("cdw_ce", {"alpha": 5.0}).loss(x, y, {"mes": w})
    theirs = CDWCELoss(4, alpha=5.0, weight=w)(x, y)
    assert theirs == pytest.approx(float(ours * w[y].mean() / w.sum()), rel=1e-5)


def test_a_read_only_report_leaves_no_sqlite_side_files(two_runs, tmp_path, capsys):
    import shutil

    a, _ = two_runs
    run = tmp_path / "run"
    shutil.copytree(a, run)
    from benchmark.run.store import Store
    from reports.load import load_run

    Store(run, create=False).close()  # as `bench run` leaves it: the log folded into results.db, no side files
    assert not (run / "results.db-wal").exists()

    loaded = load_run(run)
    assert (run / "results.db-wal").exists()  # SQLite made them for the read-only reader
    loaded.store.close()
    assert not (run / "results.db-wal").exists() and not (run / "results.db-shm").exists()


def test_tables_5_5b_5c_5d_come_in_order_and_ties_are_not_all_bold(make_suite, tmp_path, capsys):
    data = {"name": "synthetic", "params": {"n_images": 120, "n_patients": 20, "size": [32, 32], "seed": 3}}
    suite = make_suite(name="order", test_sets=[{"name": "b", "dataset": data}], training={"epochs": 1})
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run"), "--markdown"]) == 0
    md = capsys.readouterr().out
    heads = [line for line in md.splitlines() if line.startswith("## Table 5")]
    assert [h.split(" —")[0] for h in heads] == ["## Table 5", "## Table 5b", "## Table 5c", "## Table 5d"]
    table2 = md.split("## Table 2")[1].split("\n## ")[0]
    assert "**" not in table2  # one formulation: nothing is best among one, so nothing is bold
