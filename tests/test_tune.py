"""`bench tune`: a resumable Optuna study over the weight simplex that never sees the test set."""

import numpy as np
import optuna
import pytest

import benchmark.run.tune as tune_mod
from benchmark.cli import main
from benchmark.run.store import Store
from benchmark.run.tune import Tuner, simplex_from_unit
from benchmark.suite.loading import load_suite


def test_simplex_map_is_exact_non_negative_and_uniform():
    rng = np.random.default_rng(0)
    w = np.array([simplex_from_unit(u, v) for u, v in rng.random((20000, 2))])
    assert np.all(w >= 0) and np.abs(w.sum(1) - 1).max() < 1e-12
    assert np.allclose(w.mean(0), 1 / 3, atol=0.01)  # the uniform distribution on the simplex has mean 1/3 each
    assert np.allclose(simplex_from_unit(0, 0), (0, 0, 1)) and np.allclose(simplex_from_unit(1, 0), (1, 0, 0))
    assert np.allclose(simplex_from_unit(0, 1), (0, 1, 0))


def test_three_trials_resume_and_round_trip(make_suite, tmp_path, capsys):
    suite = make_suite(name="tune", formulations=["softmax", "mtl"])
    out = tmp_path / "tune"
    args = ["tune", str(suite), "--trials", "3", "--folds", "1", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[1/3]" in err and "[3/3]" in err and "best so far" in err and "pruned" in err  # never silent
    assert main(args) == 0  # same command again: the study continues
    study = optuna.load_study(study_name="tune-tiny-mtl-macro_f1-fold0", storage=f"sqlite:///{out / 'tune.db'}")
    assert len(study.trials) == 6
    for t in study.trials:
        if "alpha" in t.user_attrs:
            assert abs(sum(t.user_attrs[k] for k in ("alpha", "beta", "gamma")) - 1) < 1e-9
    assert (out / "optimization_history.png").stat().st_size > 1000
    assert (out / "weights_simplex.png").stat().st_size > 1000
    override = out / "tune.tuned.yaml"
    tuned = [f for f in load_suite(override).formulations if f.display == "mtl[tuned]"]
    assert len(tuned) == 1
    best = study.best_trial.user_attrs
    assert set(tuned[0].options_by_fold) == {0}  # only the tuned outer fold has weights
    assert all(tuned[0].options_by_fold[0][k] == pytest.approx(best[k]) for k in ("alpha", "beta", "gamma"))
    assert "inner" in tuned[0].tuned and "never seen" in tuned[0].tuned
    # a fold without tuned weights is refused, not silently trained with the defaults
    capsys.readouterr()
    assert (
        main(["run", str(override), "--out", str(tmp_path / "refused"), "--quiet", "--only", "formulation=mtl[tuned]"])
        == 2
    )
    assert "per-fold options" in " ".join(capsys.readouterr().err.split())
    run = tmp_path / "run"
    assert (
        main(
            ["run", str(override), "--out", str(run), "--quiet", "--only", "formulation=mtl[tuned]", "--only", "fold=0"]
        )
        == 0
    )
    rows = Store(run, create=False).cell_rows()
    assert [r["formulation"] for r in rows] == ["mtl[tuned]"]
    res = Store(run, create=False).result(rows[0]["key"])
    assert res.formulation_options["alpha"] == pytest.approx(best["alpha"])
    capsys.readouterr()
    assert main(["report", str(run), "--reference", "mtl[tuned]"]) == 0
    md = capsys.readouterr().out
    assert "mtl[tuned]: options tuned" in md  # the report marks where the tuned options came from


class Recording(np.ndarray):
    """An image array that remembers every index it was asked for."""

    seen: set

    def __getitem__(self, item):
        if isinstance(item, np.ndarray) and item.dtype.kind in "iu":
            Recording.seen.update(item.ravel().tolist())
        elif isinstance(item, (int, np.integer)):
            Recording.seen.add(int(item))
        return np.asarray(super().__getitem__(item))


def record_image_reads(monkeypatch) -> None:
    """The tuner's dataset, its image array a Recording: every index a trial reads lands in Recording.seen."""
    real_load = tune_mod.load_dataset

    def recording_load(cfg):
        ds = real_load(cfg)
        ds.images = ds.images.view(Recording)
        return ds

    monkeypatch.setattr(tune_mod, "load_dataset", recording_load)


def test_tuning_never_reads_test_images_nor_the_outer_validation_fold(make_suite, tmp_path, monkeypatch):
    """Nested: the study of outer fold i reads only images of fold i's training part."""
    suite = load_suite(make_suite(name="leak", formulations=["mtl"]))
    record_image_reads(monkeypatch)
    tuner = Tuner(suite, tmp_path / "t", metric="f1@3")
    assert tuner.k == 2
    for fold in range(tuner.k):
        Recording.seen = set()
        tuner.optimize_fold(fold, 2)
        assert Recording.seen, "the recorder saw nothing: the test would prove nothing"
        outer_train, outer_val = tuner.splits.folds[fold]
        assert not (Recording.seen & set(tuner.splits.test.tolist()))
        assert not (Recording.seen & set(outer_val.tolist()))
        assert Recording.seen <= set(outer_train.tolist())
        inner_train, inner_val = tuner.inner[fold]
        assert not set(inner_train) & set(inner_val)
        assert not set(tuner.dataset.groups[inner_train]) & set(tuner.dataset.groups[inner_val])  # grouped


def test_a_second_study_in_the_same_folder_never_resumes_the_first_ones_trials(make_suite, tmp_path, capsys):
    suite = make_suite(name="two", formulations=["mtl"])
    out = tmp_path / "two"
    assert main(["tune", str(suite), "--trials", "1", "--folds", "1", "--out", str(out), "--study", "A"]) == 0
    first = sorted((out / "trials").rglob("last.pt"))
    assert len(first) == 1 and "A-fold0" in str(first[0])
    stamp = first[0].stat().st_mtime_ns
    assert main(["tune", str(suite), "--trials", "1", "--folds", "1", "--out", str(out), "--study", "B"]) == 0
    second = sorted((out / "trials").rglob("last.pt"))
    assert len(second) == 2 and any("B-fold0" in str(p) for p in second)
    assert first[0].stat().st_mtime_ns == stamp  # study A's checkpoint was neither resumed nor touched


def test_unknown_metric_and_formulation_without_weights(make_suite, capsys):
    suite = make_suite(name="bad", formulations=["mtl"])
    capsys.readouterr()
    assert main(["tune", str(suite), "--trials", "1", "--metric", "f1@7"]) == 2
    assert "Unknown metric" in capsys.readouterr().err
    assert main(["tune", str(suite), "--trials", "1", "--formulation", "softmax"]) == 2
    assert "no joint-loss weights" in " ".join(capsys.readouterr().err.split())


def test_tune_workers_share_the_default_sqlite_studies(make_suite, tmp_path):
    """--workers on one machine with the default storage (SQLite in the output directory): the workers fill the
    one shared study to its target (not a target each). Which worker ran which trial depends on when each
    process got past its imports (on a loaded 2-core CI machine the second one can find the study full), so only
    that every trial names one of the two workers is asserted."""
    from test_workers import bench

    suite = make_suite(name="ltune", formulations=["mtl"])
    out = tmp_path / "tune"
    proc = bench("tune", str(suite), "--trials", "2", "--folds", "1", "--out", str(out), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="ltune-tiny-mtl-macro_f1-fold0", storage=f"sqlite:///{out / 'tune.db'}")
    assert 2 <= len(study.trials) <= 3  # one target for both, at most one trial over (a running trial counts)
    assert {t.user_attrs["worker"] for t in study.trials} <= {0, 1} and "2 tuning workers" in proc.stderr
    assert (out / "ltune.tuned.yaml").exists()


def test_a_second_tune_in_the_same_out_never_reuses_the_first_ones_checkpoints(make_suite, tmp_path, capsys):
    """The audit: a second tune with --set training.lr=0.5 and its own --storage reported the first's values and
    trained nothing. Trial folders are keyed by everything that changes a trial."""
    suite = make_suite(name="reuse", formulations=["mtl"])
    out = tmp_path / "tune"
    first = ["tune", str(suite), "--trials", "2", "--folds", "1", "--out", str(out)]
    assert main(first) == 0
    before = {p.name for p in (out / "trials").rglob("*") if p.is_dir()}
    other = f"sqlite:///{tmp_path / 'other.db'}"
    second = first + ["--set", "training.lr=0.5", "--storage", other]
    assert main(second) == 0
    after = {p.name for p in (out / "trials").rglob("*") if p.is_dir()}
    new = after - before
    assert len(new) == 2  # both trials of the second tune trained in folders of their own
    a = optuna.load_study(study_name="reuse-tiny-mtl-macro_f1-fold0", storage=f"sqlite:///{out / 'tune.db'}")
    b = optuna.load_study(study_name="reuse-tiny-mtl-macro_f1-fold0", storage=other)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]  # the same proposals (seeded sampler) ...
    for name in new:  # ... each trained anew, in a folder of its own with its own checkpoint
        (folder,) = [p for p in (out / "trials").rglob(name) if p.is_dir()]
        assert (folder / "best.pt").is_file()


def test_a_study_name_of_another_problem_is_refused(make_suite, tmp_path, capsys):
    suite = make_suite(name="own", formulations=["mtl"])
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    base = ["tune", str(suite), "--trials", "1", "--folds", "1", "--storage", storage, "--study", "shared"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    other = make_suite(name="other", formulations=["mtl"], training={"lr": 0.01})
    capsys.readouterr()
    assert (
        main(
            [
                "tune",
                str(other),
                "--trials",
                "1",
                "--folds",
                "1",
                "--storage",
                storage,
                "--study",
                "shared",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "was made for 'own'" in err and "would mix two problems" in err
    assert main(base + ["--out", str(tmp_path / "c")]) == 0  # the same problem again is welcome


def test_a_killed_trial_does_not_stay_running_forever(make_suite, tmp_path, monkeypatch):
    """Optuna's heartbeat: a RUNNING trial whose worker died is failed once it is stale, when the next trial starts."""
    import time

    monkeypatch.setattr(tune_mod, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tune_mod, "STALE_SECONDS", 2)
    suite = load_suite(make_suite(name="stale", formulations=["mtl"]))
    tuner = Tuner(suite, tmp_path / "t", folds=1)
    study = tuner.studies[0]
    dead = study.ask()  # a worker took this trial, then was SIGKILLed: no more heartbeats
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3)
    tuner.optimize(1)
    states = {t.number: t.state.name for t in study.trials}
    assert (
        states[dead.number] == "FAIL"
        and list(states.values()).count("COMPLETE") + list(states.values()).count("PRUNED") == 1
    )


def test_space_tunes_any_setting_of_any_formulation_and_trains_with_the_sampled_values(
    make_suite, tmp_path, monkeypatch, capsys
):
    """The issue's command (fewer trials): a formulation option and a training field, each trial trained with its own
    sampled values, both reported per outer fold."""
    seen = []
    real_run_cell = tune_mod.run_cell

    def recording(spec, plan):
        seen.append((spec.options["gamma"], spec.training.lr))
        return real_run_cell(spec, plan)

    monkeypatch.setattr(tune_mod, "run_cell", recording)
    suite = make_suite(name="sp", formulations=["softmax", "focal"])
    out = tmp_path / "sp"
    args = ["tune", str(suite), "--formulation", "focal", "--trials", "2", "--out", str(out)]
    args += ["--space", "options.gamma=0:5", "--space", "training.lr=0.0001:0.01:log"]
    assert main(args) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "options.gamma ∈ [0, 5]; training.lr ∈ [0.0001, 0.01] (log)" in text
    assert "tuned values per outer fold" in text and "no suite written" in text
    studies = optuna.get_all_study_summaries(f"sqlite:///{out / 'tune.db'}")
    assert len(studies) == 2  # one per outer fold
    params = []
    for summary in studies:
        study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{out / 'tune.db'}")
        for t in study.trials:
            assert 0 <= t.params["options.gamma"] <= 5 and 1e-4 <= t.params["training.lr"] <= 1e-2
            params.append((t.params["options.gamma"], t.params["training.lr"]))
        best = study.best_trial.params
        assert f"{best['options.gamma']:.4g}" in text and f"{best['training.lr']:.4g}" in text  # per fold
    assert sorted(seen) == sorted(params)  # every trial trained with exactly its sampled values


def test_an_options_space_writes_per_fold_options_that_bench_run_takes(make_suite, tmp_path, capsys):
    suite = make_suite(name="opt", formulations=["focal"])
    out = tmp_path / "opt"
    args = ["tune", str(suite), "--trials", "1", "--folds", "1", "--out", str(out), "--space", "options.gamma=1..4"]
    assert main(args) == 0
    tuned = [f for f in load_suite(out / "opt.tuned.yaml").formulations if f.display == "focal[tuned]"]
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{out / 'tune.db'}")[0].study_name,
                              storage=f"sqlite:///{out / 'tune.db'}")  # fmt: skip
    assert tuned[0].options_by_fold == {0: {"gamma": study.best_trial.params["options.gamma"]}}
    assert "options searched" in tuned[0].tuned


def test_tuning_a_space_never_reads_test_images_nor_the_outer_validation_fold(make_suite, tmp_path, monkeypatch):
    suite = load_suite(make_suite(name="leak2", formulations=["softmax"]))
    record_image_reads(monkeypatch)
    tuner = Tuner(suite, tmp_path / "t", space=["training.lr=0.001:0.01", "augment.rotation=0,10"])
    for fold in range(tuner.k):
        Recording.seen = set()
        tuner.optimize_fold(fold, 1)
        assert Recording.seen
        outer_train, outer_val = tuner.splits.folds[fold]
        assert not (Recording.seen & set(tuner.splits.test.tolist()))
        assert not (Recording.seen & set(outer_val.tolist()))
        assert Recording.seen <= set(outer_train.tolist())


@pytest.mark.parametrize(
    "space, words",
    [
        (
            "options.gamma=-1:5",
            "options.gamma = -1.0 is refused: formulation 'focal': option 'gamma': Input should be greater",
        ),
        ("training.lr=0:0.01:log", "a log scale needs LOW above 0"),
        ("training.lr=0.01:0.001", "LOW (0.01) must be a finite number below HIGH"),
        ("training.seeds=0..3", "'training.seeds' is not a setting a trial can change"),
        ("options.alpha=1:2", "focal"),
        ("training.epochs=1.5..3", "is not an integer"),
        ("augment.mix=mixup", "one value is not a space: --set augment.mix=mixup"),
        ("augment.mix=mixup,nothing", "augment.mix = 'nothing' is refused"),
        ("lr", "NAME=LOW:HIGH[:log]"),
    ],
)
def test_a_bad_space_is_one_line_before_anything_trains(make_suite, tmp_path, capsys, space, words):
    suite = make_suite(name="badspace", formulations=["focal"])
    out = tmp_path / "bad"
    assert main(["tune", str(suite), "--trials", "1", "--out", str(out), "--space", space]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert words in err and f"--space {space!r}" in err and "Traceback" not in err
    assert not (out / "trials").exists()
