"""`bench status RUN`: what a run's cells are doing — done, running (by which worker, since when, last
heartbeat), failed, pending — and how fast each worker has been."""

from __future__ import annotations

import time
from typing import Any

from .console import console


def cmd_status(args):
    from rich.markup import escape
    from rich.table import Table

    from reports.load import load_run
    from reports.summary import disk_size

    run = load_run(args.run_dir, args.store)
    rows = {r["key"]: r for r in run.store.cell_rows()}
    now = time.time()
    counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
    running: list[tuple[Any, dict[str, Any]]] = []
    partial: list[tuple[Any, str]] = []
    per_worker: dict[str, dict[str, float]] = {}
    from benchmark.run.store import STALE_SECONDS

    for c in run.cells.itertuples():
        r = rows.get(c.key)
        stale = r is not None and r["status"] == "running" and now - (r["heartbeat"] or 0) > STALE_SECONDS
        if r is None or (r["status"] == "running" and not r["owner"]) or stale:  # a stale claim: its worker is gone
            counts["pending"] += 1
            progress = partial_progress(run.path, c.key)
            if progress:
                partial.append((c, progress))
            continue
        status = r["status"]
        counts[status] = counts.get(status, 0) + 1
        if status == "running":
            running.append((c, r))
        if status == "done" and r.get("owner"):
            w = per_worker.setdefault(r["owner"], {"cells": 0, "seconds": 0.0})
            w["cells"] += 1
            w["seconds"] += (r["finished"] or now) - (r["started"] or now)
    console.print(  # names and paths are user text: escaped, never read as rich markup
        f"{escape(str(run.path))}: {len(run.cells)} cells — {counts['done']} done, {counts['running']} running, "
        f"{counts['failed']} failed, {counts['pending']} pending"
        + (f" ({len(partial)} of them partial: they resume from their last saved epoch)" if partial else "")
        + f" · {disk_size(run.path)} on disk"
    )
    left = time_left(run.cells, rows, now)
    if left is not None:
        console.print(left)
    if running:
        t = Table(title="running")
        for col in ("cell", "worker", "since", "last heartbeat", "saved"):
            t.add_column(col)
        for c, r in running:
            t.add_row(
                escape(f"{c.backbone} · {c.formulation} · fold {c.fold} · seed {c.seed}"),
                escape(r["owner"]),
                f"{now - (r['started'] or now):.0f} s ago",
                f"{now - (r['heartbeat'] or 0):.0f} s ago",
                partial_progress(run.path, c.key) or "—",
            )
        console.print(t)
    if partial:
        t = Table(title="pending, partly trained")
        for col in ("cell", "state"):
            t.add_column(col)
        for c, progress in partial:
            t.add_row(escape(f"{c.backbone} · {c.formulation} · fold {c.fold} · seed {c.seed}"), progress)
        console.print(t)
    if per_worker:
        t = Table(title="finished cells per worker")
        for col in ("worker", "cells", "cells per hour"):
            t.add_column(col, justify="right")
        for owner, w in sorted(per_worker.items()):
            rate = 3600 * w["cells"] / w["seconds"] if w["seconds"] > 0 else float("nan")
            t.add_row(escape(owner), str(w["cells"]), f"{rate:,.1f}")
        console.print(t)
    return 0


def partial_progress(run_dir, key: str) -> str | None:
    """'partial (epoch 4 of 200)' for a cell with a saved resume point (written beside its last.pt), else None."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "cells" / key / "progress.json"
    try:
        doc = json.loads(path.read_text())
        return f"partial (epoch {int(doc['epoch'])} of {int(doc['epochs'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def time_left(cells, rows: dict[str, dict[str, Any]], now: float) -> str | None:
    """Time left from what finished cells took: each unfinished cell is estimated by the mean duration of the
    finished cells of its backbone and formulation (else of its backbone); a running cell by that minus the time it
    has run. Cells with nothing finished to go by are counted apart, never guessed."""
    import numpy as np

    took: dict[tuple[str, str], list[float]] = {}
    for c in cells.itertuples():
        r = rows.get(c.key)
        if r is not None and r["status"] == "done" and r.get("started") is not None and r.get("finished") is not None:
            took.setdefault((c.backbone, c.formulation), []).append(r["finished"] - r["started"])
    if not took:
        return None
    by_backbone: dict[str, list[float]] = {}
    for (b, _), v in took.items():
        by_backbone.setdefault(b, []).extend(v)
    seconds, unknown, active = 0.0, 0, 0
    for c in cells.itertuples():
        r = rows.get(c.key)
        status = "pending" if r is None or (r["status"] == "running" and not r["owner"]) else r["status"]
        if status in ("done", "failed"):
            continue
        past = took.get((c.backbone, c.formulation)) or by_backbone.get(c.backbone)
        if not past:
            unknown += 1
            continue
        estimate = float(np.mean(past))
        if status == "running":
            active += 1
            started = r["started"] if r is not None else None
            estimate = max(estimate - (now - (started or now)), 0.0)
        seconds += estimate
    text = f"time left: ≈ {_hours(seconds)} of cell time"
    if active > 1:
        text += f" (≈ {_hours(seconds / active)} with the {active} cells running now in parallel)"
    text += ", from the mean duration of finished cells of the same backbone and formulation"
    if unknown:
        text += f"; {unknown} cell(s) of backbones with no finished cell yet are not counted"
    return text


def add_commands(sub):
    s = sub.add_parser("status", help="cells done / running (by which worker) / failed / pending of a run")
    s.add_argument("run_dir", help="run directory written by `bench run`")
    s.add_argument("--store", help="results store URL (default: MESBENCH_STORE, else RUN/results.db)")
    s.set_defaults(fn=cmd_status)
