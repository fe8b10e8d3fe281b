"""Bad input: a one-paragraph error naming the file/field/value and the fix, exit ≠ 0, no traceback,
and nothing from the failed attempt in the store."""

import os
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmark.cli import main
from benchmark.run.store import Store


def run_cli(capsys, *args):
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return code, " ".join(text.split())  # unwrapped


def write_suite(tmp_path, doc=None, text=None, name="bad"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(doc))
    return path


def base_doc(**changes):
    doc = {
        "name": "bad",
        "dataset": {"name": "synthetic", "params": {"n_images": 160, "n_patients": 24, "size": [16, 16], "seed": 1}},
        "protocol": {"kind": "study", "folds": 2, "test_fraction": 0.2},
        "training": {"epochs": 1},
        "backbones": ["tiny"],
        "formulations": ["softmax"],
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            doc[section][field] = value
        else:
            doc[section] = value
    return doc


def assert_rejected(capsys, tmp_path, suite, *needles, out=None):
    out = out or tmp_path / "out"
    code, text = run_cli(capsys, "run", str(suite), "--out", str(out), "--quiet")
    assert code == 2, text
    for needle in needles:
        assert needle in text, (needle, text)
    assert not (out / "results.db").exists(), "a failed attempt must not leave a store"
    return text


def class_tree(root, empty=None, extra=None):
    for k in range(4):
        folder = root / f"Mayo {k}"
        folder.mkdir(parents=True, exist_ok=True)
        if k == empty:
            continue
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"UC_patient_{i}_{k}.bmp")
    if extra:
        extra(root)
    return root


def folder_suite(tmp_path, root):
    return write_suite(tmp_path, base_doc(dataset={"name": "folder", "root": str(root)}))


def test_nonexistent_data_root(capsys, tmp_path):
    assert_rejected(
        capsys, tmp_path, folder_suite(tmp_path, tmp_path / "nowhere"), "dataset.root", "nowhere", "does not exist"
    )


def test_empty_class_folder(capsys, tmp_path):
    root = class_tree(tmp_path / "d", empty=2)
    assert_rejected(capsys, tmp_path, folder_suite(tmp_path, root), "Mayo 2", "is empty")


def test_corrupt_or_truncated_image(capsys, tmp_path):
    def corrupt(root):
        good = (root / "Mayo 1" / "UC_patient_0_1.bmp").read_bytes()
        (root / "Mayo 1" / "UC_patient_0_1.bmp").write_bytes(good[: len(good) // 3])

    root = class_tree(tmp_path / "d", extra=corrupt)
    assert_rejected(capsys, tmp_path, folder_suite(tmp_path, root), "cannot be decoded", "UC_patient_0_1.bmp")


def test_non_image_file_in_class_folder(capsys, tmp_path):
    root = class_tree(tmp_path / "d", extra=lambda r: (r / "Mayo 3" / "readme.txt").write_text("x"))
    assert_rejected(capsys, tmp_path, folder_suite(tmp_path, root), "readme.txt", "not an image file")


@pytest.mark.parametrize(
    "field,value,needles",
    [
        ("backbones", ["resnet181"], ["Unknown backbone 'resnet181'", "resnet18"]),
        ("formulations", ["sofmax"], ["Unknown formulation 'sofmax'", "softmax"]),
        ("dataset", {"name": "synthtic"}, ["Unknown dataset 'synthtic'", "synthetic"]),
    ],
)
def test_unknown_names_suggest_the_closest(capsys, tmp_path, field, value, needles):
    assert_rejected(capsys, tmp_path, write_suite(tmp_path, base_doc(**{field: value})), *needles)


def test_unknown_metric_suggests_the_closest(capsys, tmp_path, make_suite):
    suite = make_suite(name="m", formulations=["softmax"])
    out = tmp_path / "m"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    baseline = tmp_path / "b.csv"
    assert main(["check", str(out), "--baseline", str(baseline), "--update"]) == 0
    before = baseline.read_text()
    code, text = run_cli(capsys, "check", str(out), "--baseline", str(baseline), "--metrics", "acuracy")
    assert code == 2 and "Unknown metric 'acuracy'" in text and "accuracy" in text
    assert baseline.read_text() == before


def test_misspelled_yaml_key_names_its_line(capsys, tmp_path):
    text = yaml.safe_dump(base_doc(), sort_keys=False).replace("training:", "trainng:")
    line = text.splitlines().index("trainng:") + 1
    out = assert_rejected(
        capsys,
        tmp_path,
        write_suite(tmp_path, text=text),
        "unknown key 'trainng'",
        "did you mean 'training'",
        f"line {line}",
    )
    assert "bad.yaml" in out


def test_misspelled_nested_key(capsys, tmp_path):
    doc = base_doc()
    doc["training"] = {"epocs": 3}
    assert_rejected(capsys, tmp_path, write_suite(tmp_path, doc), "unknown key 'training.epocs'", "'epochs'")


def test_wrong_value_type(capsys, tmp_path):
    assert_rejected(
        capsys,
        tmp_path,
        write_suite(tmp_path, base_doc(training={"epochs": "ten"})),
        "training.epochs",
        "'ten'",
        "integer",
    )


@pytest.mark.parametrize(
    "options,needle", [({"alpha": -0.5}, "non-negative"), ({"alpha": 0, "beta": 0, "gamma": 0}, "not all zero")]
)
def test_negative_or_all_zero_loss_weights(capsys, tmp_path, options, needle):
    suite = write_suite(tmp_path, base_doc(formulations=[{"name": "mtl", "options": options}]))
    text = assert_rejected(capsys, tmp_path, suite, "mtl", "alpha, beta, gamma", needle)
    assert re.search(r"line \d+, field 'formulations.0'", text), text  # the suite's line, like every field


def test_wrong_formulation_option_names_its_line_and_the_closest_option(capsys, tmp_path):
    suite = write_suite(
        tmp_path, base_doc(formulations=["softmax", {"name": "regression", "options": {"tune_cutpoint": True}}])
    )
    text = assert_rejected(capsys, tmp_path, suite, "unknown option 'tune_cutpoint'", "did you mean 'tune_cutpoints'")
    assert re.search(r"line \d+, field 'formulations.1'", text), text


def test_unknown_backbone_shows_five_close_names_not_all_of_timm(capsys, tmp_path):
    text = assert_rejected(
        capsys,
        tmp_path,
        write_suite(tmp_path, base_doc(backbones=["resnet181"])),
        "Unknown backbone 'resnet181'",
        "bench list --timm",
    )
    assert re.search(r"line \d+, field 'backbones.0", text), text
    assert len(text) < 1500, len(text)


def test_more_folds_than_images_in_smallest_class(capsys, tmp_path):
    assert_rejected(
        capsys,
        tmp_path,
        write_suite(tmp_path, base_doc(protocol={"kind": "study", "folds": 40})),
        "protocol.folds = 40",
        "MES 3",
        "images",
    )


def test_more_folds_than_patients_when_grouped(capsys, tmp_path):
    doc = base_doc(protocol={"kind": "grouped", "folds": 12, "test_fraction": 0.25})
    assert_rejected(capsys, tmp_path, write_suite(tmp_path, doc), "protocol.folds = 12", "patients")


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_test_fraction_outside_unit_interval(capsys, tmp_path, fraction):
    assert_rejected(
        capsys,
        tmp_path,
        write_suite(tmp_path, base_doc(protocol__test_fraction=fraction)),
        "protocol.test_fraction",
        "between 0 and 1",
    )


def _manifest(tmp_path, rows):
    class_tree(tmp_path / "d")
    (tmp_path / "m.csv").write_text("path,label,group\n" + "\n".join(rows))
    return write_suite(tmp_path, base_doc(dataset={"name": "manifest", "manifest": str(tmp_path / "m.csv")}))


def test_labels_outside_0_to_3_in_manifest(capsys, tmp_path):
    rows = [f"d/Mayo {k}/UC_patient_{i}_{k}.bmp,{k},{i}" for k in range(4) for i in range(6)]
    rows[5] = rows[5].rsplit(",", 2)[0] + ",7,5"
    assert_rejected(capsys, tmp_path, _manifest(tmp_path, rows), "m.csv", "row 7", "'7'", "0–3")


def test_duplicate_image_ids_in_manifest(capsys, tmp_path):
    rows = [f"d/Mayo {k}/UC_patient_{i}_{k}.bmp,{k},{i}" for k in range(4) for i in range(6)]
    rows.append(rows[0])
    assert_rejected(capsys, tmp_path, _manifest(tmp_path, rows), "rows 2", "and 26", "same file", "UC_patient_0_0.bmp")


def test_pretrained_weights_absent_offline(tmp_path):
    """In a subprocess with empty caches: the error explains how to supply the file; nothing downloads."""
    suite = write_suite(tmp_path, base_doc(backbones=[{"name": "resnet18", "pretrained": True}]))
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_OFFLINE": "1",
        "MESBENCH_DEVICE": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and "Traceback" not in text
    assert "resnet18" in text and "pretrained" in text and "weights:" in text and "nothing is downloaded" in text
    assert not (tmp_path / "o" / "results.db").exists()
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.pth"))


def test_pretrained_weights_file_missing(capsys, tmp_path):
    suite = write_suite(
        tmp_path,
        base_doc(backbones=[{"name": "resnet18", "pretrained": True, "weights": str(tmp_path / "r18.safetensors")}]),
    )
    assert_rejected(capsys, tmp_path, suite, "r18.safetensors", "does not exist")


def test_output_directory_not_writable(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, text = run_cli(
        capsys, "run", str(write_suite(tmp_path, base_doc())), "--out", str(blocker / "run"), "--quiet"
    )
    assert code == 2 and "not writable" in text and "--out" in text


def test_store_of_incompatible_schema_version(capsys, tmp_path):
    out = tmp_path / "old"
    Store(out)
    with sqlite3.connect(out / "results.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    code, text = run_cli(capsys, "run", str(write_suite(tmp_path, base_doc())), "--out", str(out), "--quiet")
    assert code == 2 and "schema version 99" in text and "--out" in text
    with sqlite3.connect(out / "results.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0


def test_suite_changed_under_an_existing_run_directory(capsys, tmp_path):
    out = tmp_path / "run"
    first = write_suite(tmp_path, base_doc(), name="v1")
    assert main(["run", str(first), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    cells_before = Store(out, create=False).cell_rows()
    changed = base_doc()
    changed["dataset"]["params"]["seed"] = 2
    code, text = run_cli(capsys, "run", str(write_suite(tmp_path, changed, name="v2")), "--out", str(out), "--quiet")
    assert code == 2 and "different dataset/protocol configuration" in text and "--out" in text
    assert Store(out, create=False).cell_rows() == cells_before


def test_training_change_gets_a_new_hash_and_is_said(capsys, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            ["run", str(write_suite(tmp_path, base_doc(), name="v1")), "--out", str(out), "--quiet", "--only", "fold=0"]
        )
        == 0
    )
    code, text = run_cli(
        capsys,
        "run",
        str(write_suite(tmp_path, base_doc(training={"epochs": 2}), name="v2")),
        "--out",
        str(out),
        "--quiet",
        "--only",
        "fold=0",
    )
    assert code == 0 and "new configuration hash" in text and "not reported" in text
    rows = Store(out, create=False).cell_rows()
    assert len(rows) == 2 and len({r["key"] for r in rows}) == 2


def test_unknown_only_filter(capsys, tmp_path):
    code, text = run_cli(
        capsys,
        "run",
        str(write_suite(tmp_path, base_doc())),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--only",
        "model=x",
    )
    assert code == 2 and "backbone=NAME" in text


@pytest.mark.parametrize(
    "section,field,value,needle",
    [
        ("protocol", "folds", 1, "greater than or equal to 2"),
        ("training", "epochs", 0, "greater than or equal to 1"),
        ("training", "lr", -0.1, "greater than 0"),
        ("training", "lr", 0, "greater than 0"),
        ("training", "lr", float("nan"), "finite number"),
        ("training", "lr", float("inf"), "finite number"),
        ("training", "batch_size", 1, "greater than or equal to 2"),
        ("training", "early_stopping", 0, "greater than or equal to 1"),
        ("training", "early_stopping", -3, "greater than or equal to 1"),
        ("training", "plateau_factor", 1.0, "less than 1"),
        ("training", "plateau_factor", 0, "greater than 0"),
        ("training", "seeds", [], "at least 1 item"),
    ],
)
def test_out_of_range_numbers(capsys, tmp_path, section, field, value, needle):
    """Refused when the suite is loaded — before any data is read — naming the field and its YAML line."""
    doc = base_doc()
    doc[section][field] = value
    text = assert_rejected(capsys, tmp_path, write_suite(tmp_path, doc), f"{section}.{field}", needle)
    assert re.search(r"line \d+", text), text


# ---------------------------------------------------------------------------- inputs that used to be "internal error"


def test_suite_file_of_binary_bytes(capsys, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    text = assert_rejected(capsys, tmp_path, path, "binary.yaml", "not a text file")
    assert "internal error" not in text


def _small_manifest(tmp_path, per_class, **protocol):
    class_tree(tmp_path / "d")
    rows = [f"d/Mayo {k}/UC_patient_{i}_{k}.bmp,{k}" for k in range(4) for i in range(per_class)]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows))
    return write_suite(
        tmp_path,
        base_doc(
            dataset={"name": "manifest", "manifest": str(tmp_path / "m.csv")}, protocol={"kind": "study", **protocol}
        ),
    )


def test_three_images_per_class_with_five_folds(capsys, tmp_path):
    suite = _small_manifest(tmp_path, 3, folds=5, test_fraction=0.15)
    text = assert_rejected(capsys, tmp_path, suite, "protocol.test_fraction = 0.15 of 12 images", "at least 4")
    assert "internal error" not in text


@pytest.mark.parametrize(
    "content,needle",
    [
        ("path,label,group\n", "header but no image rows"),
        ("", "the file is empty"),
        ("path,label\n,1\nd/Mayo 0/UC_patient_0_0.bmp,0\n", "row 2 has an empty path"),
        (None, "not a text file"),
    ],
)
def test_broken_manifests(capsys, tmp_path, content, needle):
    class_tree(tmp_path / "d")
    manifest = tmp_path / "m.csv"
    if content is None:
        manifest.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    else:
        manifest.write_text(content)
    suite = write_suite(tmp_path, base_doc(dataset={"name": "manifest", "manifest": str(manifest)}))
    text = assert_rejected(capsys, tmp_path, suite, "m.csv", needle)
    assert "internal error" not in text


@pytest.mark.parametrize("damage", ["truncated", "garbage", "random"])
@pytest.mark.parametrize("command", ["run", "report"])
def test_damaged_results_db(capsys, tmp_path, make_suite, damage, command):
    suite = make_suite(name="dmg", formulations=["softmax"])
    out = tmp_path / "dmg"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    db = out / "results.db"
    for side in ("-wal", "-shm"):
        (out / f"results.db{side}").unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(
        {
            "truncated": data[: len(data) // 3],
            "garbage": b"this is not a database\n" * 200,
            "random": np.random.default_rng(0).bytes(8192),
        }[damage]
    )
    args = ["run", str(suite), "--out", str(out), "--quiet"] if command == "run" else ["report", str(out)]
    code, text = run_cli(capsys, *args)
    assert code == 2, text
    assert "results.db" in text and "internal error" not in text
    assert "move it away" in text or "damaged" in text


def test_damaged_splits_json(capsys, tmp_path, make_suite):
    suite = make_suite(name="spl", formulations=["softmax"])
    out = tmp_path / "spl"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    path = out / "splits.json"
    path.write_text(path.read_text()[:100])
    code, text = run_cli(capsys, "run", str(suite), "--out", str(out), "--quiet")
    assert code == 2 and "splits.json is damaged" in text and "delete it" in text


@pytest.mark.parametrize("target,damage", [("images.npy", "truncate"), ("json", "garbage")])
def test_damaged_cache_entry_is_rebuilt(capsys, tmp_path, monkeypatch, target, damage):
    from benchmark.data.catalogue import load_dataset
    from benchmark.suite.schema import DatasetConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    cfg = DatasetConfig(name="synthetic", params={"n_images": 80, "n_patients": 12, "size": [16, 16], "seed": 3})
    first = load_dataset(cfg)
    entry = next((tmp_path / "cache").glob(f"*.{target}"))
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:200])
    else:
        entry.write_bytes(b"\x00{not json")
    again = load_dataset(cfg)  # rebuilt, not fatal
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))
    assert np.array_equal(again.labels, first.labels)
    assert (
        np.load(
            entry if target == "images.npy" else entry.with_name(entry.name.replace(".json", ".images.npy")),
            mmap_mode="r",
        ).shape[0]
        == 80
    )


def test_suite_name_must_be_one_folder_name(capsys, tmp_path):
    for name in ("../../x", "a/b", "..", "."):
        text = assert_rejected(
            capsys, tmp_path, write_suite(tmp_path, base_doc(name=name)), "name", "one plain folder name"
        )
        assert not (tmp_path.parent.parent / "x").exists()
    assert "internal error" not in text


def test_one_patient_class_gives_advice_that_fixes_it(capsys, tmp_path):
    """A grade held by a single patient cannot appear on both sides of any grouped split; 'use at most 2
    folds' (with folds already 2) fixed nothing."""
    root = class_tree(tmp_path / "d")
    rows = [f"d/Mayo {k}/UC_patient_{i}_{k}.bmp,{k},{'solo' if k == 3 else i}" for k in range(4) for i in range(6)]
    (tmp_path / "m.csv").write_text("path,label,group\n" + "\n".join(rows))
    suite = write_suite(
        tmp_path,
        base_doc(
            dataset={"name": "manifest", "manifest": str(tmp_path / "m.csv")},
            protocol={"kind": "grouped", "folds": 2, "test_fraction": 0.25},
        ),
    )
    code, text = run_cli(capsys, "run", str(suite), "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "MES 3" in text and "1 patient" in text
    assert "use at most 2 folds" not in text and "add patients of MES 3" in text
    del root


@pytest.mark.parametrize("value", ["fold=7", "formulation=softmx", "backbone=resnet18", "seed=3"])
def test_only_that_matches_nothing_is_refused(capsys, tmp_path, value):
    code, text = run_cli(
        capsys, "run", str(write_suite(tmp_path, base_doc())), "--out", str(tmp_path / "o"), "--quiet", "--only", value
    )
    key = value.split("=")[0]
    assert code == 2 and f"--only {value}" in text and "matches no cell" in text, text
    valid = {"fold": "0, 1", "formulation": "softmax", "backbone": "tiny", "seed": "0"}[key]
    assert valid in text
    assert not (tmp_path / "o" / "results.db").exists() or not Store(tmp_path / "o", create=False).cell_rows()


def uniform_limuc_tree(root, values, dtype, mode=None, suffix=".png", shape=(8, 8), per_grade=4):
    """A LIMUC-shaped tree ("Mayo k" folders, UC_patient_i_k files) whose images of grade k are all `values[k]`."""
    for k, v in values.items():
        (root / f"Mayo {k}").mkdir(parents=True)
        for i in range(per_grade):
            Image.fromarray(np.full(shape, v, dtype), mode).save(root / f"Mayo {k}" / f"UC_patient_{i}_{k}{suffix}")
    return root


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, monkeypatch, capsys):
    from benchmark.data.catalogue import load_dataset
    from benchmark.suite.schema import DatasetConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    values = {0: 1000, 1: 20000, 2: 40000, 3: 65535}
    root = uniform_limuc_tree(tmp_path / "d16", values, np.uint16)
    assert Image.open(root / "Mayo 1" / "UC_patient_0_1.png").mode.startswith("I;16")
    ds = load_dataset(DatasetConfig(name="folder", root=str(root)))
    for k, v in values.items():
        pixel = np.asarray(ds.images)[ds.labels == k][0, 0, 0]
        assert pixel.tolist() == [round(v / 257)] * 3, (k, pixel)  # 1000 -> 4, not 255
    code, text = run_cli(capsys, "data", "inspect", str(root))
    assert "16-bit gray: 16" in text
