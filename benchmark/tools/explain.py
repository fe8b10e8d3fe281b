"""`bench explain`: Grad-CAM (pytorch_grad_cam) of stored best checkpoints, for every formulation and head.

The target layer is chosen per backbone family (`backbones.gradcam_target`: the last feature map of a CNN, the
last block of a ViT with its tokens put back on the patch grid) or named by the suite's `gradcam_layer`.
Multi-head models are wrapped so Grad-CAM sees one tensor: `grade` explains the predicted MES grade — its logit for
softmax, its log-probability for the hierarchical model, regression's score, and for CORAL/CORN
the decision evidence for grade k over the ordinal logits — each formulation says which scores
(`gradcam_scores`) and which column (`gradcam_class`); `primary` the active logit; the sub-heads their
higher grade.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbones import gradcam_target
from formulations import scaled_formulation

from ..data.catalogue import load_dataset
from ..data.splits import read_splits
from ..errors import BenchError, require_in_run
from ..labels import MES, Scale
from ..suite.schema import Suite
from ..train.augment import BatchMaker

GRADE_HEAD = "grade"  # the K-grade label every formulation predicts; other heads are a formulation's tasks


def target_layer(backbone: nn.Module, layer: str | None = None) -> nn.Module:
    return gradcam_target(backbone, layer)[0]


class HeadView(nn.Module):
    """One tensor per head for Grad-CAM."""

    def __init__(self, net, formulation, head):
        super().__init__()
        self.net, self.formulation, self.head = net, formulation, head

    def forward(self, x):
        out = self.net(x)
        if self.head != GRADE_HEAD:
            return out[self.head]
        return self.formulation.gradcam_scores(out)


def load_cell_model(run_dir: Path, cell, suite: Suite, size=None, stored: Suite | None = None, scale: Scale = MES):
    from ..train.cell import build_model

    ckpt = Path(run_dir) / "cells" / cell["key"] / "best.pt"
    if not ckpt.is_file():
        raise BenchError(
            f"cell {cell['backbone']} · {cell['formulation']} · fold {cell['fold']} has no checkpoint at "
            f"{ckpt}; run `bench run` on the suite again to produce it (or explain another cell)."
        )
    fcfg = next(f for f in suite.formulations if f.display == cell["formulation"])
    stored = stored or suite  # the suite as written, with its variant axes
    combo = tuple((axis, str(cell[axis])) for axis in stored.variants)  # the cell's variant of every axis
    bcfg = next(b for b in stored.backbones_for(combo) if b.name == cell["backbone"])
    options = {**fcfg.options, **fcfg.options_by_fold.get(int(cell["fold"]), {})}
    formulation = scaled_formulation(fcfg.name, options, scale)
    model, _ = build_model(bcfg.model_copy(update={"pretrained": False}), formulation, cell["seed"], size=size)
    from ..train.loop import load_checkpoint

    try:
        model.load_state_dict(load_checkpoint(ckpt, "cpu", "checkpoint"))
    except Exception as exc:
        raise BenchError(f"cell {cell['backbone']} · {cell['formulation']} · fold {cell['fold']}: {exc}") from None
    return model.eval(), formulation


def pick_images(labels, idx, per_class, seed=0, k_grades: int = MES.k):
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(k_grades):
        pool = idx[labels[idx] == k]
        chosen.append(
            np.sort(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
            if len(pool)
            else np.array([], dtype=np.int64)
        )
    return chosen


def cams(model, formulation, head, batch, device, layer: str | None = None):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.requires_grad_(True)  # a frozen (linear-probe) backbone too: Grad-CAM needs gradients at its layers
    view = HeadView(model, formulation, head).to(device)
    with torch.no_grad():
        out = model(batch)
        pred = formulation.decode(out).pred
    if head == GRADE_HEAD:
        category = formulation.gradcam_class(pred)
    else:  # a task head: its last class (the more severe one), e.g. 'active' for remission-vs-active
        category = [len(formulation.tasks[head].classes) - 1] * len(pred)
    module, reshape = gradcam_target(model.backbone, layer)
    with GradCAM(model=view, target_layers=[module], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in category])
    return maps, pred


def explain(
    run_dir,
    backbone=None,
    formulations=None,
    fold=0,
    split="val",
    per_class=2,
    head="grade",
    out=None,
    device=None,
    store=None,
):
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # labels are user text, never mathtext
    import matplotlib.pyplot as plt

    from reports.load import load_run

    from ..train.device import pick_device

    run = load_run(run_dir, store)
    suite = run.suite
    backbone = backbone or run.backbones[0]
    require_in_run("--backbone", backbone, run.backbones)
    wanted = formulations or run.formulations
    for f in wanted:
        require_in_run("--formulation", f, run.formulations)
    heads = [GRADE_HEAD] + sorted({t for f in wanted for t in run.formulation(f).tasks if t != "mes"})
    if head not in heads:
        raise BenchError(f"--head {head!r}: the formulations explained have the heads {', '.join(heads)}.")
    ds = load_dataset(suite.dataset)
    splits = read_splits(Path(run.path) / "splits.json", ds)
    if not 0 <= fold < len(splits.folds):
        raise BenchError(f"--fold {fold}: this run has folds 0..{len(splits.folds) - 1}.")
    idx = splits.folds[fold][1] if split == "val" else splits.test
    chosen = pick_images(ds.labels, idx, per_class, k_grades=run.scale.k)
    flat = np.concatenate(chosen)
    plan = pick_device(device)
    out = Path(out or Path(run.path) / "explain")
    out.mkdir(parents=True, exist_ok=True)
    rows = run.cells[(run.cells.backbone == backbone) & (run.cells.fold == fold) & (run.cells.status == "done")]
    results, written = {}, []
    for f in wanted:
        cell = rows[rows.formulation == f]
        if cell.empty:
            raise BenchError(
                f"{backbone} · {f} · fold {fold} is not a finished cell of this run; finish it with "
                "`bench run` or pick another --fold."
            )
        cell = cell.iloc[0].to_dict()
        res = run.result(cell["key"])
        seen = tuple(res.input_size) if res.input_size else tuple(ds.images.shape[1:3])
        model, formulation = load_cell_model(run.path, cell, suite, size=seen, stored=run.stored_suite, scale=run.scale)
        if head != GRADE_HEAD and head not in formulation.tasks:
            continue
        maker = BatchMaker(ds.images, np.asarray(res.norm_mean), np.asarray(res.norm_std), plan.device, res.input_size)
        model.to(plan.device)
        layer = next(b.gradcam_layer for b in suite.backbones if b.name == backbone)
        maps, pred = cams(model, formulation, head, maker.eval_batch(flat), plan.device, layer)
        h, w = ds.images.shape[1:3]
        maps = np.stack([cv2.resize(m, (w, h)) for m in maps])
        results[f] = (maps, pred)
        written.append(
            _grid(
                plt,
                ds,
                flat,
                {"pred": (maps, pred)},
                f"Grad-CAM — {backbone} · {f} · fold {fold} · {split}",
                out / f"{backbone}__{_safe(f)}__{head}.png",
                run.scale,
            )
        )
    if not results:
        raise BenchError(f"--head {head!r}: none of {wanted} has that head (only hierarchical formulations do).")
    if len(results) > 1:
        written.append(
            _grid(
                plt,
                ds,
                flat,
                results,
                f"Grad-CAM side by side — {backbone} · fold {fold} · {split} · {head}",
                out / f"{backbone}__comparison__{head}.png",
                run.scale,
            )
        )
    return written, results, flat


def _grid(plt, ds, flat, columns: dict, title: str, path: Path, scale: Scale) -> Path:
    """Rows = images (true grade on the left), one overlay column per entry of `columns` (label -> maps, preds)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    fig, axes = plt.subplots(
        len(flat),
        len(columns) + 1,
        figsize=(2.2 * (len(columns) + 1), 2.1 * len(flat)),
        squeeze=False,
        layout="constrained",
    )
    for r, i in enumerate(flat):
        img = np.asarray(ds.images[i], dtype=np.float32) / 255
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"true {scale.classes[ds.labels[i]]}", fontsize=8)
        for c, (label, (maps, pred)) in enumerate(columns.items(), start=1):
            axes[r, c].imshow(show_cam_on_image(img, maps[r], use_rgb=True))
            # the predicted grade by its name, as the true grade is shown (a task head's map explains that head)
            grade = scale.classes[int(pred[r])]
            caption = f"pred {grade}" if label == "pred" else f"{label}: pred {grade}"
            axes[r, c].set_title(caption, fontsize=7)
        for a in axes[r]:
            a.axis("off")
    fig.suptitle(title, fontsize=10)
    # the title travels in the PNG itself, so a report shows it rather than the file name
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Title": title})
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight", metadata={"Title": title})
    plt.close(fig)
    return path


def _safe(name):
    return "".join(c if c.isalnum() or c in "-+_." else "_" for c in name)
