"""One cell: train a backbone + formulation head on one fold, keep the best epoch, evaluate it.

The protocol is the study's: Adam, ReduceLROnPlateau on the monitored value, early stopping, the
checkpoint of the best monitored epoch is the one evaluated. Data order and augmentation draws come
from a generator seeded by (seed, epoch) only, so every formulation sees the same batches; the
backbone is initialised under the seed before the head, so it starts from the same weights too.
Every epoch is checkpointed atomically, so a killed cell resumes from its last finished epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
from torch import nn

from backbones import create_backbone
from formulations import Formulation

from .augment import BatchMaker, draw_params
from .config import BackboneConfig, TrainingConfig
from .device import DevicePlan
from .errors import CellFailed, Interrupted


class Net(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def build_model(backbone_cfg: BackboneConfig, formulation: Formulation, seed: int):
    torch.manual_seed(seed)
    backbone, d, input_size = create_backbone(backbone_cfg.name, backbone_cfg.pretrained, backbone_cfg.weights)
    torch.manual_seed(seed + 7919)
    head = formulation.head(d)
    return Net(backbone, head), input_size


@dataclass
class CellData:
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclass
class CellOutcome:
    history: list[dict]
    best_epoch: int
    predictions: dict[str, dict]  # split -> {ids, y, pred, proba, score, task_preds}
    counters: dict[str, dict]
    state: dict
    timings: dict
    stopped_early: bool


@dataclass
class Schedule:
    epochs: int
    lr: float
    batch_size: int
    class_weights: dict[str, torch.Tensor] | None = None
    init_state: dict | None = None  # stage-1 weights for fine-tuning
    on_epoch: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] = field(default=lambda: False)
    # extra per-epoch validation metric (y_true, y_pred, task_preds) -> float, stored as row["objective"]
    objective: Callable | None = None


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _epoch_order(n, labels, seed, epoch, sampler):
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sampler == "weighted":
        counts = np.bincount(labels, minlength=4).astype(float)
        w = torch.as_tensor(1.0 / np.maximum(counts[labels], 1))
        order = torch.multinomial(w, n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    angles, flips = draw_params(n, g)
    return order.numpy(), angles, flips


@torch.inference_mode()
def predict(model, formulation: Formulation, maker: BatchMaker, idx, labels, plan: DevicePlan, batch_size,
            class_weights=None):
    """Raw outputs (concatenated on CPU), mean loss and decoded predictions for dataset indices."""
    model.eval()
    outs, losses = [], []
    for start in range(0, len(idx), batch_size):
        bidx = idx[start:start + batch_size]
        x = maker.eval_batch(bidx)
        y = torch.as_tensor(labels[bidx], device=plan.device)
        with plan.autocast():
            out = model(x)
        out = {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
        losses.append(formulation.loss(out, y, class_weights) * len(bidx))
        outs.append({k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu())
    out = ({k: torch.cat([o[k] for o in outs]) for k in outs[0]} if isinstance(outs[0], dict) else torch.cat(outs))
    loss = float(torch.stack(losses).sum().cpu()) / max(len(idx), 1)
    return out, loss


def _decoded_dict(formulation, out, y):
    dec = formulation.decode(out)
    return {
        "y": y,
        "pred": dec.pred.cpu().numpy(),
        "proba": None if dec.proba is None else dec.proba.cpu().numpy(),
        "score": None if dec.score is None else dec.score.cpu().numpy(),
        "task_preds": {k: v.cpu().numpy() for k, v in dec.task_preds.items()},
        "counters": dec.counters,
    }


def train_epoch(model, formulation, maker: BatchMaker, labels, train_idx, order, angles, flips, bs, opt, scaler,
                weights, plan: DevicePlan):
    """One pass over the training part in the given order; returns (summed loss tensor, images seen).
    The loss stays on the device (no per-step .item()), so the GPU is never synchronised mid-epoch."""
    device = plan.device
    total = torch.zeros((), device=device)
    seen = 0
    for start in range(0, len(order), bs):
        pos = order[start:start + bs]
        if len(pos) < 2:  # batch norm cannot train on a single image
            continue
        bidx = train_idx[pos]
        x = maker.train_batch(bidx, angles[start:start + bs], flips[start:start + bs])
        y = torch.as_tensor(labels[bidx]).to(device, non_blocking=True)
        with plan.autocast():
            out = model(x)
        out = {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
        loss = formulation.loss(out, y, weights)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        total += loss.detach() * len(pos)
        seen += len(pos)
    return total, seen


def train_cell(model: Net, formulation: Formulation, data: CellData, cfg: TrainingConfig, sched: Schedule,
               plan: DevicePlan, seed: int, workdir: Path, input_size=None) -> CellOutcome:
    workdir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = workdir / "last.pt", workdir / "best.pt"
    device = plan.device
    maker = BatchMaker(data.images, data.mean, data.std, device, input_size)
    model.to(device, memory_format=torch.channels_last)  # fastest conv layout on CPU (oneDNN) and GPU
    if sched.init_state is not None:
        model.load_state_dict(sched.init_state)
    step_model = torch.compile(model) if cfg.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=sched.lr, weight_decay=cfg.weight_decay)
    mode = "min" if cfg.monitor == "val_loss" else "max"
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.plateau_factor,
                                                         patience=cfg.plateau_patience)
    scaler = torch.amp.GradScaler("cuda") if plan.amp_dtype == torch.float16 else None
    weights = None if sched.class_weights is None else {k: v.to(device) for k, v in sched.class_weights.items()}

    state = {"epoch": 0, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "train_seconds": 0.0}
    if last_path.exists():  # resume a killed cell from its last finished epoch
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        plateau.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]

    train_idx, y_train = data.train, data.labels[data.train]
    bs = sched.batch_size
    stopped_early = False
    while state["epoch"] < sched.epochs:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        model.train()
        order, angles, flips = _epoch_order(len(train_idx), y_train, seed, epoch, cfg.sampler)
        total, seen = train_epoch(step_model, formulation, maker, data.labels, train_idx, order, angles, flips, bs,
                                  opt, scaler, weights, plan)
        train_loss = float(total.cpu()) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise CellFailed(f"training loss became {train_loss} in epoch {epoch + 1}")
        val_out, val_loss = predict(model, formulation, maker, data.val, data.labels, plan, cfg.eval_batch_size,
                                    weights)
        if not math.isfinite(val_loss):
            raise CellFailed(f"validation loss became {val_loss} in epoch {epoch + 1}")
        y_val = data.labels[data.val]
        decoded = formulation.decode(val_out)
        pred = decoded.pred.numpy()
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": float(accuracy_score(y_val, pred)),
            "val_macro_f1": float(f1_score(y_val, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)),
            "val_qwk": float(cohen_kappa_score(y_val, pred, weights="quadratic", labels=[0, 1, 2, 3]))
            if len(set(y_val) | set(pred)) > 1 else 0.0,
            "lr": opt.param_groups[0]["lr"],
        }
        if sched.objective is not None:
            row["objective"] = float(sched.objective(y_val, pred, {k: v.numpy() for k, v in decoded.task_preds.items()}))
        value = row[cfg.monitor]
        plateau.step(value)
        improved = state["best"] is None or (value < state["best"] if mode == "min" else value > state["best"])
        if improved:
            state.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
            _atomic_save(model.state_dict(), best_path)
        else:
            state["bad_epochs"] += 1
        row["seconds"] = time.perf_counter() - t0
        state["train_seconds"] += row["seconds"]
        state["history"].append(row)
        state["epoch"] = epoch + 1
        stop = state["bad_epochs"] >= cfg.early_stopping
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": plateau.state_dict(),
                      "rng_cpu": torch.get_rng_state(), "scaler": scaler.state_dict() if scaler else None,
                      "state": state}, last_path)
        if sched.on_epoch:
            sched.on_epoch(row)
        if stop:
            stopped_early = True
            break
        if sched.should_stop():
            raise Interrupted(f"stopped after epoch {epoch + 1}")

    # Evaluate the best epoch's weights; decoding parameters are fitted on validation only.
    t0 = time.perf_counter()
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    val_out, _ = predict(model, formulation, maker, data.val, data.labels, plan, cfg.eval_batch_size)
    formulation.fit_decoding(val_out, torch.as_tensor(data.labels[data.val]))
    predictions, counters = {}, {}
    splits = [("val", data.val, val_out)] + ([("test", data.test, None)] if len(data.test) else [])
    for split, idx, out in splits:  # an empty test part (tuning) is never evaluated
        if out is None:
            out, _ = predict(model, formulation, maker, idx, data.labels, plan, cfg.eval_batch_size)
        d = _decoded_dict(formulation, out, data.labels[idx])
        d["ids"] = data.ids[idx]
        counters[split] = d.pop("counters")
        predictions[split] = d
    return CellOutcome(state["history"], state["best_epoch"], predictions, counters, dict(formulation.state),
                       {"train_seconds": state["train_seconds"], "eval_seconds": time.perf_counter() - t0,
                        "epochs": state["epoch"]}, stopped_early)
