"""What a researcher meets first with their own data, model and machine (#36): patients from any file layout, `bench
data inspect` of any tree or suite, `bench plan`, their own backbone and formulation without editing the package,
`--threads`, and a resumed cell that says so."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.errors import BenchError


def five_grade_tree(root, patients=8, per=2, layout="names"):
    """g0…g4 with every patient imaged at every grade: `pNNN_MMM.png` (names) or `pNNN/img_M.png` (folders)."""
    rng = np.random.default_rng(0)
    for k in range(5):
        for p in range(patients):
            for j in range(per):
                img = np.clip(rng.normal(40 * k + 20, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
                rel = f"p{p:03d}_{j:03d}.png" if layout == "names" else f"p{p:03d}/img_{j}.png"
                (root / f"g{k}" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / f"g{k}" / rel)
    return root


def folder(root, **extra):
    return {"name": "folder", "root": str(root), "class_dirs": [f"g{k}" for k in range(5)], **extra}


def assert_patients_kept_whole(split_doc: dict, patient_of) -> None:
    test = {patient_of(i) for i in split_doc["test"]}
    for f in split_doc["folds"]:
        train, val = {patient_of(i) for i in f["train"]}, {patient_of(i) for i in f["val"]}
        assert not (train & val) and not (train & test) and not (val & test)


@pytest.mark.slow
def test_a_tree_with_its_own_file_names_trains_grouped_and_keeps_patients_whole(make_suite, tmp_path, capsys):
    root = five_grade_tree(tmp_path / "tree")
    suite = make_suite(
        name="own",
        dataset=folder(root, patient_pattern=r"(?P<patient>[^_/]+)_\d+"),
        protocol={"kind": "grouped", "folds": 2, "test_fraction": 0.25},
        training={"epochs": 1, "batch_size": 16},
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0"]) == 0
    doc = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert doc["grouped"]
    assert_patients_kept_whole(doc, lambda i: i.split("/")[1].split("_")[0])
    assert len({i.split("/")[1].split("_")[0] for i in doc["test"]}) == 2  # 25% of 8 patients


@pytest.mark.parametrize("how", ["subfolders", "csv"])
def test_per_patient_subfolders_and_a_patients_csv_give_grouped_splits(tmp_path, monkeypatch, how):
    from benchmark.data.catalogue import load_dataset
    from benchmark.data.splits import make_splits
    from benchmark.suite.schema import DatasetConfig, ProtocolConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    if how == "subfolders":
        root = five_grade_tree(tmp_path / "tree", layout="folders")
        cfg = DatasetConfig.model_validate(folder(root, patient_pattern="(?P<patient>[^/]+)/"))
        truth = lambda i: i.split("/")[1]
    else:
        root = five_grade_tree(tmp_path / "tree")
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        # patients the names do not carry: every third image's patient is unrelated to its name
        patient = {f: f"patient-{i % 5}" for i, f in enumerate(files)}
        (tmp_path / "patients.csv").write_text("path,patient\n" + "".join(f"{f},{p}\n" for f, p in patient.items()))
        cfg = DatasetConfig.model_validate(folder(root, patients=str(tmp_path / "patients.csv")))
        truth = patient.__getitem__
    ds = load_dataset(cfg)
    assert ds.meta["grouped_ids"]
    assert [truth(i) for i in ds.ids] == ds.groups.tolist()
    splits = make_splits(ds, ProtocolConfig(kind="grouped", folds=2, test_fraction=0.25))
    assert_patients_kept_whole(splits.to_json(ds), truth)


def test_a_file_the_pattern_cannot_read_is_named(tmp_path, monkeypatch):
    from benchmark.data.catalogue import load_dataset
    from benchmark.suite.schema import DatasetConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = five_grade_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "g2" / "stray.png")
    with pytest.raises(BenchError, match=r"finds no patient in 'g2/stray.png' \(1 of 81 images"):
        load_dataset(DatasetConfig.model_validate(folder(root, patient_pattern=r"(?P<patient>p\d+)_\d+")))
    (root / "g2" / "stray.png").unlink()
    (tmp_path / "p.csv").write_text("path,patient\ng0/p000_000.png,a\n")
    with pytest.raises(BenchError, match="no row for 'g0/p000_001.png'"):
        load_dataset(DatasetConfig.model_validate(folder(root, patients=str(tmp_path / "p.csv"))))


def test_without_patients_the_error_names_the_ways_first_and_says_study_leaks(make_suite, tmp_path, capsys):
    root = five_grade_tree(tmp_path / "tree")
    suite = make_suite(name="np", dataset=folder(root), training={"epochs": 1})
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.index("patient_pattern") < err.index("kind: study") and "dataset.patients" in err
    assert "one patient's images sit in training and test" in err


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"patient_pattern": "(?P<who>.+)"}, "no named group 'patient'"),
        ({"patient_pattern": "(unclosed"}, "not a regular expression"),
        ({"patient_pattern": "(?P<patient>.+)", "patients": "x.csv"}, "not both"),
    ],
)
def test_bad_patient_settings_are_refused_at_load(make_suite, tmp_path, capsys, changes, words):
    suite = make_suite(name="bad", dataset=folder(tmp_path, **changes))
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert words in " ".join(capsys.readouterr().err.split())


def test_data_inspect_reads_a_generic_tree_its_patients_and_a_planted_duplicate(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = five_grade_tree(tmp_path / "tree")
    shutil.copy(root / "g0" / "p000_000.png", root / "g3" / "p001_007.png")  # the same image under two grades
    capsys.readouterr()
    code = main(["data", "inspect", str(root), "--patient-pattern", r"(?P<patient>[^_/]+)_\d+"])
    seen = capsys.readouterr()
    out, text = " ".join(seen.out.split()), " ".join((seen.out + seen.err).split())
    assert code == 1  # the duplicate would stop a run
    assert "5: g0, g1, g2, g3, g4" in out and "g0: 16, g1: 16, g2: 16, g3: 17, g4: 16" in out
    assert "│ patients │ 8 │" in out and "g0: 8, g1: 8, g2: 8, g3: 8, g4: 8" in out
    assert "Mayo" not in text and "MES" not in text
    assert "same pixels under two grades" in text and "g0/p000_000.png = g3/p001_007.png" in text
    assert "same pixels under two patients" in text  # p000 and p001


def test_data_inspect_of_a_suite_shows_its_test_sets_after_their_label_map(make_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    data = {"name": "synthetic", "params": {"n_images": 120, "n_patients": 20, "size": [16, 16], "seed": 4}}
    suite = make_suite(name="ins", test_sets=[{"name": "b", "dataset": data, "label_map": {0: 0, 1: 1, 2: 1, 3: None}}])
    capsys.readouterr()
    assert main(["data", "inspect", str(suite)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "test_sets[b]" in out and "MES 2 → MES 1" in out and "MES 3 → dropped" in out
    assert "MES 2: 0" in out and "MES 3: 0" in out  # on the suite's grades, after the map


def test_plan_counts_every_shipped_suites_cells_without_writing(tmp_path, capsys, monkeypatch):
    from benchmark.suite.loading import cell_count, load_suite

    root = os.path.dirname(os.path.dirname(__file__))
    monkeypatch.chdir(tmp_path)
    for name in ("smoke", "ablations-smoke", "uceis-smoke", "paper"):
        path = os.path.join(root, "suites", f"{name}.yaml")
        capsys.readouterr()
        code = main(["plan", path])
        out = " ".join(capsys.readouterr().out.split())
        n = cell_count(load_suite(path))
        assert f"cells: {n:,} =" in out, out
        assert code == (2 if name == "paper" else 0)  # LIMUC is not on this machine: said, with the line
    assert not (tmp_path / "runs").exists()


def test_plan_refuses_a_missing_root_with_the_suite_file_and_line(make_suite, tmp_path, capsys):
    suite = make_suite(name="gone", dataset={"name": "folder", "root": str(tmp_path / "nowhere")})
    capsys.readouterr()
    assert main(["plan", str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    line = next(i for i, text in enumerate(suite.read_text().splitlines(), 1) if "root:" in text)
    assert f"{suite}: line {line}, dataset.root:" in err and "nowhere" in err
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2  # run refuses it the same way
    assert f"{suite}: line {line}, dataset.root:" in " ".join(capsys.readouterr().err.split())


def test_plan_says_which_cells_a_run_already_holds(make_suite, tmp_path, capsys):
    suite = make_suite(name="half", formulations=["softmax", "coral+f1"], training={"epochs": 1})
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0"]) == 0
    capsys.readouterr()
    assert main(["plan", str(suite), "--out", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cells: 4 = 1 backbone(s) × 2 formulation(s) × 2 fold(s) × 1 seed(s)" in out
    assert "4 stage-1 cell(s) first (2 added as the stage 1 of fine-tuned formulations), then 2 fine-tuned" in out
    assert "3 done, 0 failed, 0 running, 3 pending" in out
    # what the suite alone says comes before the checks that import torch and timm
    assert out.index("cells: 4") < out.index("cells counted in") < out.index("checks: suite ✓, data paths ✓")


def write_plugins(site):
    """A module with a backbone factory, and an installed package (a dist-info with entry points) whose formulation
    registers through the `mesbench.formulations` group."""
    (site / "mybackbones.py").write_text(
        "from torch import nn\n\n"
        "class Pool(nn.Module):\n"
        "    num_features = 6\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 6, 3)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean(dim=(2, 3))\n\n"
        "def make():\n"
        "    return Pool()\n"
    )
    (site / "myloss").mkdir()
    (site / "myloss" / "__init__.py").write_text(
        "import torch.nn.functional as F\n"
        "from formulations.base import ProbabilityFormulation\n\n"
        "class Smoothed(ProbabilityFormulation):\n"
        "    name = 'smoothed_ce'\n"
        "    description = 'Linear(d, K), label-smoothed cross-entropy (a user plugin)'\n"
        "    reference_text = 'Szegedy et al. 2016'\n"
        "    def loss(self, out, y, weights=None):\n"
        "        return F.cross_entropy(out, y, label_smoothing=0.1)\n"
    )
    dist = site / "myloss-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myloss\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mesbench.formulations]\nsmoothed_ce = myloss:Smoothed\n")


@pytest.mark.slow
def test_your_own_backbone_and_formulation_train_and_are_reported_under_their_names(make_suite, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_plugins(site)
    suite = make_suite(
        name="mine", backbones=["mybackbones:make"], formulations=["softmax", "smoothed_ce"], training={"epochs": 1}
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def bench(*args):
        return subprocess.run(
            [sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True, env=env, timeout=600
        )

    listed = bench("list")
    assert (
        listed.returncode == 0
        and "smoothed_ce" in listed.stdout
        and "myloss (entry point myloss:Smoothed)" in (" ".join(listed.stdout.split()))
    )
    ran = bench("run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--only", "fold=0")
    assert ran.returncode == 0, ran.stderr
    md = bench("report", str(tmp_path / "run"), "--markdown").stdout
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    assert "| mybackbones:make | smoothed_ce †" in table1 and "| mybackbones:make | softmax †" in table1  # 1 fold


def test_a_factory_that_cannot_be_imported_is_refused_at_load(make_suite, tmp_path, capsys):
    suite = make_suite(name="nf", backbones=["nomodule_of_yours:make"])
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'nomodule_of_yours' cannot be imported" in err and "package.module:function" in err


def test_threads_are_set_said_and_recorded(make_suite, tmp_path, capsys):
    suite = make_suite(name="thr", training={"epochs": 1})
    capsys.readouterr()
    assert (
        main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1", "--only", "fold=0"]) == 0
    )
    assert "1 CPU thread(s) per process (--threads)" in capsys.readouterr().err
    from reports.load import load_run

    run = load_run(tmp_path / "run")
    assert {run.result(k).threads for k in run.cells[run.cells.status == "done"].key} == {1}
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "CPU threads per training process: 1" in capsys.readouterr().out
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_cell_is_partial_in_status_and_says_it_resumed(make_suite, tmp_path, capsys, monkeypatch):
    import benchmark.run.store as store_module

    monkeypatch.setattr(store_module, "STALE_SECONDS", 2)  # as the workers below are told
    suite = make_suite(
        name="res", training={"epochs": 4, "batch_size": 16, "early_stopping": 50, "checkpoint_every": 0}
    )
    env = {**os.environ, "MESBENCH_STALE_SECONDS": "2", "MESBENCH_HEARTBEAT_SECONDS": "0.25", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def saved_epoch():
        for f in (out / "cells").glob("*/progress.json") if (out / "cells").exists() else []:
            try:
                return json.loads(f.read_text())["epoch"]
            except (OSError, ValueError):
                return 0
        return 0

    t0 = time.time()
    while saved_epoch() < 1 and time.time() - t0 < 240 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    epoch = saved_epoch()
    assert 1 <= epoch < 4
    time.sleep(2.5)  # the killed claim goes stale
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    status = " ".join(capsys.readouterr().out.split())
    assert f"partial (epoch {epoch} of 4)" in status and "1 of them partial" in status
    done = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"1 trained (1 resumed from a checkpoint at epoch {epoch})" in " ".join(done.stderr.split())
    assert not list((out / "cells").glob("*/progress.json"))  # a finished cell is not partial


def test_a_factory_that_returns_no_num_features_is_refused(monkeypatch, tmp_path):
    from backbones import create_backbone

    (tmp_path / "nofeat.py").write_text("from torch import nn\n\ndef make():\n    return nn.Identity()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="no `num_features`"):
        create_backbone("nofeat:make")
