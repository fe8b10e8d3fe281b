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
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--quiet", "--only", "lr=low"]) == 0
    assert first_summary_line(capsys.readouterr().err).startswith("4 trained")
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--quiet"]) == 0  # the other variant's four
    assert first_summary_line(capsys.readouterr().err).startswith("4 trained")
    # the variants' settings reached the cells: each cell's learning-rate history starts at its variant's lr
    from reports.load import load_run

    run = load_run(tmp_path / "a")
    for r in run.cells.itertuples():
        lr = run.result(r.key).history[0]["lr"]
        assert lr == pytest.approx({"low": 0.001, "high": 0.004}[r.lr])
        assert r.formulation.endswith(f"[lr={r.lr}]")
    # the report compares the variants of the axis, naming both, in the text formats (HTML of an axis: the shipped
    # ablation suite's test below)
    for fmt in ("--markdown", "--latex"):
        out = tmp_path / f"r{fmt}"
        assert main(["report", str(tmp_path / "a"), "--compare", "lr", fmt, "-o", str(out)]) == 0
        text = out.read_text()
        assert "softmax[lr=low]" in text and "softmax[lr=high]" in text
        assert "ablation axis" in text
    # along the axis, every comparison is between a row and its own variant pair, and the words say so
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), "--compare", "lr", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "formulations within backbone" not in md and "Compared: the lr variants of coral, within backbone" in md
    table5 = md.split("## Table 5 ")[1].split("\n## ")[0]
    rows = {r.split(" | ")[1]: r for r in table5.splitlines() if r.startswith("| tiny")}
    # (the suite file lists the variants high, low: the first is the reference)
    for ref in ("softmax[lr=high]", "coral[lr=high]"):
        assert "| reference | reference |" in rows[ref]
    assert "reference" not in rows["coral[lr=low]"]  # coral against coral[lr=high], never against softmax
    assert "Δ accuracy vs its lr reference" in table5 and "variant 'high' of its own formulation" in table5
    table6 = md.split("## Table 6")[1].split("\n## ")[0]
    assert "at least three variants" in table6 and "has 2 (high, low)" in table6
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
    # variants of one axis that coincide would be one cell compared with itself as two rows: refused at load
    with pytest.raises(BenchError, match="train with the same settings"):
        load_suite(make_suite(name="t", formulations=["softmax"], variants={"a": {"x": {}, "y": {}}}))
    assert len(unique_cells(cells)) == len(cells)


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


def test_backbone_settings_are_variant_fields_and_reach_the_cells(make_suite, tmp_path):
    """`backbone.input_size` / `backbone.freeze` in a variant: every backbone of its cells is built so, the keys
    differ only for those cells, and a variant cannot swap the model itself."""
    from benchmark.run.store import Store

    axis = {"native": {}, "small": {"backbone.input_size": [24, 24]}, "probe": {"backbone.freeze": "all"}}
    path = make_suite(name="bbvar", variants={"build": axis})
    suite = load_suite(path)
    cells = [c for c in expand_cells(suite, 2) if c.fold == 0]
    by = {dict(c.variant)["build"]: c for c in cells}
    assert by["small"].backbone.input_size == (24, 24) and by["probe"].backbone.freeze == "all"
    assert by["native"].backbone == suite.backbones[0] and len({c.key for c in cells}) == 3
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    store = Store(out, create=False)
    sizes = {r["key"]: store.result(r["key"]).input_size for r in store.cell_rows()}
    assert list(sizes[by["small"].key]) == [24, 24] and sizes[by["native"].key] in (None, [32, 32], (32, 32))
    with pytest.raises(BenchError) as exc:
        load_suite(make_suite(name="bbname", variants={"b": {"x": {"backbone.name": "resnet50"}}}))
    assert "backbone.name" in str(exc.value) and "grid's own axis" in str(exc.value)
    with pytest.raises(BenchError) as exc:
        load_suite(make_suite(name="bbsize", variants={"b": {"x": {"backbone.input_size": [4, 4]}}}))
    assert "backbone.input_size" in str(exc.value) and "'x'" in str(exc.value)


def test_the_shipped_synthetic_ablation_suite_runs_and_compares_along_both_axes(tmp_path, capsys):
    """suites/ablations-smoke.yaml end to end (one fold, on smaller images for CI's time): every recipe ×
    weighting trains, `--only augment=none` selects that recipe's cells, and `--compare augment` / `--compare
    weighting` name the axis's reference."""
    out = tmp_path / "abl"
    small = ["--set", "dataset.params.size=[32, 32]", "--set", "dataset.params.n_images=240", "--set",
             "training.epochs=2", "--quiet", "--only", "fold=0"]  # fmt: skip
    assert main(["run", "suites/ablations-smoke.yaml", "--out", str(out), *small, "--only", "augment=none"]) == 0
    assert first_summary_line(capsys.readouterr().err).startswith("4 trained")  # 2 formulations × 2 weightings
    assert main(["run", "suites/ablations-smoke.yaml", "--out", str(out), *small]) == 0
    assert first_summary_line(capsys.readouterr().err).startswith("16 trained")  # the other 4 recipes × 2 × 2
    for axis in ("augment", "weighting"):
        # HTML draws every figure (PNG and PDF) of 20 rows: once, for one axis, is the format's check here
        for fmt in ("--markdown", "--latex", "--html") if axis == "augment" else ("--markdown", "--latex"):
            path = tmp_path / f"{axis}{fmt}"
            assert main(["report", str(out), "--compare", axis, fmt, "-o", str(path)]) == 0
            text = path.read_text()
            assert "mtl[augment=study,weighting=none]" in text, (axis, fmt)
            assert re.search(rf"ablation axis (&#x27;|&#39;|'){axis}", text), (axis, fmt)
    md = (tmp_path / "augment--markdown").read_text()
    assert "paired comparison with softmax[augment=study,weighting=none]" in md
    assert "softmax[augment=cutmix,weighting=none]" in md
    # Table 6 along the axis: the recipes ranked within every setting held fixed, checked against scipy's Friedman
    # test on the stored macro-F1 values arranged by hand (blocks = formulation × weighting, columns = recipes)
    from scipy.stats import friedmanchisquare

    from benchmark.run.store import Store

    store = Store(out, create=False)
    m = store.metrics_frame()
    f1 = m[(m.split == "val") & (m.task == "mes") & (m.metric == "f1") & (m.cls == "macro")].set_index("key").value
    recipes = ["study", "none", "no-rotation", "colour", "cutmix"]
    blocks = []
    every = expand_cells(load_suite("suites/ablations-smoke.yaml", small[1:6:2]), 2)
    for form in ("softmax", "mtl"):
        for weighting in ("none", "effective-number"):
            row = []
            for recipe in recipes:
                keys = [
                    c.key
                    for c in every
                    if c.fold == 0 and c.formulation.display == form and dict(c.variant) == {
                        "augment": recipe, "weighting": weighting}
                ]  # fmt: skip
                row.append(f1[keys[0]])
            blocks.append(row)
    chi2 = friedmanchisquare(*zip(*blocks)).statistic
    assert "Table 6 — Friedman / Nemenyi ranking of the augment variants" in md
    assert f"Friedman χ² = {chi2:.3f}" in md and "the 4 settings the augment variants share" in md
    # a view names the axis: its Friedman section ranks the recipes, its comparison compares them
    view = tmp_path / "recipes.yaml"
    view.write_text(
        "name: recipes\nsections:\n  - {kind: friedman, compare: augment}\n  - {kind: friedman, compare: weighting}\n"
    )
    assert main(["report", str(out), "--view", str(view), "--markdown", "-o", str(tmp_path / "view.md")]) == 0
    text = (tmp_path / "view.md").read_text()
    assert "ranking of the augment variants" in text and "ranking of the formulations" not in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsections:\n  - {kind: friedman, compare: augmnet}\n")
    assert main(["report", str(out), "--view", str(bad), "--markdown", "-o", str(tmp_path / "bad.md")]) == 2
