"""The Python API (`import benchmark as mb`): the same rows, tables and checks as the CLI, and no torch to read."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score

import benchmark as mb
from benchmark.cli import main
from benchmark.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_api")


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A suite given as a dict (never written as YAML), trained through mb.run_suite."""
    from conftest import tiny_suite

    tmp = tmp_path_factory.mktemp("api")
    doc = yaml.safe_load(tiny_suite(tmp, name="api", formulations=["softmax", "coral"]).read_text())
    (tmp / "api.yaml").unlink()
    out = tmp / "run"
    run = mb.run_suite(doc, out=out, set=["training.epochs=1"])
    return run, out


def test_run_suite_from_a_dict_trains_every_cell_with_its_overrides(api_run):
    run, out = api_run
    assert isinstance(run, mb.Run) and run.complete and run.path == out
    cells = run.cells
    assert len(cells) == 4 and set(cells.status) == {"done"}
    assert (cells.epochs == 1).all()  # --set training.epochs=1 reached the training loop
    assert (cells.train_seconds > 0).all() and (cells.cell_seconds >= cells.train_seconds).all()
    assert set(cells.formulation) == {"softmax", "coral"} and set(cells.fold) == {0, 1}
    assert yaml.safe_load((out / "suite.yaml").read_text())["training"]["epochs"] == 1  # the run's own copy


def test_run_suite_again_trains_nothing(api_run):
    run, out = api_run
    before = run.cells.set_index("key").cell_seconds
    again = mb.run_suite(run.suite.model_dump(mode="json", exclude_none=True), out=out)
    after = again.cells.set_index("key").cell_seconds
    pd.testing.assert_series_equal(before.sort_index(), after.sort_index())  # the stored results, untouched


def test_metrics_are_the_rows_bench_report_csv_writes(api_run):
    run, out = api_run
    code = f"import benchmark as mb; r = mb.load_run({str(out)!r}); print(len(r.metrics))"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    csv = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "report", str(out), "--csv"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    from_csv = pd.read_csv(io.StringIO(csv), keep_default_na=False)
    assert int(printed.stdout) == len(from_csv) == len(run.metrics) > 0
    assert list(run.metrics.columns) == list(from_csv.columns)
    np.testing.assert_allclose(run.metrics.value.to_numpy(float), from_csv.value.to_numpy(float), rtol=0, atol=1e-9)


def test_predictions_agree_with_the_stored_metrics(api_run):
    run, _ = api_run
    preds, metrics = run.predictions, run.metrics
    assert {"backbone", "formulation", "seed", "fold", "split", "image_id", "y_true", "y_pred", "p0", "p3"} <= set(
        preds.columns
    )
    assert set(preds.split) == {"val", "test"}
    for (formulation, fold, split), g in preds.groupby(["formulation", "fold", "split"]):
        m = metrics[metrics.task == "mes"]
        stored = m[(m.formulation == formulation) & (m.fold == fold) & (m.split == split)]
        acc = stored[(stored.metric == "accuracy") & (stored.cls == "")].value
        f1 = stored[(stored.metric == "f1") & (stored.cls == "macro")].value
        assert float(acc.iloc[0]) == pytest.approx(accuracy_score(g.y_true, g.y_pred), abs=1e-6)
        assert float(f1.iloc[0]) == pytest.approx(
            f1_score(g.y_true, g.y_pred, average="macro", labels=range(4), zero_division=0), abs=1e-6
        )


def test_report_tables_hold_the_numbers_the_markdown_prints(api_run, capsys):
    run, out = api_run
    rep = mb.report(run)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    md = capsys.readouterr().out
    assert rep.to_markdown() == md  # one code path
    assert any(name.startswith("Table 1") for name in rep.tables)
    for name, frame in rep.tables.items():
        assert name in md
        assert len(frame) > 0
        for row in frame.itertuples(index=False):
            for cell in row:
                assert str(cell).replace("|", "\\|") in md, (name, cell)


def test_report_options_change_what_they_say_and_are_checked(api_run):
    run, _ = api_run
    default, ranksum = mb.report(run), mb.report(run, test="ranksum", alpha=0.1)
    assert default.header != ranksum.header
    stats = next(line for line in ranksum.header if line.startswith("Statistics"))
    assert "α = 0.1" in stats and "rank-sum" in stats.lower()
    with pytest.raises(BenchError, match="--alpha 2"):
        mb.report(run, alpha=2)
    with pytest.raises(BenchError, match="--test 'students'"):
        mb.report(run, test="students")
    with pytest.raises(BenchError, match="--reference"):
        mb.report(run, reference="no-such-formulation")


def test_report_figures_are_matplotlib_figures(api_run):
    from matplotlib.figure import Figure

    run, _ = api_run
    figs = mb.report(run).figures
    assert figs and all(isinstance(f, Figure) and f.axes for f in figs.values())
    assert any("confusion" in name for name in figs)


def test_reading_a_run_imports_no_torch(api_run):
    _, out = api_run
    code = (
        f"import sys, benchmark as mb; r = mb.load_run({str(out)!r}); r.metrics; r.predictions; r.cells; "
        "rep = mb.report(r); rep.tables; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert printed.stdout.strip() == "[]"


def test_a_bad_dict_suite_is_one_paragraph_naming_the_field(tmp_path):
    with pytest.raises(BenchError, match="formulations"):
        mb.run_suite({"name": "x", "backbones": ["tiny"], "formulations": ["no-such"]}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
