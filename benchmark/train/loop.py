"""One cell: train a backbone + formulation head on one fold, keep the best epoch, evaluate it.

The protocol is the study's: Adam, ReduceLROnPlateau on the monitored value, early stopping, the
checkpoint of the best monitored epoch is the one evaluated. Data order and augmentation draws come
from a generator seeded by (seed, epoch) only, so every formulation sees the same batches; the
backbone is initialised under the seed before the head, so it starts from the same weights too.
Checkpoints are written atomically by a background thread (`CheckpointWriter`) every `training.checkpoint_every`
seconds of training (and at the last epoch, on early stopping and on Ctrl-C), so a killed cell resumes from its last
completed save and replays the epochs after it exactly (same batches, same augmentation draws, same RNG state).
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from formulations import Formulation

from ..errors import CellFailed, Interrupted
from ..labels import Scale
from ..metrics import monitor_values
from ..suite.schema import TrainingConfig
from .augment import BatchMaker, Draws, draw_params
from .device import DevicePlan


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
    groups: np.ndarray | None = None  # patient ids, for patient-grouped cross-fitting of fitted decoding
    grouped: bool = False
    # external test sets (name -> an object with images, labels, ids): evaluated with the best model and the
    # fold's own normalisation, like the internal test set; never seen before then
    external: dict = field(default_factory=dict)

    @classmethod
    def of(cls, dataset, train, val, test, grouped: bool, stats=None) -> CellData:
        """A cell's view of a dataset, normalised with statistics of its own training images only (`stats`: those
        statistics when the caller already has them)."""
        from .augment import channel_stats

        mean, std = stats if stats is not None else channel_stats(dataset.images, train)
        return cls(dataset.images, dataset.labels, dataset.ids, train, val, test, mean, std, dataset.groups, grouped)


@dataclass
class CellOutcome:
    history: list[dict]
    best_epoch: int
    predictions: dict[str, dict]  # split -> {ids, y, pred, proba, score, outputs, task_preds}
    counters: dict[str, dict]
    state: dict  # decoding state used for the test set (fitted on the whole validation fold where fitted)
    timings: dict
    stopped_early: bool
    resumed_from: int = 0  # the epoch of the checkpoint it resumed from (0: trained from the start)


@dataclass
class Schedule:
    epochs: int
    lr: float
    batch_size: int
    class_weights: dict[str, torch.Tensor] | None = None  # training loss only; selection is always unweighted
    init_state: dict | None = None  # stage-1 weights for fine-tuning
    on_epoch: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] = field(default=lambda: False)
    # extra per-epoch validation metric (y_true, y_pred, task_preds) -> float, stored as row["objective"]
    objective: Callable | None = None


PROGRESS_FILE = "progress.json"  # the last saved epoch of a cell still training, beside its last.pt


def atomic_save(obj, path: Path):
    """Write to a uniquely named temp file, then rename: a kill never leaves a half-written checkpoint
    under the real name, and two processes never share a temp name."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    buf = io.BytesIO()
    if path.suffix == ".json":  # a small record others read without torch (`bench status`)
        buf.write(json.dumps(obj).encode())
    else:
        torch.save(obj, buf)  # serialised in memory first: a full disk then raises OSError(ENOSPC), not a zip error
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def snapshot(obj, device: torch.device):
    """A copy of a (nested) checkpoint whose tensors no later training step can change: CPU tensors cloned; CUDA
    tensors copied without blocking into pinned host memory (torch caches pinned blocks, so repeated snapshots do
    not re-pin). Containers are copied too, since the loop keeps appending to its history."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            return host.copy_(t, non_blocking=True)
        return t.clone()
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v, device)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple takes its fields as arguments
        return type(obj)(*(snapshot(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v, device) for v in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written by one background thread, so the training loop never waits for the disk: `save`
    takes a snapshot (a device-to-host copy) and returns; the write (atomic, as `atomic_save`) runs while training
    goes on. A new save waits only for the previous write; a failed write (a full disk) is raised by the next
    `save` or by `wait`. `stall` is the time the loop spent in here: snapshots plus any wait."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stall = 0.0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, jobs: list[tuple[Any, Path]], copied: bool = False) -> None:
        """`copied`: the objects are snapshots already (nothing else holds them)."""
        t0 = time.perf_counter()
        try:
            self._join()
        finally:
            self.stall += time.perf_counter() - t0
        t0 = time.perf_counter()
        snaps = jobs if copied else [(snapshot(obj, self.device), path) for obj, path in jobs]
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._thread = threading.Thread(target=self._write, args=(snaps, event), daemon=True, name="checkpoint")
        self._thread.start()
        self.stall += time.perf_counter() - t0

    def _write(self, snaps, event) -> None:
        try:
            if event is not None:
                event.synchronize()  # the non-blocking copies have landed in host memory
            for obj, path in snaps:  # in order: best.pt before the last.pt that refers to it
                atomic_save(obj, path)
        except BaseException as exc:  # handed to the training thread, never lost in this one
            self._error = exc

    def wait(self) -> None:
        t0 = time.perf_counter()
        try:
            self._join()
        finally:
            self.stall += time.perf_counter() - t0

    def abandon(self) -> None:
        """After an error in the training thread: let an in-flight write finish (it is atomic either way) and
        drop its error, so the training error is the one reported."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def remove_stale_temp_files(workdir: Path) -> int:
    """Temp files of a killed save; only the cell's owner writes in its folder, so any left are stale."""
    n = 0
    for tmp in workdir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def load_checkpoint(path: Path, device, what: str):
    """`weights_only=True` always: a run directory is data, never code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CellFailed(
            f"{what} {path} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "`bench run --retry-failed` discards it and trains the cell again"
        ) from None


def _epoch_order(n, labels, seed, epoch, sampler, maker: BatchMaker | None = None):
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sampler == "weighted":
        counts = np.bincount(labels).astype(float)
        w = torch.as_tensor(1.0 / np.maximum(counts[labels], 1))
        order = torch.multinomial(w, n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    return order.numpy(), maker.draw(n, g) if maker is not None else draw_params(n, g)


@torch.inference_mode()
def predict(model, formulation: Formulation, maker: BatchMaker, idx, labels, plan: DevicePlan, batch_size):
    """Raw outputs (concatenated on CPU) and the unweighted mean loss for dataset indices."""
    model.eval()
    outs: list[Any] = []
    losses = []
    for start in range(0, len(idx), batch_size):
        bidx = idx[start : start + batch_size]
        x = maker.eval_batch(bidx)
        y = torch.as_tensor(labels[bidx], device=plan.device)
        with plan.autocast():
            out = model(x)
        out = {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
        losses.append(formulation.loss(out, y, None) * len(bidx))
        outs.append({k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu())
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]} if isinstance(outs[0], dict) else torch.cat(outs)
    loss = float(torch.stack(losses).sum().cpu()) / max(len(idx), 1)
    return out, loss


def cross_fit(formulation: Formulation, outputs: np.ndarray, y: np.ndarray, groups, grouped: bool, seed: int):
    """Validation predictions of a fitted decoding without scoring it on the data it was fitted on: the
    fold's validation images are split in two halves (stratified; patients kept whole where the protocol
    groups them), each half is decoded with the parameters fitted on the other. Returns (predictions, class
    probabilities where the fitted decoding changes them (a temperature) else None, the two half-fits, the split
    unit)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    unit = "patient" if grouped and groups is not None and len(np.unique(groups)) >= 2 else "image"
    splitter = (
        StratifiedGroupKFold(2, shuffle=True, random_state=seed)
        if unit == "patient"
        else StratifiedKFold(2, shuffle=True, random_state=seed)
    )
    pred = np.empty(len(y), dtype=np.int64)
    proba: np.ndarray | None = None
    halves = []
    with warnings.catch_warnings():  # a rare class with one image per half is expected on small folds
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(outputs, y, groups if unit == "patient" else None))
    for fit_idx, score_idx in splits:
        state = formulation.fit_decoding(outputs[fit_idx], y[fit_idx])
        pred[score_idx] = formulation.predict(outputs[score_idx], state)
        p = formulation.proba(outputs[score_idx], state)
        if p is not None:
            proba = np.empty((len(y), p.shape[1])) if proba is None else proba
            proba[score_idx] = p
        halves.append(state)
    return pred, proba, halves, unit


def _as_dict(dec, y, ids):
    return {
        "y": y,
        "ids": ids,
        "pred": dec.pred,
        "proba": dec.proba,
        "score": dec.score,
        "outputs": dec.outputs,
        "task_preds": dec.task_preds,
    }


def train_epoch(
    model,
    formulation,
    maker: BatchMaker,
    labels,
    train_idx,
    order,
    draws: Draws,
    bs,
    opt,
    scaler,
    weights,
    plan: DevicePlan,
):
    """One pass over the training part in the given order; returns (summed loss tensor, images seen).
    The loss stays on the device (no per-step .item()), so the GPU is never synchronised mid-epoch."""
    device = plan.device
    total = torch.zeros((), device=device)
    seen = 0
    for start in range(0, len(order), bs):
        pos = order[start : start + bs]
        if len(pos) < 2:  # batch norm cannot train on a single image
            continue
        bidx = train_idx[pos]
        part = draws[start : start + bs]
        x = maker.train_batch(bidx, part)
        y = torch.as_tensor(labels[bidx]).to(device, non_blocking=True)
        mixed = maker.mix(x, part)
        if mixed is not None:
            x, lam = mixed
        with plan.autocast():
            out = model(x)
        out = {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
        loss = formulation.loss(out, y, weights)
        if mixed is not None:  # the paired image is the previous one of the batch (torchvision's roll by one)
            loss = lam * loss + (1.0 - lam) * formulation.loss(out, y.roll(1, 0), weights)
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


def train_cell(
    model,
    formulation: Formulation,
    data: CellData,
    cfg: TrainingConfig,
    sched: Schedule,
    plan: DevicePlan,
    seed: int,
    workdir: Path,
    input_size=None,
) -> CellOutcome:
    t_setup = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(workdir)
    last_path, best_path = workdir / "last.pt", workdir / "best.pt"
    device = plan.device
    plan.reset_peak_memory()
    maker = BatchMaker(data.images, data.mean, data.std, device, input_size, recipe=cfg.augment)
    model.to(device, memory_format=torch.channels_last)  # fastest conv layout on CPU (oneDNN) and GPU
    if sched.init_state is not None:
        model.load_state_dict(sched.init_state)
    step_model = torch.compile(model) if cfg.compile else model
    groups = model.optimizer_groups(sched.lr, cfg.weight_decay) if hasattr(model, "optimizer_groups") else None
    opt = torch.optim.Adam(groups or model.parameters(), lr=sched.lr, weight_decay=cfg.weight_decay)
    mode: Literal["min", "max"] = "min" if cfg.monitor == "val_loss" else "max"
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    scaler = torch.amp.GradScaler("cuda") if plan.amp_dtype == torch.float16 else None
    weights = None if sched.class_weights is None else {k: v.to(device) for k, v in sched.class_weights.items()}

    state: dict[str, Any] = {
        "epoch": 0,
        "best": None,
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
        "train_seconds": 0.0,
    }
    resumed_from = 0
    if last_path.exists():  # resume a killed cell from its last finished epoch
        try:
            ckpt = load_checkpoint(last_path, device, "checkpoint")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            plateau.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng_cpu"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            state = ckpt["state"]
            resumed_from = int(state["epoch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CellFailed(
                f"checkpoint {last_path} does not fit this cell ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); `bench run --retry-failed` discards it and trains "
                "the cell again"
            ) from None

    train_idx, y_train = data.train, data.labels[data.train]
    bs = sched.batch_size
    stopped_early = False
    initial = formulation.initial_state()
    grades = Scale(formulation.name, formulation.class_names, None)  # the validation values' labels: 0..K−1
    writer = CheckpointWriter(device)
    best_snap = None  # the best epoch's weights (host copy) not yet written to best.pt
    since_save = 0.0
    every = cfg.checkpoint_every
    # where each epoch's time goes (this process's epochs), for `bench perf --cell`
    parts = dict.fromkeys(("train", "validate", "decode", "checkpoint", "callbacks"), 0.0)
    epochs_timed = 0
    setup_seconds = time.perf_counter() - t_setup

    def resume_point():
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": plateau.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "scaler": scaler.state_dict() if scaler else None,
            "state": state,
        }

    def checkpoint():
        """best.pt (if a newer best is in memory) then last.pt, in the background: a kill before both land
        resumes from the previous pair, which still agree."""
        nonlocal best_snap, since_save
        jobs = []
        if best_snap is not None:
            jobs.append((best_snap, best_path))
            best_snap = None
        jobs.append((snapshot(resume_point(), device), last_path))
        # after last.pt, so it never names an epoch the checkpoint on disk has not reached
        jobs.append(({"epoch": int(state["epoch"]), "epochs": int(sched.epochs)}, workdir / PROGRESS_FILE))
        writer.save(jobs, copied=True)
        since_save = 0.0

    try:
        while state["epoch"] < sched.epochs:
            epoch = state["epoch"]
            t0 = time.perf_counter()
            model.train()
            order, draws = _epoch_order(len(train_idx), y_train, seed, epoch, cfg.sampler, maker)
            total, seen = train_epoch(
                step_model, formulation, maker, data.labels, train_idx, order, draws, bs, opt, scaler,
                weights, plan,
            )  # fmt: skip
            train_loss = float(total.cpu()) / max(seen, 1)
            if not math.isfinite(train_loss):
                raise CellFailed(f"training loss became {train_loss} in epoch {epoch + 1}")
            train_time = time.perf_counter() - t0
            # Model selection monitors the unweighted validation loss, in stage 2 as in stage 1.
            val_out, val_loss = predict(model, formulation, maker, data.val, data.labels, plan, cfg.eval_batch_size)
            if not math.isfinite(val_loss):
                raise CellFailed(f"validation loss became {val_loss} in epoch {epoch + 1}")
            t1 = time.perf_counter()
            y_val = data.labels[data.val]
            decoded = formulation.decode(val_out, initial)
            pred = decoded.pred
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                **monitor_values(y_val, pred, grades),
                "lr": opt.param_groups[-1]["lr"],  # the head's (the last group under layer-wise decay)
                "train_images_per_s": seen / max(train_time, 1e-9),
            }
            if sched.objective is not None:
                row["objective"] = float(sched.objective(y_val, pred, decoded.task_preds))
            value = row[cfg.monitor]
            plateau.step(value)
            improved = state["best"] is None or (value < state["best"] if mode == "min" else value > state["best"])
            t2 = time.perf_counter()
            if improved:
                state.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
                best_snap = snapshot(model.state_dict(), device)  # written with the next last.pt
            else:
                state["bad_epochs"] += 1
            row["seconds"] = time.perf_counter() - t0
            state["train_seconds"] += row["seconds"]
            state["history"].append(row)
            state["epoch"] = epoch + 1
            stop = state["bad_epochs"] >= cfg.early_stopping
            since_save += row["seconds"]
            interrupted = sched.should_stop()
            if since_save >= every or stop or interrupted or state["epoch"] == sched.epochs:
                checkpoint()
            t3 = time.perf_counter()
            if sched.on_epoch:
                sched.on_epoch(row)
            t4 = time.perf_counter()
            parts["train"] += train_time
            parts["validate"] += t1 - t0 - train_time
            parts["decode"] += t2 - t1
            parts["checkpoint"] += t3 - t2
            parts["callbacks"] += t4 - t3
            epochs_timed += 1
            if stop:
                stopped_early = True
                break
            if interrupted or sched.should_stop():
                if not interrupted:
                    checkpoint()
                writer.wait()  # the epoch is on disk before the process stops
                raise Interrupted(f"stopped after epoch {epoch + 1}")
        t_final = time.perf_counter()
        if best_snap is not None:  # never after a last epoch (it saves), kept so that no best epoch is dropped
            checkpoint()
        writer.wait()  # best.pt is read back below; a failed write (a full disk) is raised here
    except BaseException:
        writer.abandon()
        raise
    checkpoint_stall = writer.stall
    # Evaluate the best epoch's weights. Fitted decoding: fitted on the whole validation fold for the test
    # set; the validation metrics are cross-fitted so that no number is scored on the data it was fitted on.
    # Inference and fitting are timed apart: the evaluation rate is images through the model, and fitting (cut
    # points, cross-fitting) is its own column, so a fitted formulation is not shown as a slow model.
    model.load_state_dict(load_checkpoint(best_path, device, "best checkpoint"))
    t0 = time.perf_counter()
    val_out, _ = predict(model, formulation, maker, data.val, data.labels, plan, cfg.eval_batch_size)
    infer_seconds = time.perf_counter() - t0
    y_val = data.labels[data.val]
    t0 = time.perf_counter()
    val_outputs = formulation.outputs(val_out).detach().float().cpu().numpy().astype(np.float64)
    dec_state = formulation.fit_decoding(val_outputs, y_val)
    val_dec = formulation.decode_outputs(val_outputs, dec_state)
    if formulation.fits_decoding:
        val_dec.pred, proba, halves, unit = cross_fit(
            formulation, val_outputs, y_val, None if data.groups is None else data.groups[data.val], data.grouped, seed
        )
        if proba is not None:  # probabilities a fitted step changed are cross-fitted too, never in-sample
            val_dec.proba = proba
        dec_state = {**dec_state, "cross_fit": {"unit": unit, "halves": halves}}
    fit_seconds = time.perf_counter() - t0 if formulation.fits_decoding else 0.0
    predictions = {"val": _as_dict(val_dec, y_val, data.ids[data.val])}
    counters = {"val": val_dec.counters}
    if len(data.test):  # an empty test part (tuning) is never evaluated
        t0 = time.perf_counter()
        test_out, _ = predict(model, formulation, maker, data.test, data.labels, plan, cfg.eval_batch_size)
        infer_seconds += time.perf_counter() - t0
        test_dec = formulation.decode(test_out, dec_state)
        predictions["test"] = _as_dict(test_dec, data.labels[data.test], data.ids[data.test])
        counters["test"] = test_dec.counters
    n_eval = len(data.val) + len(data.test)
    for name, ext in data.external.items():
        t0 = time.perf_counter()
        ext_maker = BatchMaker(ext.images, data.mean, data.std, device, input_size)
        idx = np.arange(len(ext.labels))
        ext_out, _ = predict(model, formulation, ext_maker, idx, ext.labels, plan, cfg.eval_batch_size)
        infer_seconds += time.perf_counter() - t0
        ext_dec = formulation.decode(ext_out, dec_state)
        predictions[f"external:{name}"] = _as_dict(ext_dec, ext.labels, ext.ids)
        counters[f"external:{name}"] = ext_dec.counters
        n_eval += len(idx)
    history = state["history"]
    timings = {
        "train_seconds": state["train_seconds"],
        "eval_seconds": infer_seconds,
        "fit_seconds": fit_seconds,
        "epochs": state["epoch"],
        "train_images_per_s": float(np.median([h.get("train_images_per_s", 0.0) for h in history])) if history else 0.0,
        "eval_images_per_s": n_eval / max(infer_seconds, 1e-9),
        "peak_memory_bytes": plan.peak_memory(),
        "setup_seconds": setup_seconds,
        "final_seconds": time.perf_counter() - t_final,
        "epoch_parts": parts,
        "epochs_timed": epochs_timed,
        "checkpoint_stall_seconds": checkpoint_stall,
    }
    return CellOutcome(
        history, state["best_epoch"], predictions, counters, dec_state, timings, stopped_early, resumed_from
    )


def discard_unloadable_checkpoints(workdir: Path) -> list[Path]:
    """For --retry-failed: when a checkpoint of the cell cannot be loaded, both are deleted so the cell
    trains again from scratch instead of failing forever."""
    removed = []
    last, best = workdir / "last.pt", workdir / "best.pt"
    for path in (last, best):
        if path.exists():
            try:
                load_checkpoint(path, "cpu", "checkpoint")
            except CellFailed:
                removed.append(path)
    if removed:  # best.pt and last.pt belong to one history: one without the other cannot resume it
        removed = [p for p in (last, best) if p.exists()]
        (workdir / PROGRESS_FILE).unlink(missing_ok=True)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
