"""One cell, start to finish: build the model, train it on its fold, evaluate the best epoch, and return one
typed `CellResult` (metrics, predictions, history, decoding state, timings, versions).

`bench run` and `bench tune` both train through `run_cell`; the runner only schedules, claims and stores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbones import create_backbone, model_cost, optimizer_groups, pretrained_stats
from formulations import Formulation, scaled_formulation

from ..labels import MES, Scale
from ..metrics import all_rows
from ..result import CellResult, SplitPredictions
from ..suite.schema import BackboneConfig, TrainingConfig
from .device import DevicePlan, versions
from .loop import CellData, Schedule, load_checkpoint, train_cell


class Net(nn.Module):
    """Backbone + formulation head. `frozen`: a linear probe — the backbone's parameters take no gradient (so
    autograd builds no graph through it and the backward pass skips it) and it stays in eval mode (its batch
    norm statistics and dropout as pretrained)."""

    def __init__(self, backbone, head, frozen: bool = False, lr_decay: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = frozen
        self.lr_decay = lr_decay
        if frozen:
            backbone.requires_grad_(False)

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return optimizer_groups(self.backbone, self.head, lr, weight_decay, self.lr_decay)


def build_model(backbone_cfg: BackboneConfig, formulation: Formulation, seed: int, size=None):
    """The backbone is initialised under the seed before the head, so every formulation of a seed starts from
    the same backbone weights. `size`: the (H, W) the model will see (fixed-size models are built for it)."""
    torch.manual_seed(seed)
    backbone, d, input_size = create_backbone(
        backbone_cfg.name, backbone_cfg.pretrained, backbone_cfg.weights, size=size
    )
    torch.manual_seed(seed + 7919)
    head = formulation.head(d)
    return Net(backbone, head, backbone_cfg.freeze == "all", backbone_cfg.lr_decay), input_size


@dataclass
class CellSpec:
    """Everything one cell needs; the runner and the tuner fill it in."""

    backbone: BackboneConfig
    formulation: str
    options: dict
    seed: int
    data: CellData
    training: TrainingConfig
    batch_size: int
    input_size: tuple[int, int] | None
    workdir: Path
    epochs: int | None = None  # default: training.epochs
    lr: float | None = None  # default: training.lr
    # fine-tuning stage: start from a stage-1 checkpoint, optionally with per-class loss weights
    init_checkpoint: Path | None = None
    class_weights: dict[str, np.ndarray] | None = None
    finetune: str | None = None
    stage1_key: str | None = None
    stage1_f1: dict[str, list[float]] | None = None
    on_epoch: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] = field(default=lambda: False)
    objective: Callable | None = None
    scale: Scale = MES  # the run's grades: the head, loss, decoding and metrics are sized by its K


def fold_inputs(name: str, options: dict, train_labels, training: TrainingConfig, finetune=None, scale: Scale = MES):
    """What a cell takes from its fold's training labels alone: the formulation's option overrides (e.g. class
    priors) and the loss's class weights per task — stage 1's `training.class_weights`, or `drw`'s effective-number
    weights (`finetune` = the fine-tuning options of a `drw` stage). Returns (options, class weights or None)."""
    from formulations.finetune import count_weights, task_counts

    formulation = scaled_formulation(name, options, scale)
    counts = task_counts(formulation, train_labels)
    options = {**options, **formulation.training_overrides(counts)}
    if finetune is not None:
        return options, {t: count_weights(n, "effective_number", finetune.beta) for t, n in counts.items()}
    if training.class_weights != "none":
        kind, beta = training.class_weights, training.class_weights_beta
        return options, {t: count_weights(n, kind, beta) for t, n in counts.items()}
    return options, None


def run_cell(spec: CellSpec, plan: DevicePlan) -> CellResult:
    t_cell = time.perf_counter()
    cfg = spec.training
    formulation = scaled_formulation(spec.formulation, spec.options, spec.scale)
    input_size = spec.input_size  # None: the images' own size
    seen_size = tuple(input_size) if input_size else tuple(spec.data.images.shape[1:3])
    model, _ = build_model(spec.backbone, formulation, spec.seed, size=seen_size)
    data = spec.data
    if spec.backbone.normalise == "pretrained":
        mean, std = pretrained_stats(spec.backbone.name)
        data = replace(data, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    cost = model_cost(model, seen_size)
    init_state = load_checkpoint(spec.init_checkpoint, "cpu", "stage-1 checkpoint") if spec.init_checkpoint else None
    weights = (
        None
        if spec.class_weights is None
        else {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in spec.class_weights.items()}
    )
    sched = Schedule(
        spec.epochs or cfg.epochs,
        cfg.lr if spec.lr is None else spec.lr,
        spec.batch_size,
        weights,
        init_state,
        spec.on_epoch,
        spec.should_stop,
        spec.objective,
    )
    build_seconds = time.perf_counter() - t_cell
    outcome = train_cell(model, formulation, data, cfg, sched, plan, spec.seed, spec.workdir, input_size)
    outcome.timings.update(cost, build_seconds=build_seconds)
    result = CellResult(
        history=outcome.history,
        best_epoch=outcome.best_epoch,
        stopped_early=outcome.stopped_early,
        state=outcome.state,
        timings=outcome.timings,
        device=plan.description,
        device_name=plan.name,
        threads=torch.get_num_threads(),
        resumed_from=outcome.resumed_from,
        amp=plan.amp,
        deterministic=plan.deterministic,
        compiled=cfg.compile,
        versions=versions(),
        n_train=int(len(spec.data.train)),
        n_val=int(len(spec.data.val)),
        n_test=int(len(spec.data.test)),
        batch_size=spec.batch_size,
        input_size=list(input_size) if input_size else None,
        norm_mean=np.asarray(data.mean).tolist(),
        norm_std=np.asarray(data.std).tolist(),
        formulation_options=formulation.options,
        output_names=list(formulation.output_names),
        cross_fitted=formulation.fits_decoding,
        checkpoint=str(spec.workdir / "best.pt"),
        counters=outcome.counters,
        finetune=spec.finetune,
        stage1_key=spec.stage1_key,
        stage1_f1=spec.stage1_f1,
        class_weights=None
        if spec.class_weights is None
        else {k: np.asarray(v).tolist() for k, v in spec.class_weights.items()},
    )
    t_metrics = time.perf_counter()
    for split, pred in outcome.predictions.items():
        # an external test set may lack grades: their recall and F1 are absent there, not 0
        absent = split.startswith("external:")
        rows, cm = all_rows(
            pred["y"], pred["pred"], pred["task_preds"], formulation.tasks, pred["proba"], spec.scale, absent
        )
        n = max(len(pred["y"]), 1)
        rows += [("diag", k, "", float(v) / n) for k, v in outcome.counters[split].items()]
        result.metrics += [{"split": split, "task": t, "metric": m, "cls": c, "value": float(v)} for t, m, c, v in rows]
        result.confusion[split] = cm.tolist()
        result.predictions[split] = SplitPredictions(
            pred["ids"], pred["y"], pred["pred"], pred["outputs"], pred["proba"], pred["score"], pred["task_preds"]
        )
    result.timings["metrics_seconds"] = time.perf_counter() - t_metrics
    result.timings["cell_seconds"] = time.perf_counter() - t_cell
    return result
