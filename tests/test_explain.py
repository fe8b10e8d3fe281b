"""`bench explain`: Grad-CAM maps of stored checkpoints, every formulation and every head."""

import re

import numpy as np
import pytest
import timm
import torch

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.tools.explain import explain, target_layer

# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_explain")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny_suite

    tmp = tmp_path_factory.mktemp("explain")
    suite = tiny_suite(
        tmp,
        name="ex",
        formulations=["softmax", "regression", "coral", "mtl"],
        dataset={"name": "synthetic", "params": {"n_images": 240, "n_patients": 30, "size": [64, 64], "seed": 1}},
        training={"epochs": 6, "lr": 0.002},
    )
    out = tmp / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    return out


def test_grids_for_every_formulation_and_maps_are_valid(run_dir, capsys):
    assert main(["explain", str(run_dir), "--per-class", "1"]) == 0
    files = sorted(p.name for p in (run_dir / "explain").glob("*.png"))
    assert files == sorted(
        [
            "tiny__softmax__grade.png",
            "tiny__regression__grade.png",
            "tiny__coral__grade.png",
            "tiny__mtl__grade.png",
            "tiny__comparison__grade.png",
        ]
    )
    _, results, flat = explain(run_dir, per_class=1, out=run_dir / "x")
    for name, (maps, pred) in results.items():
        assert maps.shape == (len(flat), 64, 64), name
        assert maps.min() >= 0 and maps.max() <= 1, name
        assert all(m.std() > 0 for m in maps), f"{name}: a constant heatmap"
        assert set(pred.tolist()) <= {0, 1, 2, 3}
    capsys.readouterr()
    assert main(["report", str(run_dir), "--html", "-o", str(run_dir / "r.html")]) == 0
    html = (run_dir / "r.html").read_text()
    headings = re.findall(r"<h3>(.*?)</h3>", html)
    assert "Grad-CAM side by side — tiny · fold 0 · val · grade" in headings  # the figure's title ...
    assert not any("__" in h for h in headings)  # ... not its file name


def test_each_mtl_head_has_its_own_map(run_dir):
    maps = {}
    for head in ("primary", "remission", "active", "grade"):
        written, results, _ = explain(run_dir, formulations=["mtl"], head=head, per_class=1, out=run_dir / head)
        maps[head] = results["mtl"][0]
        assert written[0].name == f"tiny__mtl__{head}.png"
    heads = list(maps)
    for i, a in enumerate(heads):
        for b in heads[i + 1 :]:
            assert not np.allclose(maps[a], maps[b]), (a, b)


def test_head_that_no_formulation_has(run_dir):
    with pytest.raises(BenchError, match="have the heads grade"):
        explain(run_dir, formulations=["softmax"], head="active", out=run_dir / "none")


def test_missing_checkpoint_is_a_clear_error(run_dir, capsys):
    ckpt = next((run_dir / "cells").glob("*/best.pt"))
    moved = ckpt.with_suffix(".bak")
    ckpt.rename(moved)
    try:
        capsys.readouterr()
        assert main(["explain", str(run_dir)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "has no checkpoint" in err and "bench run" in err and "Traceback" not in err
    finally:
        moved.rename(ckpt)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenetv3_large_100", "inception_v3"])
def test_target_layer_is_the_last_spatial_map(name):
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    layer = target_layer(model)
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = output.shape  # returns None: the output is left as it is

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    handle.remove()
    assert len(seen["shape"]) == 4 and seen["shape"][-1] > 1  # spatial, before global pooling
    if name == "mobilenetv3_large_100":  # timm pools before conv_head: the map must come from the last block
        assert any(layer is m for m in model.blocks.modules())
