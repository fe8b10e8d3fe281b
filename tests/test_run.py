"""`bench run` end to end on tiny synthetic suites (in-process, CPU)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from benchmark.cli import main
from benchmark.run.runner import Runner
from benchmark.run.store import Store
from benchmark.suite.loading import load_suite
from benchmark.suite.schema import BackboneConfig
from benchmark.train.cell import build_model
from benchmark.train.loop import _epoch_order
from formulations import FORMULATIONS, create_formulation
from formulations.base import Formulation


def metrics_of(out):
    m = Store(out, create=False).metrics_frame()
    rows = {r["key"]: r for r in Store(out, create=False).cell_rows()}
    m["cell"] = [f"{rows[k]['formulation']}/{rows[k]['fold']}" for k in m.key]
    return m.drop(columns="key").sort_values(["cell", "split", "task", "metric", "cls"]).reset_index(drop=True)


def test_run_stores_every_cell_and_second_run_trains_nothing(make_suite, tmp_path, capsys):
    suite = make_suite(formulations=["softmax", "regression", "mtl"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "softmax" in printed and "mtl" in printed and "6 of 6 cells finished" in printed
    store = Store(out, create=False)
    before = {r["key"]: (r["finished"], r["attempts"]) for r in store.cell_rows()}
    assert len(before) == 6 and all(r["status"] == "done" for r in store.cell_rows())
    preds = store.predictions_frame()
    assert set(preds.split) == {"val", "test"}
    for key in before:
        res = store.result(key)
        mine = preds[preds.key == key]
        assert (mine.split == "val").sum() == res.n_val and (mine.split == "test").sum() == res.n_test
    runner = Runner(load_suite(suite), out)
    report = runner.run()
    assert report.trained == [] and len(report.skipped) == 6
    assert {r["key"]: (r["finished"], r["attempts"]) for r in store.cell_rows()} == before
    assert (out / "splits.json").exists() and (out / "suite.yaml").exists()


def test_two_identical_cpu_runs_give_identical_metrics(make_suite, tmp_path):
    suite = make_suite(formulations=["softmax", "coral"])
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(suite), "--out", str(a), "--quiet"]) == 0
    assert main(["run", str(suite), "--out", str(b), "--quiet"]) == 0
    pd.testing.assert_frame_equal(metrics_of(a), metrics_of(b))
    pa = Store(a, create=False).predictions_frame().drop(columns="key")
    pb = Store(b, create=False).predictions_frame().drop(columns="key")
    pd.testing.assert_frame_equal(
        pa.sort_values(["split", "image_id", "p0"]).reset_index(drop=True),
        pb.sort_values(["split", "image_id", "p0"]).reset_index(drop=True),
    )


def test_same_seed_same_initial_backbone_and_data_order_for_every_formulation():
    bb = BackboneConfig(name="tiny")
    a, _ = build_model(bb, create_formulation("softmax"), seed=5)
    b, _ = build_model(bb, create_formulation("mtl"), seed=5)
    c, _ = build_model(bb, create_formulation("softmax"), seed=6)
    sa, sb, sc = a.backbone.state_dict(), b.backbone.state_dict(), c.backbone.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    labels = np.arange(50) % 4
    o1, d1 = _epoch_order(50, labels, 5, 3, "none")
    o2, d2 = _epoch_order(50, labels, 5, 3, "none")
    assert np.array_equal(o1, o2) and torch.equal(d1.angles, d2.angles) and torch.equal(d1.flips, d2.flips)
    assert not np.array_equal(o1, _epoch_order(50, labels, 5, 4, "none")[0])


def test_finetune_starts_from_stage1_weights_and_never_retrains_it(make_suite, tmp_path):
    out = tmp_path / "ft"
    first = make_suite(name="ft", formulations=["mtl"])
    assert main(["run", str(first), "--out", str(out), "--quiet"]) == 0
    store = Store(out, create=False)
    stage1 = {r["key"]: r["finished"] for r in store.cell_rows()}
    # lr 0: Adam changes no parameter, so the fine-tuned best parameters must equal the stage-1 ones exactly
    # (batch-norm running statistics are buffers and still move in train mode)
    second = make_suite(name="ft", formulations=["mtl", {"name": "mtl+f1", "finetune_options": {"lr": 0.0}}])
    assert main(["run", str(second), "--out", str(out), "--quiet"]) == 0
    rows = store.cell_rows()
    assert {r["key"]: r["finished"] for r in rows if r["key"] in stage1} == stage1
    ft = [r for r in rows if r["formulation"] == "mtl+f1"]
    assert len(ft) == 2
    for r in ft:
        res = store.result(r["key"])
        assert res.stage1_key in stage1
        s1 = torch.load(out / "cells" / res.stage1_key / "best.pt", weights_only=True)
        s2 = torch.load(out / "cells" / r["key"] / "best.pt", weights_only=True)
        model, _ = build_model(BackboneConfig(name="tiny"), create_formulation("mtl"), seed=0)
        params = [name for name, _ in model.named_parameters()]
        assert params and all(torch.equal(s1[k], s2[k]) for k in params)
        fresh = model.state_dict()
        assert not all(torch.equal(fresh[k], s2[k]) for k in params)  # i.e. not a fresh initialisation
        w = res.class_weights
        assert set(w) == {"primary", "remission", "active"}
        assert np.mean(w["primary"]) == pytest.approx(1.0)


def test_finetune_alone_trains_its_stage1_cell_as_a_dependency(make_suite, tmp_path):
    out = tmp_path / "dep"
    suite = make_suite(name="dep", formulations=["softmax+f1"])
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    rows = Store(out, create=False).cell_rows()
    assert sorted(r["formulation"] for r in rows) == ["softmax", "softmax", "softmax+f1", "softmax+f1"]


class Toy(Formulation):
    """One file's worth of formulation, defined in a test: nothing else in the code base knows it."""

    name = "toy_binary_ce"
    description = "test-only: one-vs-rest BCE"
    output_names = ("s0", "s1", "s2", "s3")

    def head(self, d):
        return nn.Linear(d, 4)

    def loss(self, out, y, weights=None):
        return nn.functional.binary_cross_entropy_with_logits(out, nn.functional.one_hot(y, 4).float())

    def outputs(self, out):
        return torch.sigmoid(out.float())

    def predict(self, outputs, state):
        return outputs.argmax(1)


def test_a_formulation_defined_in_one_place_trains_reports_ensembles_and_explains(
    make_suite, tmp_path, capsys, monkeypatch
):
    from benchmark.tools.explain import explain

    monkeypatch.setitem(FORMULATIONS, Toy.name, Toy)  # the one registration
    suite = make_suite(name="toy", formulations=["softmax", "toy_binary_ce", "toy_binary_ce+f1"], protocol__folds=2)
    out = tmp_path / "toy"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    rows = Store(out, create=False).cell_rows()
    assert sorted(r["formulation"] for r in rows).count("toy_binary_ce") == 2
    assert all(r["status"] == "done" for r in rows)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    md = capsys.readouterr().out
    table5 = md.split("## Table 5")[1]
    assert "| tiny | toy_binary_ce | 2 |" in table5  # ensembled by its own (default) rule
    assert "toy_binary_ce → toy_binary_ce+f1" in md  # fine-tuned and in Table 4
    written, results, _ = explain(out, formulations=["toy_binary_ce"], per_class=1, out=tmp_path / "cam")
    maps, _ = results["toy_binary_ce"]
    assert written and maps.shape[0] == 4 and maps.min() >= 0 and maps.max() <= 1


def test_smoke_suites_list_every_registered_formulation():
    suite = load_suite("suites/smoke.yaml")
    names = {f.name for f in suite.formulations}
    for other in ("suites/ordinal-smoke.yaml", "suites/imbalance-smoke.yaml"):
        names |= {f.name for f in load_suite(other).formulations}
    assert names >= set(FORMULATIONS)
    finetuned = [f.display for f in suite.formulations if f.finetune]
    assert "mtl+f1" in finetuned and len(finetuned) >= 2


def test_bench_list_names_backbones_formulations_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "densenet121", "inception_v3", "mobilenetv3_large_100", "tiny", "299×299"):
        assert name in out
    for name in FORMULATIONS:
        assert name in out
    for name in ("synthetic", "folder", "manifest", "limuc"):
        assert name in out
