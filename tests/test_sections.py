"""Report sections are plugins: one file each under reports/sections/, found by name, ordered by a view; a section
defined outside the package (here, in this module) renders without editing it; and the shipped views' Markdown is
unchanged, every number and word, from the golden files in tests/golden/ (`python tests/test_sections.py --update`
rewrites them after a change that is meant to alter a report, for review in the diff)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmark.errors import BenchError
from reports.load import load_run
from reports.render import build, to_markdown
from reports.sections import SECTIONS, register_section
from reports.table import Options, Table
from reports.views import view_names

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import write_fake_run

pytestmark = pytest.mark.xdist_group("sections")  # one fake run for the module, on one worker
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
REPORTS = ROOT / "reports"


def fake_run(path: Path) -> Path:
    """Three backbones × five formulations (a fine-tuning stage among them) × 5 folds, with validation predictions:
    every section of every shipped view has something to show."""
    return write_fake_run(
        path,
        backbones=("resnet18", "densenet121", "resnet50"),
        formulations=("softmax", "regression", "coral", "mtl", "mtl+f1"),
        folds=5,
        n_val=120,
        n_test=240,
        n_patients=40,
        val_predictions=True,
        seed=7,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(fake_run(tmp_path_factory.mktemp("sections") / "run"))


def cases() -> dict[str, dict]:
    """Each shipped view, and the default one with the Bayesian tables and along the other axis on the test split."""
    out = {view: {"view": view} for view in view_names()}
    out["default-bayes"] = {"test": "bayes", "explicit": frozenset({"test"})}
    out["default-backbones-test"] = {"split": "test", "compare": "backbones", "pairs": "all"}
    return out


def golden_markdown(run, case: str) -> str:
    return to_markdown(build(run, Options(**cases()[case])))


@pytest.mark.parametrize("case", list(cases()))
def test_each_shipped_view_renders_as_its_golden_markdown(run, case):
    """Every word and every whole number as written; each decimal within one unit of its last printed digit, since
    another release of scipy or numpy may round a p-value or a bootstrap bound the other way (here, with the versions
    that wrote the files, the text is identical: tests/golden/ was written by the code before the sections moved)."""
    got, expected = golden_markdown(run, case), (GOLDEN / f"{case}.md").read_text()
    words, numbers = _split_decimals(got), _split_decimals(expected)
    hint = "`python tests/test_sections.py --update` after a change meant to alter the report"
    assert words[0] == numbers[0], hint
    for (a, digits), (b, _) in zip(words[1], numbers[1]):
        assert abs(a - b) <= 1.0001 * 10**-digits, (a, b, hint)


def _split_decimals(text: str) -> tuple[str, list[tuple[float, int]]]:
    """The text with each decimal number replaced by a mark, and the numbers with their printed decimals."""
    import re

    found = [(float(m.group()), len(m.group().split(".")[1])) for m in re.finditer(r"\d+\.\d+", text)]
    return re.sub(r"\d+\.\d+", "#", text), found


def test_no_reports_module_is_over_500_lines_and_every_section_file_registers_one():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in REPORTS.rglob("*.py")}
    assert max(sizes.values()) <= 500, {p: n for p, n in sizes.items() if n > 500}
    modules = {s.build.__module__ for s in SECTIONS.values()}
    files = {
        f"reports.sections.{p.stem}" for p in (REPORTS / "sections").glob("*.py") if p.stem not in ("__init__", "base")
    }
    assert files <= modules  # each file is a section (or several of one family), found without an import line
    kinds = {
        s["kind"]
        for v in (REPORTS / "views").glob("*.yaml")
        for s in __import__("yaml").safe_load(v.read_text())["sections"]
    }
    assert kinds <= set(SECTIONS)


@pytest.fixture
def own_section():
    """A section of this test module's own, registered as a user's would be, and taken out again."""
    seen = {}

    @register_section("cells_per_backbone")
    def cells_per_backbone(ctx, opts, section):
        """Finished cells per backbone (a test's own section)."""
        seen["opts"] = opts
        done = ctx.run.cells[ctx.run.cells.status == "done"]
        rows = [[b, str(int((done.backbone == b).sum()))] for b in ctx.run.backbones]
        ctx.table(Table("Cells per backbone", ["backbone", "finished cells"], rows, notes=["Counted by a test."]))

    @register_section("after_cells", follows="cells_per_backbone")
    def after_cells(ctx, opts, section):
        """Shown right after cells_per_backbone where a view does not name it."""
        ctx.table(Table("After the cells", ["note"], [["follows"]]))

    @register_section("needs_test_set", needs=("test",))
    def needs_test_set(ctx, opts, section):
        """Reads the test predictions."""
        ctx.table(Table("Test images", ["images"], [[str(ctx.outputs().image_id.nunique())]]))

    yield seen
    for name in ("cells_per_backbone", "after_cells", "needs_test_set"):
        del SECTIONS[name]


def test_a_section_defined_in_a_test_module_renders_from_a_view(run, own_section, tmp_path):
    view = tmp_path / "mine.yaml"
    view.write_text(
        "name: mine\ntitle: My study\nstatistics: {test: permutation, why: a test's reason}\n"
        "sections:\n  - {kind: summary, items: [softmax]}\n  - {kind: cells_per_backbone}\n  - {kind: needs_test_set}\n"
    )
    rep = build(run, Options(view=str(view)))
    titles = [t.title for t in rep.tables]
    assert titles == ["Table 1 — cross-validation summary", "Cells per backbone", "After the cells", "Test images"]
    # its numbers, against the store read independently with pandas
    cells = pd.read_sql("SELECT backbone, status FROM cells", f"sqlite:///{run.path / 'results.db'}")
    mine = rep.tables[1]
    expected = cells[cells.status == "done"].groupby("backbone").size()
    assert {b: int(n) for b, n in mine.rows} == {b: int(expected[b]) for b in run.backbones}
    # the view's statistics reached it, and its note says so, as for a shipped section
    assert own_section["opts"].test == "permutation"
    assert mine.notes[-1].startswith("Statistics set by the view (a test's reason): exact paired permutation test")
    md = to_markdown(rep)
    assert "## Cells per backbone" in md and "Counted by a test." in md and md.index("Cells per") < md.index("After")
    # a section that needs the test set is left out of a report built without it, and named once when in the view
    assert "Test images" not in [t.title for t in build(run, Options(view=str(view)), with_test=False).tables]
    view.write_text("name: mine\nsections:\n  - {kind: after_cells, title: x}\n  - {kind: cells_per_backbone}\n")
    assert [t.title for t in build(run, Options(view=str(view))).tables] == ["After the cells", "Cells per backbone"]


def test_the_architecture_pages_worked_example_is_a_working_section(run, tmp_path):
    """The example of adding a table in ARCHITECTURE.md (the docs' architecture page), run as the file it shows."""
    import re

    code = re.search(r"```python\n(.*?)```", (ROOT / "ARCHITECTURE.md").read_text(), flags=re.S).group(1)
    code = "\n".join(line[2:] for line in code.splitlines())  # indented under its list item
    code = code.replace("from ..table", "from reports.table").replace("from .base", "from reports.sections.base")
    try:
        exec(compile(code, "ARCHITECTURE.md", "exec"), {})
        view = tmp_path / "v.yaml"
        view.write_text("name: v\nsections:\n  - {kind: cells_per_backbone}\n")
        (table,) = build(run, Options(view=str(view))).tables
        assert table.title == "Cells per backbone" and [r[0] for r in table.rows] == run.backbones
        assert {int(r[1]) for r in table.rows} == {len(run.formulations) * 5}  # every formulation × 5 folds
    finally:
        if SECTIONS.get("cells_per_backbone"):
            del SECTIONS["cells_per_backbone"]


def test_figures_drawn_by_forked_workers_are_the_bytes_drawn_in_process(run, tmp_path, monkeypatch):
    from reports import render

    view = tmp_path / "figs.yaml"
    view.write_text(
        "name: figs\nsections:\n  - {kind: figure_confusion}\n  - {kind: figure_cd}\n  - {kind: figure_scores}\n"
    )
    rep = build(run, Options(view=str(view)))
    one = render.render_figures(rep, workers=1)
    two = render.render_figures(rep, pdf=True, workers=2)
    assert list(one) == list(two) and len(one) == len(run.backbones) + 2
    assert all(one[name] == two[name] for name in one)  # the same PNG bytes, figure by figure
    assert all(two[name].pdf.startswith(b"%PDF") for name in two)  # and the PDFs came back with them
    # they ran in the children, not here; and a figure kept for the Python API is drawn here
    pid = str(os.getpid()).encode()
    ours = SimpleNamespace(figure_specs=[(f"f{i}", lambda: str(os.getpid()).encode()) for i in range(4)])
    assert pid not in render.render_figures(ours, workers=2).values()
    assert render.figure_workers(30, keep=True) == 1 and render.figure_workers(1) == 1


PLUGIN = '''from reports.sections import register_section
from reports.table import Table


@register_section("failed_share")
def failed_share(ctx, opts, section):
    """Share of failed cells (an installed plugin)."""
    failed = int((ctx.run.cells.status == "failed").sum())
    ctx.table(Table("Failed share", ["cells", "failed"], [[str(len(ctx.run.cells)), str(failed)]]))
'''


def test_an_installed_package_adds_a_section_the_command_line_reports(run, tmp_path):
    """Through the entry point group `mesbench.sections`, as formulations and backbones: `bench list` names it and
    where it came from, and `bench report --view` renders it — nothing of the package edited."""
    import subprocess

    site = tmp_path / "site"
    (site / "mysections").mkdir(parents=True)
    (site / "mysections" / "__init__.py").write_text(PLUGIN)
    dist = site / "mysections-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mysections\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mesbench.sections]\nfailed_share = mysections\n")
    view = tmp_path / "v.yaml"
    view.write_text("name: v\nsections:\n  - {kind: failed_share}\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True, env=env)

    listed = " ".join(bench("list").stdout.split())
    assert "failed_share" in listed and "mysections (entry point mysections)" in listed
    md = bench("report", str(run.path), "--view", str(view), "--markdown")
    assert md.returncode == 0, md.stderr
    assert f"| {len(run.cells)} | 0 |" in md.stdout.split("## Failed share")[1]


def test_a_view_naming_an_unregistered_section_is_refused_with_the_kinds(run, tmp_path):
    view = tmp_path / "typo.yaml"
    view.write_text("name: typo\nsections:\n  - {kind: summray}\n")
    with pytest.raises(BenchError) as err:
        build(run, Options(view=str(view)))
    text = str(err.value)
    assert str(view) in text and "'summray' is not a report section" in text
    assert all(kind in text for kind in SECTIONS) and "\n" not in text


def test_a_section_name_cannot_be_registered_twice_by_another_function():
    with pytest.raises(BenchError, match="registered twice"):
        register_section("summary")(lambda ctx, opts, section: None)
    with pytest.raises(ValueError, match="needs"):
        register_section("x", needs=("gpu",))


def update() -> None:
    """Rewrite tests/golden/<case>.md from the current code."""
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_run(fake_run(Path(tmp) / "run"))
        for case in cases():
            (GOLDEN / f"{case}.md").write_text(golden_markdown(loaded, case))
            print("wrote", GOLDEN / f"{case}.md")


if __name__ == "__main__" and "--update" in sys.argv:
    update()
