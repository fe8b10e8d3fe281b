"""`bench run`: validate everything, load data and splits once, then train and store cell after cell."""

from __future__ import annotations

import errno
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backbones import (
    BACKBONES,
    check_input_size,
    check_lr_decay,
    ensure_weights,
    flops_per_image,
    pretrained_stats,
    resize_target,
    resolve,
)
from formulations import scaled_formulation

from ..data.catalogue import load_dataset
from ..data.dataset import Dataset, resolve_scale
from ..data.splits import Splits, make_splits, record_splits
from ..errors import BenchError, CellFailed, Interrupted
from ..labels import MES, Scale
from ..suite.cells import Cell, expand_cells, longest_first, protocol_hash, select, unique_cells
from ..suite.loading import dump_suite
from ..suite.schema import Suite
from ..train.augment import channel_stats
from ..train.cell import CellSpec, fold_inputs, run_cell
from ..train.device import DevicePlan, pick_device
from ..train.loop import PROGRESS_FILE, CellData, discard_unloadable_checkpoints, remove_stale_temp_files
from .location import store_location
from .store import Heartbeat, Store, retrying


@dataclass
class RunReport:
    out_dir: Path
    trained: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[Cell] = field(default_factory=list)
    seconds: float = 0.0
    resumed: dict[str, int] = field(default_factory=dict)  # cell key -> the epoch its training resumed from

    def trained_text(self) -> str:
        """'3 trained (1 resumed from a checkpoint at epoch 4)': a resumed cell says so."""
        if not self.resumed:
            return f"{len(self.trained)} trained"
        epochs = sorted(set(self.resumed.values()))
        at = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {', '.join(map(str, epochs))}"
        return f"{len(self.trained)} trained ({len(self.resumed)} resumed from a checkpoint at {at})"


def preflight(suite: Suite, scale: Scale = MES):
    """Every name and option checked, on the run's scale, before anything is written or trained."""
    for f in suite.formulations:
        scaled_formulation(f.name, f.options, scale)
        for extra in f.options_by_fold.values():
            scaled_formulation(f.name, {**f.options, **extra}, scale)
    for b in suite.every_backbone():
        resolve(b.name)
        if b.pretrained:
            # found, or downloaded now, or one clear error before anything runs; and said, since the cache decides
            path = ensure_weights(b.name, b.weights)
            print(f"weights of {b.name}: {path}", file=sys.stderr, flush=True)


def load_externals(suite: Suite, scale: Scale, dataset: Dataset) -> dict:
    """The suite's external test sets, their labels on the run's scale; each must reach the model at the size the
    internal images do (the same native size, or every backbone resizing to a fixed input_size). A set that holds
    images of the suite's own data is said to be in-sample, here and in its tables."""
    from ..data.external import load_external, shared_images

    out = {}
    native = tuple(dataset.images.shape[1:3])
    resized = all(input_size_for(b) for b in suite.every_backbone())
    for cfg in suite.test_sets:
        ext = load_external(cfg, scale)
        ext.in_sample = shared_images(ext.images, dataset.images)
        if ext.in_sample:
            print(
                f"warning: test_sets[{cfg.name}]: {ext.in_sample} of its {len(ext.labels)} images are also images of "
                "the suite's own dataset (identical pixels), which the models train, select and decode on: its "
                "tables are partly in-sample, not another centre's. Point it at data the suite does not train on.",
                file=sys.stderr,
                flush=True,
            )
        size = tuple(ext.images.shape[1:3])
        if size != tuple(native) and not resized:
            raise BenchError(
                f"test_sets[{cfg.name}]: its images are {size[0]}×{size[1]}, the training images {native[0]}×"
                f"{native[1]}; the models must see both at one size. Give the set's dataset `resize: "
                f"[{native[0]}, {native[1]}]`, or every backbone an input_size."
            )
        out[cfg.name] = ext
    return out


def batch_size_for(suite: Suite, backbone, training=None) -> int:
    if backbone.batch_size:
        return backbone.batch_size
    spec = BACKBONES.get(backbone.name)
    if suite.protocol.kind == "polat" and spec and spec.batch_size:
        return spec.batch_size
    return (training or suite.training).batch_size


def input_size_for(backbone):
    """The size this backbone's images are resized to; None: the images' own size."""
    return resize_target(backbone.name, backbone.input_size)


def check_backbones_fit(suite: Suite, native: tuple[int, int]) -> None:
    """Every backbone takes the images at the size it will see them (a meta-device pass, no weights), and its
    options fit it: refused here, naming the backbone and the fix, rather than discovered cell by cell."""
    for b in suite.every_backbone():
        size = input_size_for(b)
        check_input_size(b.name, size or native, resized=size is not None)
        if b.lr_decay is not None:
            check_lr_decay(b.name)
        if b.normalise == "pretrained":
            pretrained_stats(b.name)


class Runner:
    def __init__(
        self,
        suite: Suite,
        out_dir: Path,
        device: str | None = None,
        progress=None,
        retry_failed: bool = False,
        store: str | None = None,
    ):
        self.suite = suite
        self.store_url = store  # None: MESBENCH_STORE, else RUN/results.db
        self.out_dir = Path(out_dir)
        self.plan: DevicePlan = pick_device(device, suite.training.amp, suite.training.deterministic)
        self.progress = progress
        self.retry_failed = retry_failed
        self._stop = False
        self._stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cells: list[Cell] | None = None
        self.trackers: list = []
        self._last_metrics: dict[str, dict[str, float]] = {}
        self._only: list[str] = []
        self.overhead: dict[str, dict[str, float]] = {}  # per cell: seconds of claim, fold data, store write
        self.resumed: dict[str, int] = {}  # cell key -> the epoch its training resumed from

    # ------------------------------------------------------------------ set-up
    def prepare(self, only=None):
        """Validate, load data, compute and record splits, select cells; once per runner."""
        if getattr(self, "cells", None) is not None and self._only == (only or []):
            return self.cells
        self._only = only or []
        self.dataset: Dataset = load_dataset(self.suite.dataset)
        self.scale = resolve_scale(self.suite.scale, self.dataset)
        preflight(self.suite, self.scale)
        self.external = load_externals(self.suite, self.scale, self.dataset)
        splits = make_splits(self.dataset, self.suite.protocol)  # errors before anything is written
        check_backbones_fit(self.suite, tuple(self.dataset.images.shape[1:3]))
        location = store_location(self.out_dir, self.store_url)
        self.store = Store(location)
        if location != str(self.out_dir):  # a server holds the results; checkpoints and splits stay in the run dir
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BenchError(
                    f"Run directory {str(self.out_dir)!r} cannot be created ({exc.strerror}); choose "
                    "another with --out."
                ) from None
        stored_protocol = self.store.get_meta("protocol_hash")
        if stored_protocol and stored_protocol != protocol_hash(self.suite):
            raise BenchError(
                f"Run directory {self.out_dir} holds results of a different dataset/protocol configuration "
                f"(protocol hash {stored_protocol}, this suite {protocol_hash(self.suite)}). Results under other "
                "splits cannot be mixed: run with --out NEW_DIR, or delete the old directory."
            )
        self.splits: Splits = record_splits(self.out_dir / "splits.json", splits, self.dataset)
        every_cell = expand_cells(self.suite, len(splits.folds))
        chosen = unique_cells(select(every_cell, only or []))  # coinciding variants share their cells
        self.cells = longest_first(chosen, self.cost_estimate(self.dataset.images.shape[1:3]))
        for cell in self.cells:
            f = cell.formulation
            if f.options_by_fold and cell.fold not in f.options_by_fold:
                raise BenchError(
                    f"formulation {f.display!r} has per-fold options (from `bench tune`) for folds "
                    f"{sorted(f.options_by_fold)} only, but this run has {len(splits.folds)} folds: tune "
                    f"the missing folds, or restrict the run with --only fold="
                    f"{','.join(map(str, sorted(f.options_by_fold)))}."
                )
        if self.retry_failed:
            self._reopen_lost_stage1()
        rows = self.store.cell_rows()
        for r in rows:  # a finished cell has no owner left to write in its folder: temp files there are leftovers
            if r["status"] == "done":
                remove_stale_temp_files(self.out_dir / "cells" / r["key"])
        previous = {r["key"] for r in rows}
        self.stale_cells = len(previous - {c.key for c in every_cell})
        self.new_cells = len({c.key for c in self.cells} - previous)
        self.store.set_meta("protocol_hash", protocol_hash(self.suite))
        self.store.set_meta("suite", self.suite.model_dump(mode="json"))
        self.store.set_meta("scale", self.scale.to_dict())
        self.store.set_meta("test_sets", {name: ext.summary(self.scale) for name, ext in self.external.items()})
        for name, ext in self.external.items():  # the report resamples an external set's patients, where it has them
            if ext.groups is not None:
                self.store.set_meta(f"external_groups:{name}", dict(zip(ext.ids.tolist(), map(str, ext.groups))))
        self.store.set_meta("n_folds", len(self.splits.folds))
        self.store.set_meta("split_kind", self.splits.split_kind)
        self.store.set_meta(
            "fold_sizes", {i: [int(len(tr)), int(len(va))] for i, (tr, va) in enumerate(self.splits.folds)}
        )
        self.store.set_meta(
            "dataset",
            {
                "name": self.dataset.name,
                "images": len(self.dataset),
                "image_size": list(self.dataset.images.shape[1:3]),
                "class_counts": np.bincount(self.dataset.labels, minlength=self.scale.k).tolist(),
                "patients": int(len(np.unique(self.dataset.groups))),
                "n_test": int(len(self.splits.test)),
            },
        )
        # Patient of every held-out test image: the report resamples patients, not images, for its CIs.
        if self.dataset.meta.get("grouped_ids", False):
            test = self.splits.test
            self.store.set_meta(
                "test_groups", dict(zip(self.dataset.ids[test].tolist(), map(str, self.dataset.groups[test].tolist())))
            )
            # and of every other image: the report's cross-fitted halves of a validation fold keep patients whole
            rest = np.setdiff1d(np.arange(len(self.dataset)), test)
            self.store.set_meta(
                "val_groups", dict(zip(self.dataset.ids[rest].tolist(), map(str, self.dataset.groups[rest].tolist())))
            )
        (self.out_dir / "suite.yaml").write_text(dump_suite(self.suite))
        return self.cells

    def cost_estimate(self, native):
        """A cell's relative cost: forward FLOPs per image of its backbone at the size it sees × its epochs. FLOPs
        are counted (on the meta device) only when the suite has more than one backbone to order."""
        cfg = self.suite.training
        names = {b.name for b in self.suite.backbones}
        flops: dict[str, float] = {}
        if len(names) > 1:
            for b in self.suite.backbones:
                size = input_size_for(b) or tuple(native)
                flops[b.name] = float(flops_per_image(b.name, size) or 0.0)

        def cost(cell: Cell) -> float:
            ft = cell.formulation.finetune_options
            tc = cell.training or cfg
            epochs = (ft.epochs or tc.finetune_epochs or tc.epochs) if cell.depends else tc.epochs
            return flops.get(cell.backbone.name, 1.0) * epochs

        return cost

    def fold_stats(self, fold):
        if fold not in self._stats:
            self._stats[fold] = channel_stats(self.dataset.images, self.splits.folds[fold][0])
        return self._stats[fold]

    def _reopen_lost_stage1(self) -> None:
        """--retry-failed: a finished stage-1 cell whose best.pt is missing or cannot be loaded would fail its
        fine-tuned cells forever; its checkpoints are discarded and it is trained again first."""
        from ..errors import CellFailed
        from ..train.loop import load_checkpoint

        for key in sorted({c.depends for c in self.cells or [] if c.depends}):
            if self.store.status(key) != "done":
                continue
            best = self.out_dir / "cells" / key / "best.pt"
            try:
                load_checkpoint(best, "cpu", "best checkpoint")  # any failure, a missing file included, is CellFailed
                continue
            except CellFailed:
                pass
            for path in (best, best.with_name("last.pt")):
                path.unlink(missing_ok=True)
            self.store.reopen(key, f"its checkpoint {best} was missing or unloadable; retrained by --retry-failed")
            print(f"note: discarded {best} (missing or unloadable); its stage-1 cell trains again", file=sys.stderr)

    # ------------------------------------------------------------------ running
    def run(self, only=None) -> RunReport:
        t0 = time.perf_counter()
        cells = self.prepare(only)
        report = RunReport(self.out_dir)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        for t in self.trackers:
            t.start_suite(self.suite, self.out_dir)
        try:
            pending = list(cells)
            while pending:
                waiting: list[Cell] = []
                lists: dict[str, list[Cell]] = {
                    "trained": report.trained,
                    "done": report.skipped,
                    "failed": report.failed,
                    "busy": waiting,
                    "superseded": waiting,
                }
                for cell in pending:
                    outcome = self.run_cell(cell)
                    lists[outcome].append(cell)
                    if self.progress:
                        self.progress.cell_done(cell, outcome, self._last_metrics.pop(cell.key, None))
                if not waiting:
                    break
                # Another process holds these; wait for it (or for its claim to go stale).
                pending = waiting
                time.sleep(2)
        finally:
            signal.signal(signal.SIGINT, previous)
            self.store.close()
            for t in self.trackers:
                t.close()
        report.seconds = time.perf_counter() - t0
        report.resumed = {c.key: self.resumed[c.key] for c in report.trained if c.key in self.resumed}
        return report

    def _on_sigint(self, *_):
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        if self.progress:
            self.progress.note("Ctrl-C: stopping after the current epoch is saved (press again to abort now)")

    def run_cell(self, cell: Cell) -> str:
        if self._stop:
            raise Interrupted(
                "stopped before the next cell. Finished cells are saved; resume with the same `bench run` command"
            )
        if cell.depends:
            dep = self.store.status(cell.depends)
            if dep == "failed":
                state = retrying(self.store.claim, cell.key, self._cell_info(cell), self.retry_failed)
                if state == "claimed":
                    self.store.fail(cell.key, "its stage-1 cell failed; run `bench run --retry-failed`")
                    return "failed"
                return state
            if dep != "done":
                return "busy"
        t_claim = time.perf_counter()
        state = retrying(self.store.claim, cell.key, self._cell_info(cell), self.retry_failed)
        if state != "claimed":
            return state
        overhead = self.overhead[cell.key] = {"claim": time.perf_counter() - t_claim}
        workdir = self.out_dir / "cells" / cell.key
        if self.retry_failed:
            for path in discard_unloadable_checkpoints(workdir):
                if self.progress:
                    self.progress.note(
                        f"[yellow]note[/]: discarded unloadable checkpoint {path}; {cell.label} "
                        "trains again from scratch"
                    )
        beat = Heartbeat(self.store, cell.key)
        try:
            with beat:
                t_spec = time.perf_counter()
                spec = self.cell_spec(cell, workdir, beat.lost.is_set)
                overhead["fold data"] = time.perf_counter() - t_spec
                self._track_start(cell, spec)
                result = run_cell(spec, self.plan)
        except Interrupted as exc:
            if beat.lost.is_set():  # another worker took the cell over: stop and leave it to them
                return "superseded"
            self.store.release(cell.key)
            raise Interrupted(
                f"{cell.label}: {exc}. Finished cells and this cell's last epoch are saved; "
                f"resume with the same `bench run` command."
            ) from None
        except BenchError:
            self.store.release(cell.key)
            raise
        except KeyboardInterrupt:
            self.store.release(cell.key)
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                reason = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=8))
                return self._failed(cell, reason, exc)
            self.store.release(cell.key)
            for tmp in workdir.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "is read-only"
            raise BenchError(
                f"the disk {what} while writing {exc.filename or workdir} ({exc.strerror}). Nothing of "
                f"{cell.label} was stored; the cell is unclaimed and resumes from its last saved epoch. "
                "Free space (or choose another run directory with --out) and run the same command "
                "again."
            ) from None
        except (CellFailed, Exception) as exc:
            reason = (
                str(exc)
                if isinstance(exc, CellFailed)
                else (f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=8)))
            )
            return self._failed(cell, reason, exc)
        shown = {"accuracy": "val accuracy", "f1": "val macro-F1", "qwk": "val QWK"}
        self._last_metrics[cell.key] = {
            shown[r["metric"]]: r["value"]
            for r in result.metrics
            if r["split"] == "val" and r["task"] == "mes" and r["metric"] in shown and r["cls"] in ("", "macro")
        }
        t_store = time.perf_counter()
        stored = retrying(self.store.finish, cell.key, result)
        overhead["store write"] = time.perf_counter() - t_store
        if not stored:
            if self.progress:
                self.progress.note(
                    f"[yellow]note[/]: {cell.label} was taken over by another worker while this one "
                    "trained it (its heartbeat went stale); this result is discarded, theirs is kept"
                )
            return "superseded"
        if self.suite.training.keep == "best":  # the resume point is no longer needed once the cell is stored
            (workdir / "last.pt").unlink(missing_ok=True)
        (workdir / PROGRESS_FILE).unlink(missing_ok=True)  # it says how far a cell still training has got
        for t in self.trackers:
            t.end_cell(cell, result, "trained")
        if result.resumed_from:
            self.resumed[cell.key] = result.resumed_from
        return "trained"

    def _track_start(self, cell: Cell, spec: CellSpec):
        if not self.trackers:
            return
        params = {
            "backbone": cell.backbone.name,
            "formulation": cell.formulation.display,
            "fold": cell.fold,
            "seed": cell.seed,
            "key": cell.key,
            "options": spec.options,
            "epochs": spec.epochs or spec.training.epochs,
            **dict(cell.variant),
            "batch_size": spec.batch_size,
            "finetune": spec.finetune,
        }
        for t in self.trackers:
            t.start_cell(cell, params)
        shown = spec.on_epoch

        def on_epoch(row):
            if shown:
                shown(row)
            for t in self.trackers:
                t.epoch(row)

        spec.on_epoch = on_epoch

    def _failed(self, cell, reason, exc):
        for t in self.trackers:
            t.end_cell(cell, None, "failed")  # a no-op for a tracker with no cell open
        if not retrying(self.store.fail, cell.key, reason):
            return "superseded"
        if self.progress:
            self.progress.note(f"[red]failed[/]: {cell.label}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return "failed"

    def _cell_info(self, cell: Cell):
        return {
            "backbone": cell.backbone.name,
            "formulation": cell.formulation.display,
            "seed": cell.seed,
            "fold": cell.fold,
            "config_hash": cell.key,
        }

    def cell_spec(self, cell: Cell, workdir: Path, claim_lost=lambda: False) -> CellSpec:
        """The cell's data, schedule and, for a fine-tuned formulation, its stage-1 start and loss weights."""
        cfg = cell.training or self.suite.training  # a variant's own settings
        train, val = self.splits.folds[cell.fold]
        data = CellData.of(self.dataset, train, val, self.splits.test, self.splits.grouped, self.fold_stats(cell.fold))
        data.external = self.external
        spec = CellSpec(
            cell.backbone,
            cell.formulation.name,
            cell.options,
            cell.seed,
            data,
            cfg,
            batch_size_for(self.suite, cell.backbone, cfg),
            input_size_for(cell.backbone),
            workdir,
            scale=self.scale,
        )
        drw = cell.formulation.finetune_options if cell.depends and cell.formulation.finetune == "drw" else None
        spec.options, weights = fold_inputs(
            cell.formulation.name, cell.options, self.dataset.labels[train], cfg, drw, self.scale
        )
        if not cell.depends or drw is not None:  # +f1 sets its own below; +ft is stage 2 without weights
            spec.class_weights = weights
        if cell.depends:
            ft = cell.formulation.finetune_options
            spec.init_checkpoint = self.out_dir / "cells" / cell.depends / "best.pt"
            spec.epochs = ft.epochs or cfg.finetune_epochs or cfg.epochs
            spec.lr = ft.lr if ft.lr is not None else cfg.finetune_lr
            spec.finetune, spec.stage1_key = cell.formulation.finetune, cell.depends
            if cell.formulation.finetune == "inverse_f1":
                formulation = scaled_formulation(cell.formulation.name, cell.options, self.scale)
                per_task_f1 = self.stage1_f1(cell.depends, formulation)
                spec.class_weights = formulation.task_weights(per_task_f1, ft.model_dump())
                spec.options = {**spec.options, **formulation.finetune_overrides(per_task_f1, ft.model_dump())}
                spec.stage1_f1 = {k: list(map(float, v)) for k, v in per_task_f1.items()}
        if self.progress:
            self.progress.cell_start(cell, spec.epochs or cfg.epochs)
            spec.on_epoch = self.progress.epoch
        spec.should_stop = lambda: self._stop or claim_lost()
        return spec

    def stage1_f1(self, key, formulation) -> dict[str, np.ndarray]:
        """Class-wise F1 of the stored stage-1 model on its fold's validation data, per task."""
        frame = self.store.metrics_frame(key)
        frame = frame[(frame.split == "val") & (frame.metric == "f1") & frame.cls.str.isdigit()]
        out = {}
        for task_name, task in formulation.tasks.items():
            rows = frame[frame.task == task_name].sort_values("cls", key=lambda c: c.astype(int))
            if len(rows) == len(task.classes):
                out[task_name] = rows.value.to_numpy()
        if not out:
            raise CellFailed(f"stage-1 cell {key} has no validation F1 stored")
        return out
