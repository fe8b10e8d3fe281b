"""`bench check`: a run's long-format metric table against a committed baseline (or another run). By default the
comparison is noise-aware (reports/noise.py); `--exact`, described here, compares value by value.

The baseline is a CSV of (backbone, formulation, seed, fold, split, task, metric, cls, value) with
optional `# tolerance: default=0.02 mae=0.05 f1@3=0.1 recall@*=0.1` header lines (`@*`: any class).
A value worse than the baseline
by more than its tolerance is a regression (lower is better for MAE and the `diag` counters; counts
such as support must match exactly); better values are listed as improvements. Missing cells,
unexpected cells and NaN values fail too.

Default tolerance 0.02: CPU training here is deterministic on one machine (identical values), and
0.02 absorbs the few flipped predictions that another CPU's float kernels can cause on the CI suite's
validation folds (~1/60 of accuracy each); per-class values of rare classes get their own header line.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import BenchError
from benchmark.metrics import LOWER_IS_BETTER, metric_name, parse_metric

DEFAULT_TOLERANCE = 0.02
ID = ["backbone", "formulation", "seed", "fold"]
KEY = ID + ["split", "task", "metric", "cls"]
EXACT = {"support"}


@dataclass
class CheckResult:
    regressions: pd.DataFrame
    improvements: pd.DataFrame
    missing_cells: list[tuple] = field(default_factory=list)
    unexpected_cells: list[tuple] = field(default_factory=list)
    nan_values: pd.DataFrame | None = None
    missing_values: pd.DataFrame | None = None
    compared: int = 0

    @property
    def ok(self):
        return (
            self.regressions.empty
            and not self.missing_cells
            and not self.unexpected_cells
            and (self.nan_values is None or self.nan_values.empty)
            and (self.missing_values is None or self.missing_values.empty)
        )


def run_table(run_dir, store: str | None = None, predictions: bool = False) -> pd.DataFrame:
    """A run's metric rows (and with `predictions`, its per-image predicted grades as rows, for a baseline); attrs
    carry what a noise-aware check needs: the per-image predictions, patients, K and the run's design."""
    from .load import LONG_COLUMNS, load_run
    from .noise import per_image, predictions_long

    run = load_run(run_dir, store)
    table = run.long[LONG_COLUMNS].copy()
    if predictions:
        table = pd.concat([table, predictions_long(run)], ignore_index=True)
    failed = run.cells[run.cells.status != "done"]
    table.attrs["unfinished"] = [tuple(r) for r in failed[ID].itertuples(index=False)]
    table.attrs["design"] = run_design(run)
    table.attrs["per_image"] = lambda: per_image(run)
    table.attrs["groups"] = {**(run.meta.get("val_groups") or {}), **(run.meta.get("test_groups") or {})}
    table.attrs["k"] = run.scale.k
    table.attrs["recorded"] = recorded_on(run)
    return table


NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OMP_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES")


def recorded_on(run) -> str:
    """Where and how a run was made: the device and numerics of its cells, the CPU, and the numerics settings of the
    environment recording it (scripts/ci-suite pins them)."""
    import os
    import platform

    done = run.cells[run.cells.status == "done"].key
    if not len(done):
        return "no finished cell"
    res = run.result(done.iloc[0])
    threads = sorted({run.result(k).threads for k in done} - {0})
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    pinned = " ".join(f"{k}={os.environ[k]}" for k in NUMERICS_ENV if k in os.environ)
    return (
        f"{res.device}; {cpu}"
        + (f"; {', '.join(map(str, threads))} CPU thread(s) per process" if threads else "")
        + f"; numerics environment: {pinned or 'defaults'}"
    )


def run_design(run) -> dict:
    """What must be the same for two runs' values to be compared: which suite, which data (and its grades), and
    which splits. Training settings may differ: a change there is what a check is for."""
    return {
        "suite name": run.suite.name,
        "dataset": run.meta.get("dataset") or run.suite.dataset.model_dump(mode="json"),
        "protocol": run.suite.protocol.model_dump(mode="json"),
        "splits": run.meta.get("protocol_hash"),
        "scale": run.meta.get("scale"),
    }


def check_comparable(now: pd.DataFrame, base: pd.DataFrame, now_name: str, base_name: str) -> None:
    """Refuse to compare runs of different suites, data or protocols: every value would differ, and the differences
    would read as regressions and improvements of the code."""
    a, b = now.attrs.get("design", {}), base.attrs.get("design", {})
    differ = [k for k in a if k in b and a[k] != b[k]]
    if differ:
        shown = "; ".join(f"{k}: {_short(a[k])} in {now_name}, {_short(b[k])} in {base_name}" for k in differ)
        raise BenchError(
            f"bench check {now_name} --against {base_name}: the runs differ in {', '.join(differ)} ({shown}), so their "
            "values are not comparable. Compare two runs of one suite on one dataset and protocol (e.g. before and "
            "after a code change), or check each against its own baseline."
        )


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "…"


def check_tolerance(value: float, where: str) -> float:
    """A tolerance is a finite number ≥ 0: NaN would hide every regression, a negative one would report
    every value as both a regression and an improvement."""
    if not math.isfinite(value) or value < 0:
        raise BenchError(f"{where}: tolerance {value!r} must be a finite number ≥ 0 (e.g. 0.02).")
    return value


def read_baseline(path) -> tuple[pd.DataFrame, dict[str, float]]:
    path = Path(path)
    remake = f"Recreate it with `bench check RUN_DIR --baseline {path} --update`."
    if not path.is_file():
        raise BenchError(
            f"Baseline {str(path)!r} does not exist. Create it with `bench check RUN_DIR --baseline {path} --update`."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BenchError(
            f"{path}: not a text file, so not a baseline (a CSV with columns {','.join(KEY + ['value'])}). {remake}"
        ) from None
    tolerances = {}
    # Only the leading lines are comments: a '#' later belongs to a value (a label such as "mtl #2").
    lines = text.splitlines(keepends=True)
    n_header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header, text = lines[:n_header], "".join(lines[n_header:])
    design = None
    for line in header:
        d = re.match(r"#\s*design:\s*(.*)", line)
        if d:
            try:
                design = json.loads(d.group(1))
            except ValueError:
                design = None
        m = re.match(r"#\s*tolerance:\s*(.*)", line)
        if m:
            for item in m.group(1).split():
                k, _, v = item.partition("=")
                try:
                    tolerances[k] = check_tolerance(float(v), f"{path}, tolerance {item!r}")
                except ValueError:
                    raise BenchError(f"{path}: tolerance {item!r} is not name=number.") from None
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"cls": str, "backbone": str, "formulation": str})
    except pd.errors.EmptyDataError:
        raise BenchError(f"{path}: the baseline is empty (no header, no values). {remake}") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise BenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}). {remake}") from None
    missing = set(KEY + ["value"]) - set(df.columns)
    if missing:
        raise BenchError(
            f"{path}: missing column(s) {sorted(missing)}; a baseline has columns {','.join(KEY + ['value'])}. {remake}"
        )
    if df.empty:
        raise BenchError(
            f"{path}: the baseline holds no values, so a check against it would compare nothing and pass. {remake}"
        )
    values = pd.to_numeric(df["value"], errors="coerce")
    bad = df.index[values.isna() & df["value"].notna() & (df["value"].astype(str).str.lower() != "nan")]
    if len(bad):
        raise BenchError(
            f"{path}: data row {bad[0] + 1} has value {df['value'][bad[0]]!r}, which is not a number "
            f"({len(bad)} such rows). Fix the value or {remake[0].lower()}{remake[1:]}"
        )
    for col in ("seed", "fold"):
        ints = pd.to_numeric(df[col], errors="coerce")
        if ints.isna().any():
            row = int(np.flatnonzero(ints.isna())[0])
            raise BenchError(
                f"{path}: data row {row + 1} has {col} {df[col][row]!r}, which is not an integer. {remake}"
            )
    df["value"] = values
    df["cls"] = df["cls"].fillna("")
    if design is not None:
        df.attrs["design"] = design
    return df, tolerances


def write_baseline(table: pd.DataFrame, path, tolerances: dict[str, float], source: str):
    path = Path(path)
    header = [
        f"# mesbench baseline from {source}, written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"# recorded on: {table.attrs.get('recorded', 'unknown')}",
        f"# design: {json.dumps(table.attrs.get('design', {}), sort_keys=True, default=str)}",
        "# tolerance: "
        + " ".join(f"{k}={v:g}" for k, v in sorted({"default": DEFAULT_TOLERANCE, **tolerances}.items())),
    ]
    body = table.sort_values(KEY)[KEY + ["value"]].to_csv(index=False, float_format="%.6f")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(header) + "\n" + body)
    except OSError as exc:
        raise BenchError(
            f"--update: the baseline {str(path)!r} cannot be written ({exc.strerror}). Give --baseline a file in a "
            "folder you can write to (the baseline is meant to be committed with the project)."
        ) from None


def tolerance_for(row, tolerances, default):
    """Most specific first: `ra.f1`, `f1@3` (any task), `f1@*` (any class), `f1`, then the default."""
    name = metric_name(row.task, row.metric, row.cls)
    keys = [
        name,
        f"{row.metric}@{row.cls}" if row.cls else row.metric,
        f"{row.metric}@*" if row.cls else None,
        metric_name(row.task, row.metric, ""),
        row.metric,
    ]
    for key in filter(None, keys):
        if key in tolerances:
            return tolerances[key]
    return tolerances.get("default", default)


def compare(
    now: pd.DataFrame, base: pd.DataFrame, tolerances=None, default=DEFAULT_TOLERANCE, metrics: list[str] | None = None
) -> CheckResult:
    tolerances = tolerances or {}
    unfinished = set(now.attrs.get("unfinished", []))
    now, base = (
        df.assign(seed=df["seed"].astype(int), fold=df["fold"].astype(int), cls=df["cls"].fillna("").astype(str))
        for df in (now, base)
    )
    if metrics:
        known = set(zip(now.task, now.metric, now.cls)) | set(zip(base.task, base.metric, base.cls))
        wanted = [parse_metric(m, known) for m in metrics]
        keep = lambda d: d[[(t, m, c) in wanted for t, m, c in zip(d.task, d.metric, d.cls)]]
        now, base = keep(now), keep(base)
    cells_now = set(map(tuple, now[ID].drop_duplicates().itertuples(index=False)))
    cells_base = set(map(tuple, base[ID].drop_duplicates().itertuples(index=False)))
    merged = base.merge(now, on=KEY, how="left", suffixes=("_base", "_now"), indicator=True)
    merged = merged[[tuple(r) in cells_now for r in merged[ID].itertuples(index=False)]]
    absent = merged["_merge"] == "left_only"
    missing_values = merged[absent]
    present = merged[~absent]
    # NaN on one side only is a failure (a NaN baseline is no licence to skip the value); NaN on both agrees
    nan_now = present[present.value_now.isna() != present.value_base.isna()].rename(columns={"value_now": "value"})
    both = present.dropna(subset=["value_now", "value_base"]).copy()
    both["tolerance"] = [tolerance_for(r, tolerances, default) for r in both.itertuples()]
    sign = [(-1 if (m in LOWER_IS_BETTER or t == "diag") else 1) for m, t in zip(both.metric, both.task)]
    both["diff"] = both.value_now - both.value_base
    gain = both["diff"] * sign
    exact = both.metric.isin(EXACT)
    regress = (exact & (both["diff"].abs() > 1e-9)) | (~exact & (gain < -both.tolerance - 1e-12))
    improve = ~exact & (gain > both.tolerance + 1e-12)
    return CheckResult(
        regressions=both[regress],
        improvements=both[improve],
        missing_cells=sorted(cells_base - cells_now) + sorted(unfinished & cells_base - (cells_base - cells_now)),
        unexpected_cells=sorted(cells_now - cells_base),
        nan_values=nan_now,
        missing_values=missing_values,
        compared=len(both),
    )


def describe_cell(c):
    return f"{c[0]} · {c[1]} · seed {c[2]} · fold {c[3]}"


def render(result: CheckResult, console, limit=60):
    from rich.markup import escape
    from rich.table import Table

    def table(df, title, style):
        t = Table(title=title, title_style=style)
        for col in ("backbone", "formulation", "seed", "fold", "split", "metric", "baseline", "now", "diff", "tol"):
            t.add_column(col, no_wrap=True)
        for r in df.head(limit).itertuples():
            t.add_row(
                escape(r.backbone),
                escape(r.formulation),
                str(r.seed),
                str(r.fold),
                r.split,
                metric_name(r.task, r.metric, r.cls),
                f"{r.value_base:.4f}",
                f"{r.value_now:.4f}",
                f"{r.diff:+.4f}",
                f"{r.tolerance:g}",
            )
        if len(df) > limit:
            t.caption = f"… and {len(df) - limit} more"
        console.print(t)

    if not result.regressions.empty:
        table(result.regressions, f"REGRESSIONS: {len(result.regressions)} value(s) outside tolerance", "bold red")
        worst = result.regressions.groupby(["backbone", "formulation"]).size()
        for (b, f), n in worst.items():
            console.print(f"[red]regressed:[/] formulation {escape(f)!s} on {escape(b)} ({n} values)")
    if not result.improvements.empty:
        table(
            result.improvements, f"improvements: {len(result.improvements)} value(s) better than the baseline", "green"
        )
    render_structure(result, console, limit)
    verdict = "[bold green]check passed[/]" if result.ok else "[bold red]check FAILED[/]"
    console.print(
        f"{verdict}: {result.compared} values compared, {len(result.regressions)} regression(s), "
        f"{len(result.improvements)} improvement(s), {len(result.missing_cells)} missing and "
        f"{len(result.unexpected_cells)} unexpected cell(s)"
    )


def render_structure(result: CheckResult, console, limit=60) -> None:
    """What fails a check whatever the numbers: cells missing or unexpected, NaN on one side, values absent, and a
    count that must match exactly (support)."""
    from rich.markup import escape

    for c in result.missing_cells:
        console.print(f"[red]missing cell[/] (in the baseline, not finished in this run): {escape(describe_cell(c))}")
    for c in result.unexpected_cells:
        console.print(f"[red]unexpected cell[/] (in this run, not in the baseline): {escape(describe_cell(c))}")
    if result.nan_values is not None and not result.nan_values.empty:
        for r in result.nan_values.head(limit).itertuples():
            side = "this run" if np.isnan(r.value) else "the baseline"
            console.print(
                f"[red]NaN value[/] in {side}: "
                f"{escape(describe_cell((r.backbone, r.formulation, r.seed, r.fold)))} "
                f"{r.split} {metric_name(r.task, r.metric, r.cls)}"
            )
    if result.missing_values is not None and not result.missing_values.empty:
        console.print(
            f"[red]{len(result.missing_values)} baseline value(s) absent from this run[/], e.g. "
            + ", ".join(metric_name(r.task, r.metric, r.cls) for r in result.missing_values.head(5).itertuples())
        )
