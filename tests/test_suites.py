"""Every shipped suite validates, and the LIMUC suites run on a fake LIMUC tree."""

from pathlib import Path

import pytest

from benchmark.data.catalogue import load_dataset
from benchmark.data.splits import make_splits
from benchmark.suite.cells import expand_cells
from benchmark.suite.loading import load_suite

SUITES = sorted(Path("suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_suite_validates(path):
    suite = load_suite(path)
    assert suite.backbones and suite.formulations


def test_paper_suite_is_the_study_protocol():
    s = load_suite("suites/paper.yaml")
    assert s.protocol.kind == "study" and s.protocol.folds == 10 and s.protocol.test_fraction == 0.15
    assert s.training.lr == 2e-4 and s.training.epochs == 200 and s.training.early_stopping == 25
    assert s.training.plateau_patience == 15 and s.training.plateau_factor == 0.2
    assert [b.name for b in s.backbones] == [
        "resnet18",
        "resnet50",
        "densenet121",
        "inception_v3",
        "mobilenetv3_large_100",
    ]
    study = ["softmax", "regression", "coral", "corn", "mtl", "mtl+f1"]  # the study's six, plus the +ft control
    assert [f.display for f in s.formulations if f.display != "mtl+ft"][:6] == study
    assert len(expand_cells(s, 10)) == 5 * 7 * 10


@pytest.mark.parametrize("name", ["paper", "polat", "limuc-grouped"])
def test_limuc_suites_split_a_fake_limuc_tree(name, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "LIMUC"
    for part, patients in (("train_and_validation_sets", range(1, 41)), ("test_set", range(90, 98))):
        for pid in patients:
            for k in range(4):
                folder = root / part / f"Mayo {k}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((6, 6, 3), 30 * k, np.uint8)).save(folder / f"UC_patient_{pid}_{k}.bmp")
    monkeypatch.setenv("LIMUC_ROOT", str(root))
    suite = load_suite(f"suites/{name}.yaml")
    ds = load_dataset(suite.dataset)
    splits = make_splits(ds, suite.protocol)
    assert len(splits.folds) == suite.protocol.folds * suite.protocol.repeats
    if name != "paper":
        assert set(ds.groups[splits.test]) == {str(p) for p in range(90, 98)}
