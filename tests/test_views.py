"""Report views: either comparison axis, the two papers' views, views as YAML files, and asterisks on a figure
that agree with its table."""

import re

import numpy as np
import pytest
from fake_run import write_fake_run

from benchmark.cli import main
from benchmark.result import CellResult
from benchmark.run.store import Store
from benchmark.suite.cells import expand_cells, protocol_hash
from benchmark.suite.schema import Suite
from reports.compare import compare, comparison_table
from reports.load import load_run
from reports.sections.classwise import comparison_boxplots
from reports.table import Options
from reports.views import load_view, view_names

# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_views")


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """10 folds × 5 backbones × 6 formulations, with test predictions (no training)."""
    return write_fake_run(tmp_path_factory.mktemp("views") / "run", folds=10, n_val=120, n_test=150)


@pytest.mark.parametrize("view", ["default", "kim-lee-2025", "polat-2023"])
def test_each_view_renders_in_markdown_html_and_latex(paper_run, view, tmp_path, capsys):
    # the default view's HTML at paper size (every figure, PNG and PDF) is scripts/report-speed's measurement; its
    # HTML is rendered by test_render and test_report on smaller runs
    formats = (("--markdown", "md"), ("--html", "html"), ("--latex", "tex"))
    for fmt, suffix in formats if view != "default" else formats[::2]:
        out = tmp_path / f"{view}.{suffix}"
        assert main(["report", str(paper_run), "--view", view, fmt, "-o", str(out)]) == 0, fmt
        text = out.read_text()
        words = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text).lower()
        assert not re.search(r"\bnan\b", words)
        if view == "kim-lee-2025":
            assert "Table 1" in text and "Table 2" in text and "DenseNet121" in text
            if fmt == "--html":
                assert "Figure 2" in text and "Figure 3" in text and text.count("data:image/png;base64,") >= 2
        if view == "polat-2023":
            assert "QWK" in text and (
                "remission (MES 0–1) vs active" in text or "remission (MES 0--1) vs active" in text
            )


def test_views_are_files_and_a_users_own_view_works(paper_run, tmp_path, capsys):
    assert {"default", "kim-lee-2025", "polat-2023"} <= set(view_names())
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "name: mine\ntitle: My view\nsections:\n  - {kind: summary, columns: ordinal, items: [coral]}\n"
        "  - {kind: per_class, compare: backbones, within: [corn, nosuch], metric: recall}\n"
    )
    capsys.readouterr()
    assert main(["report", str(paper_run), "--view", str(mine)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# My view") and "AMAE" in md and "| resnet50 | coral |" in md and "| corn |" not in md
    assert "per-class recall, corn" in md and "nosuch is not a formulation of this run" in md
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsections:\n  - {kind: tabel}\n")
    assert main(["report", str(paper_run), "--view", str(bad)]) == 2
    assert "Section kinds" in capsys.readouterr().err


def _constructed(path, folds=10):
    """mtl on three backbones: densenet121 beats the other two on MES 3 F1 in every fold; nothing else differs."""
    suite = Suite.model_validate(
        {
            "name": "axes",
            "dataset": {"name": "synthetic"},
            "protocol": {"kind": "grouped", "folds": folds},
            "backbones": ["resnet18", "densenet121", "resnet50"],
            "formulations": ["mtl"],
        }
    )
    store = Store(path)
    store.set_meta("protocol_hash", protocol_hash(suite))
    store.set_meta("suite", suite.model_dump(mode="json"))
    store.set_meta("n_folds", folds)
    store.set_meta("split_kind", "patient-grouped")
    store.set_meta("dataset", {"name": "constructed", "n_test": 100})
    rng = np.random.default_rng(0)
    base = {
        (m, k): 0.5 + 0.1 * rng.random(folds) for m in ("precision", "recall", "f1", "specificity") for k in range(4)
    }
    for cell in expand_cells(suite, folds):
        rows = []
        for (m, k), v in base.items():
            value = v[cell.fold] + (0.3 if cell.backbone.name == "densenet121" and k == 3 and m == "f1" else 0)
            value += 0.01 * rng.random()
            rows.append({"split": "val", "task": "mes", "metric": m, "cls": str(k), "value": value})
        for m in ("precision", "recall", "f1", "specificity"):
            rows.append(
                {
                    "split": "val",
                    "task": "mes",
                    "metric": m,
                    "cls": "macro",
                    "value": np.mean([r["value"] for r in rows if r["metric"] == m]),
                }
            )
        store.claim(
            cell.key,
            {
                "backbone": cell.backbone.name,
                "formulation": "mtl",
                "seed": 0,
                "fold": cell.fold,
                "config_hash": cell.key,
            },
        )
        store.finish(cell.key, CellResult(n_train=900, n_val=100, metrics=rows))
    return load_run(path)


def test_asterisks_on_the_figure_agree_with_the_table(tmp_path):
    run = _constructed(tmp_path / "c")
    opts = Options(correction="holm")
    png, comparisons, drawn = comparison_boxplots(run, opts, "backbones", "mtl", pairs="all")
    assert png[:4] == b"\x89PNG"
    table, pairwise = comparison_table(comparisons["f1"], run)
    in_table = {(r[0], *r[1].split(" vs "), r[4]) for r in pairwise.rows if r[4] != "—" and r[0] != "macro"}
    on_figure = {(cls, a, b, text) for cls, a, b, text in drawn["f1"]}
    # the known truth: densenet121 differs from both others on MES 3, and nothing else differs
    assert {(c, a, b) for c, a, b, _ in in_table} == {
        ("MES 3", "resnet18", "densenet121"),
        ("MES 3", "densenet121", "resnet50"),
    }
    assert on_figure == in_table
    assert all(not d for m, d in drawn.items() if m != "f1")  # the other panels: no asterisks, as in their tables
    assert all(not any(c.endswith("*") for c in row[1:]) for row in table.rows)  # pairs=all: stars per pair


def test_too_few_folds_for_significance_is_said_on_the_figure(tmp_path):
    run = _constructed(tmp_path / "c3", folds=3)
    cmp = compare(run, Options(), "backbones", "mtl", "f1", pairs="all")
    from reports.compare import figure_legend

    assert not any(cmp.stars.values()) and "NO ASTERISKS CAN BE DRAWN" in figure_legend(cmp)


def test_compare_backbones_with_one_and_with_two_backbones(make_suite, tmp_path, capsys):
    one = make_suite(name="one", formulations=["softmax", "mtl"])
    assert main(["run", str(one), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "one"), "--compare", "backbones"]) == 0
    md = capsys.readouterr().out
    assert "Only one of the backbones in this run: nothing to compare." in md
    two = make_suite(name="two", formulations=["softmax"], backbones=["tiny", "test_efficientnet"])
    assert main(["run", str(two), "--out", str(tmp_path / "two"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "two"), "--compare", "backbones", "--reference", "tiny"]) == 0
    md = capsys.readouterr().out
    table2 = md.split("## Table 2")[1].split("\n## ")[0]
    assert "| class | tiny | test_efficientnet |" in table2 and "paired comparison with tiny" in table2
    assert (
        main(
            [
                "report",
                str(tmp_path / "two"),
                "--compare",
                "backbones",
                "--pairs",
                "all",
                "--html",
                "-o",
                str(tmp_path / "two.html"),
            ]
        )
        == 0
    )
    assert "class-wise metrics — softmax" in (tmp_path / "two.html").read_text()


def test_view_names_are_data_not_code():
    for name in view_names():
        view = load_view(name)
        assert view.sections, name
