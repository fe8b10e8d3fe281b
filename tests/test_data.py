"""Datasets: the synthetic generator, folder trees, CSV manifests and the three LIMUC layouts."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmark.data.catalogue import load_dataset
from benchmark.data.limuc import inspect_tree
from benchmark.data.splits import make_splits
from benchmark.data.synthetic import LIMUC_SHARES, generate
from benchmark.suite.schema import DatasetConfig, ProtocolConfig


def test_synthetic_is_deterministic_with_limuc_shares_and_patient_structure():
    a = generate(400, 40, (24, 24), seed=7)
    b = generate(400, 40, (24, 24), seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = generate(400, 40, (24, 24), seed=8)
    assert not np.array_equal(a[0], c[0])
    images, labels, groups, ids = a
    assert images.shape == (400, 24, 24, 3) and images.dtype == np.uint8
    shares = np.bincount(labels, minlength=4) / len(labels)
    assert np.allclose(shares, LIMUC_SHARES, atol=0.03)
    spans = [np.ptp(labels[groups == g]) for g in np.unique(groups)]
    assert np.mean(np.array(spans) <= 1) > 0.7  # mostly one or two neighbouring grades per patient
    assert len(set(ids)) == len(ids)


def test_synthetic_findings_follow_the_grade():
    images, labels, _, _ = generate(400, 40, (32, 32), seed=0, label_noise=0.0)
    img = images.astype(float)
    redness = img[..., 0].mean((1, 2)) - img[..., 1].mean((1, 2))
    means = [redness[labels == k].mean() for k in range(4)]
    assert means == sorted(means)  # redness grows with grade


def test_synthetic_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path))
    cfg = DatasetConfig(name="synthetic", params={"n_images": 40, "n_patients": 8, "size": [8, 8]})
    first = load_dataset(cfg)
    assert len(list(tmp_path.glob("synthetic-*.images.npy"))) == 1
    second = load_dataset(cfg.model_copy(update={"mmap": True}))
    assert isinstance(second.images, np.memmap) and np.array_equal(first.images, second.images)


def _bmp(path, value=100, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def fake_limuc(root, layout):
    """Tiny images with real-looking names; patient 7's image 1 occurs under two classes."""
    plan = {0: [(1, 1), (1, 2), (2, 1), (7, 1)], 1: [(2, 2), (3, 1), (7, 1)], 2: [(3, 2), (4, 1)], 3: [(4, 2), (5, 1)]}
    test_plan = {0: [(9, 1)], 1: [(9, 2)], 2: [(10, 1)], 3: [(10, 2)]}
    for k, items in plan.items():
        for pid, n in items:
            name = f"UC_patient_{pid}_{n}.bmp"
            if layout == "train_test":
                _bmp(root / "train_and_validation_sets" / f"Mayo {k}" / name, 10 * k)
            elif layout == "patient_based":
                _bmp(root / "patient_based_classified_images" / str(pid) / f"Mayo {k}" / name, 10 * k)
            else:
                _bmp(root / f"Mayo {k}" / name, 10 * k)
    if layout == "train_test":
        for k, items in test_plan.items():
            for pid, n in items:
                _bmp(root / "test_set" / f"Mayo {k}" / f"UC_patient_{pid}_{n}.bmp", 10 * k)
    return root


@pytest.mark.parametrize(
    "layout,n,n_patients", [("train_test", 15, 8), ("patient_based", 11, 6), ("class_folders", 11, 6)]
)
def test_limuc_layouts_load_with_counts_labels_and_patients(tmp_path, monkeypatch, layout, n, n_patients):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = fake_limuc(tmp_path / "LIMUC", layout)
    ds = load_dataset(DatasetConfig(name="limuc", root=str(root)))
    assert len(ds) == n
    assert len(np.unique(ds.groups)) == n_patients
    twice = [i for i, x in enumerate(ds.ids) if x.endswith("UC_patient_7_1.bmp")]
    assert len(twice) == 2 and sorted(ds.labels[twice].tolist()) == [0, 1]
    for i, image_id in enumerate(ds.ids):  # label follows the class folder, pixel value encodes it
        assert f"Mayo {ds.labels[i]}/" in image_id
        assert ds.images[i, 0, 0, 0] == 10 * ds.labels[i]
    if layout == "train_test":
        assert ds.published_test.sum() == 4
        assert set(ds.groups[ds.published_test]) == {"9", "10"}
    else:
        assert ds.published_test is None


def test_limuc_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIMUC_ROOT", str(fake_limuc(tmp_path / "L", "class_folders")))
    assert len(load_dataset(DatasetConfig(name="limuc"))) == 11


def test_polat_uses_the_published_test_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "L"
    # enough patients for two-fold Monte-Carlo splits
    for pid in range(1, 25):
        for k in range(4):
            _bmp(root / "train_and_validation_sets" / f"Mayo {k}" / f"UC_patient_{pid}_{k}.bmp", 10 * k)
    for pid in (90, 91):
        for k in range(4):
            _bmp(root / "test_set" / f"Mayo {k}" / f"UC_patient_{pid}_{k}.bmp", 10 * k)
    ds = load_dataset(DatasetConfig(name="limuc", root=str(root)))
    s = make_splits(ds, ProtocolConfig(kind="polat", folds=3, val_fraction=0.25, seed=0))
    assert set(ds.groups[s.test]) == {"90", "91"}
    for tr, va in s.folds:
        assert not set(ds.groups[tr]) & set(ds.groups[va])


def test_folder_and_manifest_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = fake_limuc(tmp_path / "tree", "class_folders")
    ds = load_dataset(DatasetConfig(name="folder", root=str(root)))
    assert len(ds) == 11 and sorted(np.bincount(ds.labels).tolist()) == [2, 2, 3, 4]
    lines = ["path,label,group"] + [
        f"tree/Mayo {k}/UC_patient_{p}_{n}.bmp,{k},{p}"
        for k, p, n in [(0, 1, 1), (1, 2, 2), (2, 3, 2), (3, 4, 2), (0, 1, 2)]
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    m = load_dataset(DatasetConfig(name="manifest", manifest=str(tmp_path / "m.csv")))
    assert m.labels.tolist() == [0, 1, 2, 3, 0] and m.groups.tolist() == ["1", "2", "3", "4", "1"]


def test_inspect_reports_a_good_tree(tmp_path):
    info, problems = inspect_tree(fake_limuc(tmp_path / "L", "train_test"))
    assert problems == []
    assert info["images"] == 15 and info["published_test_images"] == 4
    assert info["images_per_class"]["Mayo 0"] == 5
    assert info["names_under_two_classes"] == 1 and info["patients_spanning_grades"] >= 2
    # fake_limuc writes one constant image per class: identical bytes within a class, none across classes
    assert info["byte_identical_files"] == 15 - 4 and info["identical_files_with_different_labels"] == 0


def test_inspect_broken_tree_exits_nonzero_and_names_each_problem(tmp_path):
    root = fake_limuc(tmp_path / "L", "class_folders")
    for f in (root / "Mayo 2").iterdir():
        f.unlink()  # empty class
    (root / "Mayo 1" / "notes.txt").write_text("hello")  # non-image file
    (root / "Mayo 0" / "UC_patient_1_1.bmp").write_bytes(b"BM" + b"\x00" * 20)  # corrupt BMP
    import shutil

    shutil.rmtree(root / "Mayo 3")  # missing class folder
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "data", "inspect", str(root)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    for needle in (
        "empty class folder",
        "Mayo 2",
        "non-image file",
        "notes.txt",
        "unreadable image",
        "UC_patient_1_1.bmp",
        "missing class folder",
        "Mayo 3",
    ):
        assert needle in text, needle
    assert "Traceback" not in text
