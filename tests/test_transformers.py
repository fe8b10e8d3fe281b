"""Transformers and foundation-model encoders as backbones: built at the images' own size (timm's `img_size`),
explained by Grad-CAM on their patch grid, frozen or with layer-wise lr decay, and refused before training when a
size cannot work. Randomly initialised real timm models; nothing is downloaded."""

import numpy as np
import pytest
import timm
import torch

from backbones import create_backbone, gradcam_target, model_cost
from benchmark.cli import main
from benchmark.suite.cells import expand_cells
from benchmark.suite.loading import load_suite
from benchmark.suite.schema import BackboneConfig, stable_hash

FAMILIES = ["vit_small_patch16_224", "swin_tiny_patch4_window7_224", "vit_small_patch14_dinov2", "test_convnext"]


def _suite(make_suite, size, backbones, **kw):
    return make_suite(
        name="tf",
        dataset={"name": "synthetic", "params": {"n_images": 96, "n_patients": 24, "size": list(size), "seed": 1}},
        protocol={"kind": "grouped", "folds": 2, "seed": 0, "test_fraction": 0.34},
        training={"epochs": 1, "lr": 0.0005, "batch_size": 16},
        backbones=backbones,
        **kw,
    )


def test_every_family_trains_evaluates_and_explains_at_the_images_size(make_suite, tmp_path, capsys):
    """At a size none of them was made for, and not square (a 6 × 5 grid of 16-pixel patches)."""
    from benchmark.tools.explain import explain

    size = (96, 80)

    suite = _suite(make_suite, size, FAMILIES)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    seen = capsys.readouterr()
    assert "4 trained, 0 already done, 0 failed" in " ".join((seen.out + seen.err).split())
    for name in FAMILIES:
        _, results, flat = explain(out, backbone=name, per_class=1, out=tmp_path / "cam")
        maps, pred = results["softmax"]
        assert maps.shape == (len(flat), *size), name
        assert all(m.std() > 0 for m in maps), f"{name}: a constant heatmap"
        assert (tmp_path / "cam" / f"{name}__softmax__grade.png").is_file()
    capsys.readouterr()
    assert main(["report", str(out), "--markdown"]) == 0
    table7 = capsys.readouterr().out.split("## Table 7")[1]
    vit = next(line for line in table7.splitlines() if line.startswith("| vit_small_patch16_224 "))
    # ViT-S/16: 21.67 M parameters (+ the head); FLOPs scale with the number of patch tokens
    assert vit.split("|")[3].strip().startswith("21.6")


def test_tokens_go_back_to_their_patch_on_the_grid():
    vit = timm.create_model("test_vit", num_classes=0, img_size=(96, 80))  # a 6 × 5 grid of 16-pixel patches
    module, reshape = gradcam_target(vit)
    assert module is vit.blocks[-1].norm1
    tokens = torch.zeros(1, vit.num_prefix_tokens + 30, 3)
    tokens[0, vit.num_prefix_tokens :, 0] = torch.arange(30.0)  # token i holds i
    tokens[0, : vit.num_prefix_tokens] = -1  # the class token holds no place on the grid
    grid = reshape(tokens)
    assert grid.shape == (1, 3, 6, 5)
    for i in range(30):
        assert grid[0, 0, i // 5, i % 5] == i  # row-major, as the patch embedding flattens the image
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, img_size=(64, 96))
    module, reshape = gradcam_target(swin)
    nhwc = torch.arange(2 * 3 * 768.0).reshape(1, 2, 3, 768)
    assert torch.equal(reshape(nhwc)[0, :, 1, 2], nhwc[0, 1, 2])
    assert gradcam_target(swin, "layers.2")[0] is swin.layers[2]


def test_pretrained_position_embeddings_are_resampled_by_timm(tmp_path):
    """A state dict saved at the model's own size (160 × 160: a 10 × 10 grid) loads into the model built for
    64 × 80 images, its position embedding resampled as timm resamples it."""
    torch.manual_seed(0)
    saved = timm.create_model("test_vit", num_classes=0).state_dict()
    path = tmp_path / "test_vit.pth"
    torch.save(saved, path)
    model, _, _ = create_backbone("test_vit", pretrained=True, weights=str(path), size=(64, 80))
    pos = model.state_dict()["pos_embed"]
    assert saved["pos_embed"].shape[1] == 1 + 100 and pos.shape[1] == 1 + 4 * 5
    expected = timm.layers.resample_abs_pos_embed(saved["pos_embed"], new_size=(4, 5), num_prefix_tokens=1)
    assert torch.allclose(pos, expected)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_a_size_a_backbone_cannot_take_is_refused_before_training_with_the_fix(make_suite, tmp_path, capsys):
    suite = _suite(make_suite, (96, 80), ["tiny", "test_maxvit"])  # MaxViT's windows need multiples of 32
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Backbone 'test_maxvit' cannot take images of the dataset's own size 96×80" in err
    assert "`input_size: [96, 96]`" in err and "`input_size: model`" in err and "Traceback" not in err
    assert not (out / "cells").exists() or not any((out / "cells").iterdir())
    fixed = _suite(make_suite, (96, 80), [{"name": "test_maxvit", "input_size": [96, 96]}])
    assert main(["run", str(fixed), "--out", str(tmp_path / "fixed"), "--quiet", "--only", "fold=0"]) == 0


def test_input_size_model_resizes_to_the_weights_size_and_native_builds_for_the_images(make_suite, tmp_path):
    suite = _suite(make_suite, (64, 80), [{"name": "test_vit", "input_size": "model"}, "test_vit2"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    from reports.load import load_run

    run = load_run(out)
    sizes = {r.backbone: run.result(r.key).input_size for r in run.cells.itertuples() if r.status == "done"}
    assert sizes == {"test_vit": [160, 160], "test_vit2": None}  # timm's pretrained_cfg: 3 × 160 × 160


def test_normalise_pretrained_uses_the_weights_mean_and_std(make_suite, tmp_path):
    suite = _suite(make_suite, (64, 64), [{"name": "test_vit", "normalise": "pretrained"}, "test_vit2"])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    from reports.load import load_run

    run = load_run(out)
    res = {r.backbone: run.result(r.key) for r in run.cells.itertuples() if r.status == "done"}
    cfg = timm.models.get_pretrained_cfg("test_vit").to_dict()
    assert np.allclose(res["test_vit"].norm_mean, cfg["mean"]) and np.allclose(res["test_vit"].norm_std, cfg["std"])
    assert not np.allclose(res["test_vit2"].norm_mean, cfg["mean"])  # the fold's own statistics


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics(make_suite, tmp_path):
    from benchmark.train.cell import build_model
    from formulations import create_formulation

    suite = _suite(make_suite, (64, 64), [{"name": "tiny", "freeze": "all"}])
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    trained = torch.load(next((out / "cells").glob("*/best.pt")), weights_only=True)
    initial, _ = build_model(BackboneConfig(name="tiny"), create_formulation("softmax", {}), seed=0)
    start = initial.state_dict()
    backbone = [k for k in start if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)  # test_resnet has batch norm: its statistics stay too
    assert all(torch.equal(trained[k], start[k]) for k in backbone)
    assert not all(torch.equal(trained[k], start[k]) for k in start if k.startswith("head."))


def test_layer_wise_decay_scales_each_layer_by_its_depth(make_suite, tmp_path):
    suite = _suite(make_suite, (64, 64), [{"name": "test_vit", "lr_decay": 0.5}], training__keep="last")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    ckpt = torch.load(next((out / "cells").glob("*/last.pt")), weights_only=False)
    lrs = sorted({g["lr"] for g in ckpt["optimizer"]["param_groups"]})
    depth = len(timm.create_model("test_vit").blocks)  # 6: the patch embedding is layer 0, block i layer i + 1
    # ReduceLROnPlateau has not fired after one epoch: the lrs are lr · 0.5^(depth − layer), the head at lr
    assert lrs == pytest.approx([0.0005 * 0.5**k for k in range(depth, -1, -1)])


def test_flops_per_image_match_the_published_count():
    """ResNet-18 at 224 × 224: 1.82 G multiply-adds (torchvision's and timm's model cards), 11.69 M parameters
    with its classifier (11.18 M without)."""
    model = timm.create_model("resnet18", num_classes=0)
    cost = model_cost(model, (224, 224))
    assert cost["flops_per_image"] == pytest.approx(2 * 1.8136e9, rel=0.01)
    assert cost["params"] == 11_176_512


def test_new_backbone_fields_leave_old_cell_keys_unchanged(tmp_path):
    """A suite that sets none of the new fields keeps the keys its cells had (the backbone as it was dumped)."""
    from conftest import tiny_suite

    suite = load_suite(tiny_suite(tmp_path))
    cell = expand_cells(suite, 2)[0]
    old_backbone = {"name": "tiny", "batch_size": None, "pretrained": False, "weights": None, "input_size": None}
    # the training fields these keys were made with: checkpoint_every, class_weights(_beta), augment are newer
    training = suite.training.model_dump(
        mode="json", exclude={"checkpoint_every", "class_weights", "class_weights_beta", "augment"}
    )
    training.pop("seeds")
    from benchmark.suite.cells import _formulation_key, protocol_hash

    doc = {
        "protocol": protocol_hash(suite),
        "training": training,
        "backbone": old_backbone,
        "formulation": _formulation_key(cell.formulation, cell.fold),
        "fold": cell.fold,
        "seed": cell.seed,
    }
    assert cell.key == stable_hash(doc, 16)
    frozen = suite.model_copy(update={"backbones": [BackboneConfig(name="tiny", freeze="all")]})
    assert expand_cells(frozen, 2)[0].key != cell.key
    explained = suite.model_copy(update={"backbones": [BackboneConfig(name="tiny", gradcam_layer="stages.3")]})
    assert expand_cells(explained, 2)[0].key == cell.key
