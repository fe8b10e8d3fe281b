"""`bench report`: every table in every format, stars where they belong, honest headers."""

import numpy as np
import pytest
from fake_run import write_fake_run

from benchmark.cli import main
from benchmark.result import CellResult
from benchmark.run.store import Store
from benchmark.suite.cells import expand_cells, protocol_hash
from benchmark.suite.schema import Suite
from reports.load import load_run
from reports.render import build, to_markdown
from reports.sections.per_class import per_class_f1
from reports.table import Options

# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_report")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from conftest import tiny_suite

    tmp = tmp_path_factory.mktemp("rep")
    suite = tiny_suite(tmp, name="rep", formulations=["softmax", "regression", "mtl", "mtl+f1"])
    out = tmp / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    return out


def test_all_tables_in_every_format(real_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["report", str(real_run)]) == 0
    md = capsys.readouterr().out
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5"):
        assert title in md
    assert "patient-grouped splits" in md and "4 finished" not in md and "8 finished, 0 failed, 0 missing" in md
    assert "nan" not in md.lower()
    assert main(["report", str(real_run), "--latex", "-o", str(tmp_path / "r.tex")]) == 0
    tex = (tmp_path / "r.tex").read_text()
    assert tex.count("\\begin{tabular}") >= 5 and "\\toprule" in tex
    assert main(["report", str(real_run), "--csv", "-o", str(tmp_path / "r.csv")]) == 0
    head = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert head == "backbone,formulation,seed,fold,split,task,metric,cls,class,value"
    assert main(["report", str(real_run), "--html", "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    assert "score distributions" in html and "training curves" in html and "confusion matrices" in html
    assert "src='http" not in html  # self-contained
    assert main(["report", str(real_run), "--split", "test", "--test", "corrected-t", "--correction", "fdr_bh"]) == 0


def _constructed_run(path, folds=10, n_missing=0):
    """softmax, better, same: `better` beats softmax on MES 3 F1 in every fold; `same` equals softmax."""
    suite = Suite.model_validate(
        {
            "name": "stars",
            "dataset": {"name": "synthetic"},
            "protocol": {"kind": "grouped", "folds": folds},
            "backbones": ["resnet18"],
            "formulations": ["softmax", {"name": "corn", "label": "better"}, {"name": "coral", "label": "same"}],
        }
    )
    store = Store(path)
    store.set_meta("protocol_hash", protocol_hash(suite))
    store.set_meta("suite", suite.model_dump(mode="json"))
    store.set_meta("n_folds", folds)
    store.set_meta("split_kind", "image-level")
    store.set_meta("dataset", {"name": "constructed"})
    rng = np.random.default_rng(0)
    base = {k: 0.5 + 0.05 * rng.random(folds) for k in range(4)}
    cells = expand_cells(suite, folds)
    for i, cell in enumerate(cells):
        if i >= len(cells) - n_missing:
            break
        f = cell.formulation.display
        rows = []
        for k in range(4):
            v = base[k][cell.fold] + (0.3 if (f == "better" and k == 3) else 0.0)
            rows.append({"split": "val", "task": "mes", "metric": "f1", "cls": str(k), "value": v})
        macro = np.mean([r["value"] for r in rows])
        rows.append({"split": "val", "task": "mes", "metric": "f1", "cls": "macro", "value": macro})
        store.claim(
            cell.key, {"backbone": "resnet18", "formulation": f, "seed": 0, "fold": cell.fold, "config_hash": cell.key}
        )
        store.finish(cell.key, CellResult(n_train=900, n_val=100, metrics=rows))
    return path


def test_stars_only_where_the_constructed_difference_is(tmp_path):
    run = load_run(_constructed_run(tmp_path / "c"))
    table = per_class_f1(run, Options(correction="holm"))
    better = table.columns.index("better")
    stars_at = {(i, j) for i, row in enumerate(table.rows) for j, c in enumerate(row) if c.endswith("*")}
    assert stars_at == {(3, better), (4, better)}  # MES 3 and macro
    # 10 comparisons, exact Wilcoxon p = 2/1024 each: Holm -> 0.0195 (one star); uncorrected -> two stars
    assert table.rows[3][better].endswith("*") and not table.rows[3][better].endswith("**")
    raw = per_class_f1(run, Options(correction="none"))
    assert raw.rows[3][better].endswith("**") and not raw.rows[3][better].endswith("***")
    assert (3, better) in table.bold  # best in its row
    assert any("Holm" in n and "α = 0.05" in n for n in table.notes)
    same = table.columns.index("same")
    assert all("nan" not in row[same].lower() and not row[same].endswith("*") for row in table.rows)


def test_impossible_significance_is_said_not_hidden(tmp_path):
    run = load_run(_constructed_run(tmp_path / "c3", folds=3))
    table = per_class_f1(run, Options())
    assert not any(c.endswith("*") for row in table.rows for c in row)
    assert any("no difference can reach" in n for n in table.notes)


def test_incomplete_run_says_so_at_the_top_and_marks_rows(tmp_path):
    run = load_run(_constructed_run(tmp_path / "inc", n_missing=2))
    md = to_markdown(build(run, Options(), with_test=False))
    first = md.split("## ")[0]
    assert "INCOMPLETE RUN" in first and "2 missing" in first
    assert "same †" in md
    assert "Image-level splits" in first  # study protocol warning


def test_friedman_table_with_three_formulations_and_three_backbones(tmp_path):
    path = write_fake_run(
        tmp_path / "f",
        backbones=("resnet18", "densenet121", "resnet50"),
        formulations=("softmax", "coral", "mtl"),
        folds=3,
        n_val=80,
        n_test=60,
    )
    md = to_markdown(build(load_run(path), Options()))
    assert "Table 6" in md and "Iman–Davenport" in md and "critical difference CD" in md
    assert "per-class F1, densenet121" in md  # default backbone when present


def test_friedman_with_two_blocks_says_what_it_cannot_show(tmp_path):
    path = write_fake_run(
        tmp_path / "f2",
        backbones=("resnet18", "densenet121"),
        formulations=("softmax", "coral", "mtl"),
        folds=3,
        n_val=80,
        n_test=60,
    )
    md = to_markdown(build(load_run(path), Options()))
    table6 = md.split("## Table 6")[1]
    assert "needs at least 3" in table6 and "this run has 2" in table6
    assert "Iman–Davenport" not in table6


def test_unlisted_stage1_appears_in_the_finetune_table(make_suite, tmp_path, capsys):
    suite = make_suite(name="dep", formulations=["softmax", {"name": "mtl+f1", "label": "study"}])
    out = tmp_path / "dep"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    assert run.formulations == ["softmax", "study"]
    assert set(run.cells.formulation) == {"softmax", "study", "study[stage 1]"}
    md = to_markdown(build(run, Options()))
    rows = [line for line in md.splitlines() if "study[stage 1] → study" in line]
    assert len(rows) == 4 and all("—" not in r.split("|")[4] for r in rows)  # F1 before → after present


def test_unknown_reference_or_backbone_names_the_closest(real_run, capsys):
    capsys.readouterr()
    assert main(["report", str(real_run), "--reference", "mtl+f"]) == 2
    assert "--reference 'mtl+f' is not in this run" in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(real_run), "--backbone", "tin"]) == 2
    assert "did you mean 'tiny'" in " ".join(capsys.readouterr().err.split())
