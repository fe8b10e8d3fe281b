"""Splits: disjointness, partitions, stratification, patient grouping, the Polat share rule."""

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from benchmark.data.catalogue import load_dataset
from benchmark.data.dataset import Dataset
from benchmark.data.splits import Splits, make_splits
from benchmark.errors import BenchError
from benchmark.suite.schema import DatasetConfig, ProtocolConfig


@pytest.fixture(scope="module")
def ds():
    return load_dataset(
        DatasetConfig(name="synthetic", params={"n_images": 400, "n_patients": 50, "size": [16, 16], "seed": 3})
    )


def _patients(ds, idx):
    return set(ds.groups[idx].tolist())


@pytest.mark.parametrize("kind", ["study", "grouped", "polat"])
def test_test_and_train_disjoint_and_folds_inside_train(ds, kind):
    s = make_splits(ds, ProtocolConfig(kind=kind, folds=4, seed=1))
    train_all = np.setdiff1d(np.arange(len(ds)), s.test)
    assert len(np.intersect1d(s.test, train_all)) == 0
    for tr, va in s.folds:
        assert len(np.intersect1d(tr, va)) == 0
        assert len(np.intersect1d(np.concatenate([tr, va]), s.test)) == 0
        if kind != "polat":
            assert np.array_equal(np.sort(np.concatenate([tr, va])), train_all)


@pytest.mark.parametrize("kind", ["study", "grouped"])
def test_kfold_validation_parts_partition_training_part(ds, kind):
    s = make_splits(ds, ProtocolConfig(kind=kind, folds=5, seed=2))
    vals = np.concatenate([va for _, va in s.folds])
    assert len(vals) == len(np.unique(vals))
    assert np.array_equal(np.sort(vals), np.setdiff1d(np.arange(len(ds)), s.test))


@pytest.mark.parametrize("kind", ["grouped", "polat"])
def test_grouped_splits_never_share_a_patient(ds, kind):
    s = make_splits(ds, ProtocolConfig(kind=kind, folds=4, seed=5))
    assert not _patients(ds, s.test) & _patients(ds, np.concatenate([s.folds[0][0], s.folds[0][1]]))
    for tr, va in s.folds:
        assert not _patients(ds, tr) & _patients(ds, va)


def test_study_folds_are_stratified_within_one_image(ds):
    s = make_splits(ds, ProtocolConfig(kind="study", folds=5, seed=0))
    train = np.setdiff1d(np.arange(len(ds)), s.test)
    total = np.bincount(ds.labels[train], minlength=4)
    for _, va in s.folds:
        counts = np.bincount(ds.labels[va], minlength=4)
        assert np.all(np.abs(counts - total / 5) <= 1), (counts, total / 5)
    # and the hold-out itself is stratified within ±1 image per class
    expected = np.bincount(ds.labels, minlength=4) * 0.15
    assert np.all(np.abs(np.bincount(ds.labels[s.test], minlength=4) - expected) <= 1)


def test_study_folds_match_sklearn_directly(ds):
    s = make_splits(ds, ProtocolConfig(kind="study", folds=3, seed=4))
    train = np.setdiff1d(np.arange(len(ds)), s.test)
    ref = list(StratifiedKFold(3, shuffle=True, random_state=4).split(train, ds.labels[train]))
    for (_, va), (_, rva) in zip(s.folds, ref):
        assert np.array_equal(va, np.sort(train[rva]))


def test_polat_validation_shares_within_rule(ds):
    cfg = ProtocolConfig(kind="polat", folds=6, seed=3, val_fraction=0.2)
    s = make_splits(ds, cfg)
    assert len(s.folds) == 6
    train = np.setdiff1d(np.arange(len(ds)), s.test)
    target = np.bincount(ds.labels[train], minlength=4) / len(train)
    for _, va in s.folds:
        share = np.bincount(ds.labels[va], minlength=4) / len(va)
        assert np.all(np.abs(share - target) <= 0.15 * target + 1e-12)
    # Monte-Carlo: validation sets are fresh draws, not a partition
    assert len({tuple(va) for _, va in s.folds}) == 6


def test_repeated_kfold_gives_r_times_k_folds(ds):
    s = make_splits(ds, ProtocolConfig(kind="study", folds=3, repeats=2, seed=0))
    assert len(s.folds) == 6
    assert not np.array_equal(s.folds[0][1], s.folds[3][1])


def test_splits_depend_only_on_seed_and_round_trip(ds):
    a = make_splits(ds, ProtocolConfig(kind="grouped", folds=3, seed=9))
    b = make_splits(ds, ProtocolConfig(kind="grouped", folds=3, seed=9))
    c = Splits.from_json(a.to_json(ds), ds)
    for x in (b, c):
        assert np.array_equal(a.test, x.test)
        assert all(np.array_equal(p[1], q[1]) for p, q in zip(a.folds, x.folds))


def test_more_folds_than_smallest_class_is_a_clear_error(ds):
    with pytest.raises(BenchError, match="folds"):
        make_splits(ds, ProtocolConfig(kind="study", folds=200, seed=0))


def test_grouped_needs_patient_ids():
    n = 40
    ds = Dataset(
        "x",
        np.zeros((n, 4, 4, 3), np.uint8),
        np.arange(n) % 4,
        np.array([f"img:{i}" for i in range(n)]),
        np.array([str(i) for i in range(n)]),
        meta={"grouped_ids": False},
    )
    with pytest.raises(BenchError, match="patient ids"):
        make_splits(ds, ProtocolConfig(kind="grouped", folds=2))
