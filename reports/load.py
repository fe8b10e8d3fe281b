"""A run directory as pandas frames: cells (expected vs finished/failed/missing) and long-format metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import BenchError
from benchmark.labels import Scale
from benchmark.result import CellResult
from benchmark.run.location import store_location
from benchmark.run.store import Store
from benchmark.suite.cells import expand_cells, variant_display
from benchmark.suite.schema import Suite

_EMPTY = pd.Series([], dtype=float, index=pd.MultiIndex.from_tuples([], names=["seed", "fold"]))
LONG_COLUMNS = ["backbone", "formulation", "seed", "fold", "split", "task", "metric", "cls", "value"]


@dataclass
class Run:
    path: Path
    suite: Suite
    meta: dict
    # one row per expected cell: backbone, formulation (with its variants where the suite has axes), one column per
    # ablation axis, seed, fold, key, status, error, listed (False for a stage-1 cell that only a fine-tuned
    # formulation asked for); variants that coincide share a key, and each has its row

    cells: pd.DataFrame
    long: pd.DataFrame  # LONG_COLUMNS, every finished expected cell
    stale: int  # finished cells of an earlier configuration, ignored
    store: Store

    @property
    def scale(self) -> Scale:
        """The run's grades (stored by `bench run`; a run from before scales were stored is MES's)."""
        return Scale.from_dict(self.meta.get("scale"))

    @property
    def backbones(self):
        return [b.name for b in self.suite.backbones]

    @property
    def formulations(self):
        return [f.display for f in self.suite.formulations]

    @property
    def counts(self):
        s = self.cells.status.value_counts()
        return {
            "done": int(s.get("done", 0)),
            "failed": int(s.get("failed", 0)),
            "missing": int(len(self.cells) - s.get("done", 0) - s.get("failed", 0)),
        }

    @property
    def complete(self):
        return self.counts["done"] == len(self.cells)

    def result(self, key) -> CellResult:
        """The cell's typed result (an empty one for a cell that has none)."""
        if key not in self._results:
            self._results[key] = self.store.result(key) or CellResult()
        return self._results[key]

    def states(self, keys) -> list[dict]:
        """Decoding states of these cells (each its formulation's initial state when none was stored)."""
        return [self.result(k).state for k in keys]

    @property
    def reference(self) -> str:
        """The formulation reports compare with unless told otherwise: the registered baseline when the run has
        it, else the run's first formulation."""
        from formulations import reference_formulation

        ref = reference_formulation()
        names = [f.display for f in self.suite.formulations if f.name == ref and not f.finetune]
        return names[0] if names else self.formulations[0]

    def __post_init__(self):
        self.stored_suite = self.suite  # the suite as written (with its variant axes); `suite` has one row each
        self._results = {}
        self._index = None
        self._formulations = {}

    def config(self, display):
        return next(f for f in self.suite.formulations if f.display == display)

    def formulation(self, display):
        """The formulation object behind a displayed name: its decoding and ensembling rules (torch-free)."""
        if display not in self._formulations:
            from formulations import scaled_formulation

            cfg = self.config(display)
            self._formulations[display] = scaled_formulation(cfg.name, cfg.options, self.scale)
        return self._formulations[display]

    def fits_decoding(self, display) -> bool:
        return self.formulation(display).fits_decoding

    def extra_tasks(self) -> dict[str, tuple[str, ...]]:
        """Tasks beyond the K-grade label that some formulation of the run has (name -> class names)."""
        tasks: dict[str, tuple[str, ...]] = {}
        for f in self.formulations:
            for name, task in self.formulation(f).tasks.items():
                if name != "mes":
                    tasks.setdefault(name, task.classes)
        return tasks

    def series(self, backbone, formulation, split, task, metric, cls="") -> pd.Series:
        """Values over (seed, fold) of one metric of one backbone × formulation; one groupby, then lookups."""
        if self._index is None:
            cols = ["backbone", "formulation", "split", "task", "metric", "cls"]
            self._index = self.long.groupby(cols, sort=False).indices
            self._cols = (self.long.seed.to_numpy(), self.long.fold.to_numpy(), self.long.value.to_numpy())
            self._series: dict[tuple[str, ...], pd.Series] = {}
        key = (backbone, formulation, split, task, metric, cls)
        if key not in self._series:
            pos = self._index.get(key)
            if pos is None:
                return _EMPTY
            seed, fold, value = (c[pos] for c in self._cols)
            order = np.lexsort((fold, seed))
            self._series[key] = pd.Series(
                value[order], index=pd.MultiIndex.from_arrays([seed[order], fold[order]], names=["seed", "fold"])
            )
        return self._series[key]


def latest_run(root="runs") -> Path:
    """The run under `root` whose last cell finished most recently, according to the stores themselves (a file's
    modification time changes when it is copied or merely opened)."""
    root = Path(root)
    candidates = []
    for db in sorted(root.glob("*/results.db")) if root.is_dir() else []:
        try:
            finished = [
                r["finished"]
                for r in Store(db.parent, create=False, readonly=True).cell_rows()
                if r["status"] == "done" and r["finished"]
            ]
        except BenchError:
            continue  # a damaged store is not "the latest run"
        candidates.append((max(finished) if finished else 0.0, str(db.parent)))
    if not candidates:
        raise BenchError(
            f"No run directory under {str(root)!r}. Give RUN_DIR, or run a suite first (`bench run suites/smoke.yaml`)."
        )
    return Path(max(candidates)[1])


def load_run(path=None, store_url: str | None = None) -> Run:
    path = Path(path) if path else latest_run()
    store = Store(store_location(path, store_url), create=False, readonly=True)
    suite_doc = store.get_meta("suite")
    if suite_doc is None:
        raise BenchError(
            f"{path}: the store has no suite recorded yet. A `bench run` that is starting records it once its data "
            "is loaded: try again in a moment. Otherwise the store was not written by `bench run`."
        )
    suite = Suite.model_validate(suite_doc, context={"stored": True})
    n_folds = store.get_meta("n_folds")
    meta = {
        k: store.get_meta(k)
        for k in (
            "dataset",
            "split_kind",
            "n_folds",
            "protocol_hash",
            "test_groups",
            "val_groups",
            "fold_sizes",
            "scale",
            "test_sets",
        )
    }
    for name in meta.get("test_sets") or {}:
        meta[f"external_groups:{name}"] = store.get_meta(f"external_groups:{name}")
    expected = expand_cells(suite, n_folds)
    rows = {r["key"]: r for r in store.cell_rows()}
    cells = pd.DataFrame(
        [
            {
                "backbone": c.backbone.name,
                "formulation": c.display,
                **dict(c.variant),
                "seed": c.seed,
                "fold": c.fold,
                "key": c.key,
                "depends": c.depends,
                "listed": c.listed,
                "status": rows[c.key]["status"] if c.key in rows else "missing",
                "error": (rows[c.key]["error"] or "") if c.key in rows else "",
            }
            for c in expected
        ]
    )
    wanted = {c.key for c in expected}
    stale = sum(1 for k, r in rows.items() if k not in wanted and r["status"] == "done")
    metrics = store.metrics_frame()
    done = cells[cells.status == "done"][["key", "backbone", "formulation", "seed", "fold"]]
    long = done.merge(metrics, on="key")[LONG_COLUMNS + ["key"]]
    run = Run(path, with_variant_rows(suite), meta, cells, long, stale, store)
    run.stored_suite = suite
    return run


def with_variant_rows(suite: Suite) -> Suite:
    """For the report, every formulation × variant combination is a formulation of its own ('softmax[lr=low]'), so
    every table, figure and test treats it as one; `--compare AXIS` then compares the rows that differ only in
    that axis. A suite without variants is returned as it is."""
    if not suite.variants:
        return suite
    rows = [
        f.model_copy(update={"label": variant_display(f, combo)})
        for f in suite.formulations
        for combo in suite.combos()
    ]
    return suite.model_copy(update={"formulations": rows})


def variant_groups(run: Run, axis: str) -> list[tuple[str, list[str], list[str]]]:
    """For `--compare AXIS` on an ablation axis: (what is held fixed, the rows that differ only in AXIS, the variant
    names) — one group per formulation × variant of the other axes."""
    from benchmark.suite.cells import variant_display
    from benchmark.suite.schema import combo_text

    suite = run.stored_suite
    names = list(suite.variants[axis])
    groups = []
    seen = set()
    for f in suite.formulations:
        for combo in suite.combos():
            rest = tuple((a, v) for a, v in combo if a != axis)
            if (f.display, rest) in seen:
                continue
            seen.add((f.display, rest))
            items = [variant_display(f, tuple((a, v if a != axis else name) for a, v in combo)) for name in names]
            fixed = f.display + (f" with {combo_text(rest)}" if rest else "")
            groups.append((fixed, items, names))
    return groups
