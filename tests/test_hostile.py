"""Hostile text and unsafe outcomes of the second adversarial round: what a report, a CSV or a baseline does with
labels a user (or an attacker editing a suite) can write, and inputs that must be refused at the edge."""

import csv
import io
import re

import markdown
import pytest
from fake_run import write_fake_run
from test_bad_input import uniform_limuc_tree

from benchmark.cli import main

XSS = "<img src=x onerror=alert(1)>"
FORMULA = "=cmd|' /C calc'!A0"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    forms = (
        "softmax",
        {"name": "coral", "label": XSS},
        {"name": "corn", "label": FORMULA},
        {"name": "regression", "label": "a|b ## heading"},
        {"name": "mtl", "label": "mtl #2"},
    )
    return write_fake_run(
        tmp_path_factory.mktemp("hostile") / "run", backbones=("resnet18",), formulations=forms, folds=3, n_test=60
    )


def test_markdown_escapes_html_and_table_breaking_text(hostile_run, capsys):
    capsys.readouterr()
    assert main(["report", str(hostile_run), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert XSS not in md and "&lt;img src=x onerror=alert(1)>" in md
    rendered = markdown.markdown(md, extensions=["tables"])
    assert "<img src=x" not in rendered and "onerror" not in rendered.replace("onerror=alert(1)&gt;", "")
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    rows = [line for line in table1.splitlines() if line.startswith("| resnet18 ")]
    header = next(line for line in table1.splitlines() if line.startswith("| backbone"))
    n_cols = header.count(" | ") + 1
    for row in rows:  # the '|' in a label is escaped: every row has as many cells as the header
        assert row.replace("\\|", "").count(" | ") + 1 == n_cols
    assert "a\\|b ## heading" in table1
    assert "\n## heading" not in md


def test_csv_neutralises_formulas_and_round_trips(hostile_run, tmp_path, capsys):
    out = tmp_path / "long.csv"
    assert main(["report", str(hostile_run), "--csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    forms = {r["formulation"] for r in rows}
    assert "'" + FORMULA in forms and FORMULA not in forms
    assert XSS in forms  # not a formula: kept as it is (CSV is data; HTML escaping is the renderer's job)
    for r in rows:
        for v in r.values():
            assert not v.startswith(("=", "+", "@")), v


def test_a_baseline_with_hash_in_a_label_is_read_back(hostile_run, tmp_path, capsys):
    base = tmp_path / "base.csv"
    assert main(["check", str(hostile_run), "--baseline", str(base), "--update"]) == 0
    assert main(["check", str(hostile_run), "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    assert "internal error" not in out


@pytest.mark.parametrize("label", ["two\nlines", "tab\there", "bell\x07", "rtl\u202eoverride"])
def test_control_characters_in_labels_are_refused_at_load(make_suite, tmp_path, capsys, label):
    suite = make_suite(name="ctl", formulations=[{"name": "softmax", "label": label}])
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "control characters" in err and "internal error" not in err


def test_a_backbone_listed_twice_is_refused(make_suite, tmp_path, capsys):
    suite = make_suite(name="twice", backbones=["tiny", "tiny"])
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "listed twice" in capsys.readouterr().err


def test_mesbench_store_never_silently_replaces_the_run_directory_named(tmp_path, monkeypatch, capsys):
    a = write_fake_run(tmp_path / "A", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3, seed=1)
    b = write_fake_run(tmp_path / "B", backbones=("resnet50",), formulations=("softmax", "coral"), folds=3, seed=2)
    monkeypatch.setenv("MESBENCH_STORE", str(b))
    capsys.readouterr()
    assert main(["report", str(a)]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "MESBENCH_STORE" in err and "internal error" not in err
    assert main(["check", str(a), "--against", str(b)]) == 2
    capsys.readouterr()
    assert main(["report", str(a), "--store", str(a)]) == 0  # an explicit --store decides
    assert "| resnet18 |" in capsys.readouterr().out
    assert main(["report", str(b)]) == 0  # the variable names this very run: no conflict
    assert "| resnet50 |" in capsys.readouterr().out


def test_float_images_in_0_1_are_scaled_and_others_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    """The audit: mode F images of 0.1–0.7 decoded to black, and `bench data inspect` called them usable."""
    import numpy as np
    from PIL import Image

    from benchmark.data.catalogue import load_dataset
    from benchmark.errors import BenchError
    from benchmark.suite.schema import DatasetConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    values = {0: 0.1, 1: 0.3, 2: 0.5, 3: 0.7}
    root = uniform_limuc_tree(tmp_path / "float", values, np.float32, "F", ".tiff")
    assert Image.open(root / "Mayo 0" / "UC_patient_0_0.tiff").mode == "F"
    ds = load_dataset(DatasetConfig(name="folder", root=str(root)))
    for k, v in values.items():
        pixel = np.asarray(ds.images)[ds.labels == k][0, 0, 0]
        expected = int(np.rint(np.float64(np.float32(v)) * 255))  # the stored float32, scaled
        assert pixel.tolist() == [expected] * 3, (k, pixel)  # 0.1 -> 26, not 0
    bad = root / "Mayo 2" / "UC_patient_9_2.tiff"
    Image.fromarray(np.full((8, 8), 180.0, np.float32), "F").save(bad)
    with pytest.raises(BenchError, match="UC_patient_9_2.tiff"):
        load_dataset(DatasetConfig(name="folder", root=str(root)))
    capsys.readouterr()
    assert main(["data", "inspect", str(root)]) != 0
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "unusable image" in text and "UC_patient_9_2.tiff" in text and "32-bit float image with values 180" in text
    assert not re.search(r"(?<!un)usable:", text)


def test_a_store_that_is_another_programs_database_is_never_written(make_suite, tmp_path, capsys):
    import sqlite3

    db = tmp_path / "theirs" / "results.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE cells (id INTEGER PRIMARY KEY, colour TEXT)")
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    suite = make_suite(name="foreign")
    capsys.readouterr()
    assert main(["run", str(suite), "--store", f"sqlite:///{db}", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "another program's database" in err and "invoices" in err and "internal error" not in err
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"cells", "invoices"}  # nothing created beside them
    for command in (["report", str(tmp_path / "theirs")], ["status", str(tmp_path / "theirs")]):
        assert main(command) == 2, command
        assert "internal error" not in capsys.readouterr().err


def test_report_on_an_empty_database_is_a_clean_error(tmp_path, capsys):
    import os
    import sqlite3
    import time

    from benchmark.run.store import STARTING_SECONDS

    db = tmp_path / "empty" / "results.db"
    db.parent.mkdir()
    sqlite3.connect(db).close()
    old = time.time() - 10 * STARTING_SECONDS
    os.utime(db, (old, old))  # not a run that is starting: refused at once
    started = time.monotonic()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and ("holds no mesbench results" in err or "no tables" in err)
    assert time.monotonic() - started < STARTING_SECONDS


def test_status_on_a_run_whose_store_file_is_made_but_not_its_tables_waits_for_them(tmp_path, capsys):
    """`bench run` makes results.db, then its tables, then records its suite: `bench status` in between must not call
    the run empty, and says what it waits for."""
    import sqlite3
    import threading

    from benchmark.run.store import Store

    run = tmp_path / "starting"
    run.mkdir()
    sqlite3.connect(run / "results.db").close()  # the file, made this moment, no tables yet
    maker = threading.Timer(1.0, lambda: Store(run))  # the run's tables, a second later
    maker.start()
    try:
        assert main(["status", str(run)]) == 2
    finally:
        maker.join()
    err = " ".join(capsys.readouterr().err.split())  # the tables came; the suite is recorded once the data is loaded
    assert "holds no mesbench results" not in err and "no suite recorded yet" in err and "try again in a moment" in err


# ---------------------------------------------------------------------------- limits


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: x\n")
    assert bomb.stat().st_size < 2000
    assert main(["run", str(bomb), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "aliases" in err and "internal error" not in err
    view = tmp_path / "bomb-view.yaml"
    view.write_text(bomb.read_text())
    assert main(["report", str(tmp_path / "nowhere"), "--view", str(view)]) == 2


def test_a_suite_expanding_to_too_many_cells_asks_for_yes(make_suite, tmp_path, capsys):
    import time

    suite = make_suite(name="huge", protocol={"repeats": 100_000_000})
    t0 = time.perf_counter()
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert time.perf_counter() - t0 < 30  # refused, not expanded
    err = " ".join(capsys.readouterr().err.split())
    assert "200,000,000 cells" in err and "--yes" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "0"], "at least 1"),
        (["--workers", "-1"], "at least 1"),
        (["--workers", "1000"], "CPU core"),
        (["--workers", "2", "--devices", "abc"], "GPU indices"),
        (["--workers", "2", "--devices", "7,9"], "do(es) not exist"),
    ],
)
def test_workers_and_devices_beyond_the_machine_are_refused(make_suite, tmp_path, capsys, extra, message):
    suite = make_suite(name="w")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "internal error" not in err


@pytest.mark.parametrize("extra, message", [(["--trials", "-3"], "--trials -3"), (["--timeout", "-5"], "--timeout")])
def test_tune_refuses_negative_trials_and_timeouts(make_suite, tmp_path, capsys, extra, message):
    suite = make_suite(name="t", formulations=["mtl"])
    args = ["tune", str(suite), "--out", str(tmp_path / "o"), *(["--trials", "1"] if "--trials" not in extra else [])]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_workers_die_with_their_parent(make_suite, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    suite = make_suite(name="orphans", formulations=["softmax", "coral"], training={"epochs": 50})
    parent = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(tmp_path / "o"), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    deadline = time.time() + 60
    while time.time() < deadline and len(children) < 2:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        children = [int(p) for p in out]
    assert len(children) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    alive = children
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in children if os.path.exists(f"/proc/{p}") and "Z" not in _state(p)]
    assert not alive, f"orphaned workers {alive}"


def _state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
    except OSError:
        return "Z"


# ---------------------------------------------------------------------------- partly fixed last time


def test_retry_failed_retrains_a_finished_stage1_cell_whose_checkpoint_is_unloadable(make_suite, tmp_path, capsys):
    from benchmark.run.store import Store

    suite = make_suite(name="stage1", formulations=["mtl", "mtl+f1"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0", "--only", "formulation=mtl"]) == 0
    (stage1,) = [r for r in Store(out, create=False).cell_rows() if r["formulation"] == "mtl"]
    best = out / "cells" / stage1["key"] / "best.pt"
    best.write_bytes(b"not a checkpoint")
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 1  # the +f1 cell fails
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0", "--retry-failed"]) == 0
    assert "its stage-1 cell trains again" in capsys.readouterr().err
    rows = Store(out, create=False).cell_rows()
    assert all(r["status"] == "done" for r in rows) and len(rows) == 2
    import torch

    assert isinstance(torch.load(best, weights_only=True), dict)  # retrained: a real checkpoint again


def test_temp_files_in_a_finished_cells_folder_are_removed(make_suite, tmp_path):
    suite = make_suite(name="tmpfiles")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    folders = [p for p in (out / "cells").iterdir() if p.is_dir()]
    for folder in folders:
        (folder / "best.pt.1234.tmp").write_bytes(b"half a save")
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0  # nothing to train; the leftovers go
    assert not list((out / "cells").rglob("*.tmp"))


# ---------------------------------------------------------------------------- inputs that ended in "internal error"

STORE_URLS = {
    "refused port": "postgresql://u@127.0.0.1:1/db",
    "mysql": "mysql://u@h/db",
    "postgres scheme": "postgres://u@127.0.0.1:1/db",
    "http": "http://x/y",
    "file": "file:///tmp/x",
    "asyncpg": "postgresql+asyncpg://u@127.0.0.1:1/db",
    "no scheme": "://",
    "bad port": "postgresql://u@127.0.0.1:99999/db",
    "connect_timeout": "postgresql://u@127.0.0.1:1/db?connect_timeout=abc",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return write_fake_run(
        tmp_path_factory.mktemp("finished") / "run", backbones=("resnet18",), formulations=("softmax", "coral"), folds=3
    )


def _clean_error(capsys, code):
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "internal error" not in err, err
    return err


@pytest.mark.parametrize("command", ["run", "report", "status"])
@pytest.mark.parametrize("name", list(STORE_URLS))
def test_a_bad_store_url_is_one_paragraph(make_suite, finished_run, tmp_path, capsys, command, name):
    url = STORE_URLS[name]
    if command == "run":
        args = ["run", str(make_suite(name="s")), "--out", str(tmp_path / "o"), "--quiet", "--store", url]
    else:
        args = [command, str(finished_run), "--store", url]
    err = _clean_error(capsys, main(args))
    assert url in err or "could not be reached" in err


def test_store_copy_to_an_unreachable_server_is_one_paragraph(finished_run, capsys):
    err = _clean_error(capsys, main(["store", "copy", str(finished_run), STORE_URLS["refused port"]]))
    assert "could not be reached" in err and "run the same command again" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--per-class", "0"], "--per-class 0"),
        (["--per-class", "-2"], "--per-class -2"),
    ],
)
def test_explain_refuses_impossible_counts(finished_run, capsys, args, needle):
    assert needle in _clean_error(capsys, main(["explain", str(finished_run), *args]))


def test_explain_refuses_an_existing_file_as_its_folder(finished_run, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert "a file of that name exists" in _clean_error(capsys, main(["explain", str(finished_run), "-o", str(target)]))


def test_tune_backbone_not_in_the_suite(make_suite, tmp_path, capsys):
    suite = make_suite(name="tb", formulations=["mtl"])
    args = ["tune", str(suite), "--trials", "1", "--out", str(tmp_path / "t"), "--backbone", "resnet50"]
    assert "is not in suite" in _clean_error(capsys, main(args))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("training.epochs=!!python/object/apply:os.system ['true']", "is not a value"),
        ("dataset.params.size=[100000,100000]", "between 8 and 4096"),
        ("dataset.params.n_images=lots", "dataset.params.n_images"),
        ("backbones=[{name: tiny, input_size: [0, -3]}]", "input_size"),
    ],
)
def test_bad_values_are_refused_before_training(make_suite, tmp_path, capsys, override, needle):
    args = ["run", str(make_suite(name="v")), "--out", str(tmp_path / "o"), "--quiet", "--set", override]
    assert needle in _clean_error(capsys, main(args))


@pytest.mark.parametrize(
    "variable, value, needle",
    [
        ("MESBENCH_STALE_SECONDS", "abc", "MESBENCH_STALE_SECONDS='abc'"),
        ("MESBENCH_HEARTBEAT_SECONDS", "10s", "MESBENCH_HEARTBEAT_SECONDS='10s'"),
        ("MESBENCH_DEVICE", "tpu", "device 'tpu'"),
        ("MESBENCH_CACHE", "FILE", "cannot be a folder there"),
        ("MESBENCH_PROGRESS_EPOCHS", "abc", "MESBENCH_PROGRESS_EPOCHS='abc'"),
    ],
)
def test_environment_variables_with_bad_values(make_suite, tmp_path, variable, value, needle):
    import os
    import subprocess
    import sys

    suite = make_suite(name="env")
    if value == "FILE":
        value = str(suite)  # a file where a folder should be
    env = {**os.environ, variable: value}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and needle in err and "internal error" not in err, err


def test_labels_with_dollars_and_rich_markup_render_as_written(make_suite, tmp_path, capsys):
    """`$…$` broke matplotlib's mathtext in --html; `[/]` broke bench status and the summary of bench run."""
    label = "cost $\\nope{$ [/] [bold]"  # not valid mathtext, and not valid rich markup
    suite = make_suite(name="markup", formulations=["softmax", {"name": "coral", "label": label}])
    out = tmp_path / "run [/]"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "internal error" not in text.err + text.out and "[/]" in " ".join(text.out.split())
    assert main(["status", str(out)]) == 0
    assert "[/]" in capsys.readouterr().out
    assert main(["report", str(out), "--html", "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "cost $\\nope{$ [/] [bold]" in html
    assert main(["report", str(out), "--figures-only", "-o", str(tmp_path / "figs")]) == 0
    assert list((tmp_path / "figs").glob("*.png"))


@pytest.mark.parametrize(
    "section, needle",
    [
        ("{kind: per_class, metric: bogus}", "metric"),
        ("{kind: figure_classwise, metrics: [bogus, f1]}", "metrics"),
        ("{kind: per_class, reference: nothere}", "reference 'nothere'"),
        ("{kind: figure_classwise, reference: nothere}", "reference 'nothere'"),
    ],
)
def test_a_view_naming_what_does_not_exist_is_refused(finished_run, tmp_path, capsys, section, needle):
    view = tmp_path / "v.yaml"
    view.write_text(f"name: v\nsections:\n  - {section}\n")
    err = _clean_error(
        capsys, main(["report", str(finished_run), "--view", str(view), "--html", "-o", str(tmp_path / "r.html")])
    )
    assert needle in err


def test_a_decompression_bomb_image_is_named_not_an_internal_error(tmp_path, monkeypatch, capsys):
    """A 210-megapixel PNG raised PIL's DecompressionBombError through `bench run`; PIL's limit is scaled down here
    so that a small image trips the same check."""
    import numpy as np
    from PIL import Image

    from benchmark.data.catalogue import load_dataset
    from benchmark.errors import BenchError
    from benchmark.suite.schema import DatasetConfig

    monkeypatch.setenv("MESBENCH_CACHE", str(tmp_path / "cache"))
    root = uniform_limuc_tree(tmp_path / "bomb", dict.fromkeys(range(4), 0), np.uint8, shape=(8, 8, 3), per_grade=3)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "Mayo 1" / "UC_patient_7_1.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 × 64 is then more than twice the limit: a "bomb"
    with pytest.raises(BenchError, match="UC_patient_7_1.png"):
        load_dataset(DatasetConfig(name="folder", root=str(root)))
