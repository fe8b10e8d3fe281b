"""Ablation axes: `variants:` multiplies the grid, each variant's overrides enter only its own cells' keys,
`--only AXIS=VARIANT` selects, and `bench report --compare AXIS` puts the variants of an axis side by side."""

import re

import pytest

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.suite.cells import expand_cells, unique_cells
from benchmark.suite.loading import load_suite

LR = {"lr": {"low": {"training.lr": 0.001}, "high": {"training.lr": 0.004}}}


def first_summary_line(err: str) -> str:
    return next(line for line in err.splitlines() if re.search(r"\d+ trained", line))


def test_two_variants_double_the_grid_and_only_selects_one(make_suite, tmp_path, capsys):
    path = make_suite(name="lr", formulations=["softmax", "coral"], variants=LR)
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert first_summary_line(capsys.readouterr().err).startswith("8 trained")
    assert main(["run", str(path), "--out", str(tmp_path / "b"), "--quiet", "--only", "lr=low"]) == 0
    assert first_summary_line(capsys.readouterr().err).startswith("4 trained")
    # the variants' settings reached the cells: each cell's learning-rate history starts at its variant's lr
    from reports.load import load_run

    run = load_run(tmp_path / "a")
    for r in run.cells.itertuples():
        lr = run.result(r.key).history[0]["lr"]
        assert lr == pytest.approx({"low": 0.001, "high": 0.004}[r.lr])
        assert r.formulation.endswith(f"[lr={r.lr}]")
    # the report compares the variants of the axis, naming both, in every format
    for fmt in ("--markdown", "--latex", "--html"):
        out = tmp_path / f"r{fmt}"
        assert main(["report", str(tmp_path / "a"), "--compare", "lr", fmt, "-o", str(out)]) == 0
        text = out.read_text()
        assert "softmax[lr=low]" in text and "softmax[lr=high]" in text
        assert "ablation axis" in text
    assert main(["report", str(tmp_path / "a"), "--compare", "learning-rate"]) == 2
    assert "not an axis of this run" in capsys.readouterr().err


def test_keys_a_suite_without_variants_and_an_empty_variant_share(make_suite):
    plain = load_suite(make_suite(name="k", formulations=["softmax", "mtl+f1"]))
    axes = {
        "augment": {"study": {}, "slow": {"training.lr": 0.0005}},
        "w": {"none": {}, "cb": {"training.class_weights": "effective_number"}},
    }
    varied = load_suite(make_suite(name="k", formulations=["softmax", "mtl+f1"], variants=axes))
    base = {c.key for c in expand_cells(plain, 2)}
    cells = expand_cells(varied, 2)
    by_combo = {}
    for c in cells:
        by_combo.setdefault(dict(c.variant)["augment"] + "/" + dict(c.variant)["w"], set()).add(c.key)
    assert by_combo["study/none"] == base  # the suite's own settings: the very cells a suite without axes has
    assert len({frozenset(v) for v in by_combo.values()}) == 4 and all(
        not (v & base) for k, v in by_combo.items() if k != "study/none"
    )
    # a fine-tuned formulation depends on the stage 1 of its own variant
    for c in cells:
        if c.depends:
            dep = next(d for d in cells if d.key == c.depends and d.variant == c.variant)
            assert dep.training == c.training
    # variants that coincide are one cell
    twin = load_suite(make_suite(name="t", formulations=["softmax"], variants={"a": {"x": {}, "y": {}}}))
    assert len(expand_cells(twin, 2)) == 4 and len(unique_cells(expand_cells(twin, 2))) == 2


@pytest.mark.parametrize(
    ("variants", "words"),
    [
        ({"lr": {"low": {"training.lr": -1}}}, ["'lr'", "'low'", "training.lr"]),
        ({"lr": {"low": {"protocol.folds": 5}}}, ["protocol.folds", "identical protocol"]),
        ({"fold": {"a": {}}}, ["axis 'fold'", "grid's own axes"]),
        ({"s": {"one": {"training.seeds": [1, 2]}}}, ["training.seeds", "once per suite"]),
        ({"a": {"x": {"training.lr": 0.1}}, "b": {"y": {"training.lr": 0.2}}}, ["'a' and 'b' both set training.lr"]),
        ({"lr": {}}, ["has no variants"]),
        ({"lr": {"lo w": {}}}, ["plain name"]),
    ],
)
def test_a_variant_that_breaks_the_suite_is_refused_naming_axis_and_variant(make_suite, variants, words):
    path = make_suite(name="bad", formulations=["softmax"], variants=variants)
    with pytest.raises(BenchError) as err:
        load_suite(path)
    text = " ".join(str(err.value).split())
    assert str(path) in text
    for w in words:
        assert w in text, (w, text)


def test_only_names_the_axes_it_knows(make_suite, tmp_path, capsys):
    path = make_suite(name="lr2", formulations=["softmax"], variants=LR)
    assert main(["run", str(path), "--out", str(tmp_path / "c"), "--quiet", "--only", "lr=medium"]) == 2
    assert "lr=medium" in capsys.readouterr().err
