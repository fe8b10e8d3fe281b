"""`bench plan SUITE`: everything that can be checked without training, in seconds — the suite, its data paths, label
maps and test sets, every backbone at its input size on the meta device, pretrained weights — then the cells along
every axis, which of them a run directory already holds, and an estimate of the training time. Nothing is written."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from rich.markup import escape

from ..errors import BenchError
from .console import add_set_option, console, err_console

CPU_GFLOPS_PER_THREAD = 20.0  # an assumed sustained rate when nothing was measured; said with the estimate
GPU_TFLOPS = 25.0


def native_size(suite) -> tuple[int, int] | None:
    """The images' size without decoding them: the dataset's resize, the synthetic size, or the first file's header."""
    from PIL import Image

    from ..data.inspect import listed_files

    d = suite.dataset
    if d.resize is not None:
        return int(d.resize[0]), int(d.resize[1])
    if d.name == "synthetic":
        h, w = d.params.get("size", [64, 64])
        return int(h), int(w)
    files = listed_files(d)
    if not files:
        return None
    with Image.open(files[0]) as im:
        return im.size[1], im.size[0]


def n_images(suite) -> int | None:
    from ..data.inspect import listed_files

    if suite.dataset.name == "synthetic":
        return int(suite.dataset.params.get("n_images", 800))
    return len(listed_files(suite.dataset)) or None


def rate_path(backbone: str, size, device: str) -> Path:
    from ..data.dataset import cache_dir

    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in backbone)
    return cache_dir() / "perf" / f"{device}-{name}-{int(size[0])}x{int(size[1])}.json"


def measured_rate(backbone: str, size, device: str) -> float | None:
    """Training images per second `bench perf` measured for this backbone, size and device kind, if it did."""
    import json

    try:
        return float(json.loads(rate_path(backbone, size, device).read_text())["images_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_plan(args):
    import time

    t0 = time.perf_counter()
    from ..suite.loading import cell_count, check_data_paths, read_suite_doc, validate_suite

    problems: list[str] = []
    doc = read_suite_doc(args.suite, args.set)
    suite = validate_suite(doc, str(args.suite))  # the suite itself: a wrong one is refused here, with its line
    try:
        check_data_paths(suite, doc, str(args.suite))
        paths_ok = "data paths ✓"
    except BenchError as exc:
        problems.append(str(exc))
        paths_ok = "data paths ✗"
    checks = ["suite ✓", paths_ok]
    size = native_size(suite) if paths_ok.endswith("✓") else None
    n = n_images(suite) if paths_ok.endswith("✓") else None
    scale = suite.declared_scale()
    if suite.test_sets:
        checks.append(_check_test_sets(suite, scale, problems))
    from ..suite.cells import expand_cells

    folds = suite.protocol.folds * (1 if suite.protocol.kind == "polat" else suite.protocol.repeats)
    total = cell_count(suite)
    cells = expand_cells(suite, folds) if total <= 20_000 else []
    stage1 = [c for c in cells if not c.depends]
    stage2 = [c for c in cells if c.depends]
    added = sum(not c.listed for c in stage1)
    console.print(
        f"[bold]bench plan[/] {escape(str(args.suite))}: suite {escape(suite.name)!r} — dataset {suite.dataset.name}"
        + (f", {n} images" if n else "")
        + (f" of {size[0]}×{size[1]}" if size else "")
        + (f", grades {escape(', '.join(scale.classes))}" if scale else "")
    )
    repeated = folds > suite.protocol.folds
    axes = [
        f"{len(suite.backbones)} backbone(s)",
        f"{len(suite.formulations)} formulation(s)",
        *(f"{len(v)} {axis} variant(s)" for axis, v in suite.variants.items()),
        f"{folds} fold(s)" + (f" ({suite.protocol.folds} × {suite.protocol.repeats} repeats)" if repeated else ""),
        f"{len(suite.training.seeds)} seed(s)",
    ]  # fmt: skip
    console.print(f"cells: {total:,} = " + " × ".join(axes))
    if cells:
        console.print(
            f"  order: {len(stage1)} stage-1 cell(s) first"
            + (f" ({added} added as the stage 1 of fine-tuned formulations)" if added else "")
            + (f", then {len(stage2)} fine-tuned cell(s), each after its own stage 1" if stage2 else "")
        )
        by_b = Counter(c.backbone.name for c in cells)
        by_f = Counter(c.display for c in cells)
        console.print("  per backbone: " + ", ".join(f"{escape(k)} {v}" for k, v in by_b.items()))
        console.print("  per formulation: " + ", ".join(f"{escape(k)} {v}" for k, v in by_f.items()))
    out = Path(args.out) if args.out else Path("runs") / suite.name
    _done_so_far(out, cells)
    # What needs torch and timm (seconds of imports) comes after what the suite alone says.
    console.print(f"[dim]cells counted in {time.perf_counter() - t0:.1f} s; checking the backbones and weights…[/]")
    checks.append(_check_backbones(suite, size, problems))
    checks.append(_check_weights(suite, problems))
    console.print("checks: " + ", ".join(checks))
    if cells and size and n:
        console.print(_estimate(suite, cells, size, n, folds))
    console.print(f"[dim]planned in {time.perf_counter() - t0:.1f} s; nothing was written[/]")
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s) would stop this run:[/]")
        for p in problems:
            err_console.print(f"  - {p}", highlight=False, markup=False)
        return 2
    return 0


def _check_test_sets(suite, scale, problems: list[str]) -> str:
    """Each external set's classes against its label_map, where its classes are known without loading it."""
    from ..data.external import class_mapping
    from ..suite.schema import dataset_scale

    ok = True
    for t in suite.test_sets:
        own = dataset_scale(t.dataset)
        if own is None or scale is None:
            continue  # a manifest's classes are known once it is read: `bench data inspect SUITE` reads it
        classes = tuple(t.dataset.class_dirs) if t.dataset.name == "folder" else tuple(own.classes)
        try:
            class_mapping(classes, t.label_map, scale, f"test_sets[{t.name}]")
        except BenchError as exc:
            problems.append(str(exc))
            ok = False
    return "test sets ✓" if ok else "test sets ✗"


def _check_backbones(suite, size, problems: list[str]) -> str:
    """Every backbone (variants included) at the size it will see, on the meta device: no weights, no memory."""
    from backbones import check_input_size, resize_target

    ok = True
    for b in suite.every_backbone():
        try:
            target = resize_target(b.name, b.input_size)
            if target is None and size is None:
                continue
            check_input_size(b.name, target or size, resized=target is not None)
        except BenchError as exc:
            problems.append(str(exc))
            ok = False
    return "backbones at their input size ✓" if ok else "backbones ✗"


def _check_weights(suite, problems: list[str]) -> str:
    """Pretrained weights: a local file, the cache, or a download at the run's start (refused offline)."""
    from backbones import cached_weights, offline, resolve

    wanted = [b for b in suite.every_backbone() if b.pretrained]
    if not wanted:
        return "no pretrained weights needed"
    missing = []
    for b in wanted:
        if b.weights and not b.weights.startswith(("http://", "https://")):
            if not Path(b.weights).expanduser().is_file():
                problems.append(f"backbone {b.name}: weights file {b.weights!r} does not exist")
            continue
        if b.weights is None and cached_weights(resolve(b.name).timm_name) is None:
            missing.append(b.name)
    if missing and offline():
        problems.append(
            f"pretrained weights of {', '.join(missing)} are not in the cache and this run is offline: give "
            "`weights:` files or fetch them (`bench weights fetch SUITE`) where there is internet"
        )
    return f"weights: {len(missing)} to download at the start" if missing else "weights present ✓"


def _done_so_far(out: Path, cells) -> None:
    if not (out / "results.db").is_file():
        console.print(f"run directory {escape(str(out))}: not there yet — every cell is to be trained")
        return
    from ..run.store import Store
    from .status import partial_progress

    store = Store(out, create=False, readonly=True)
    try:
        rows = {r["key"]: r for r in store.cell_rows()}
    finally:
        store.close()
    keys = {c.key for c in cells}
    status = Counter(rows[k]["status"] if k in rows else "pending" for k in keys)
    partial = sum(1 for k in keys if rows.get(k, {}).get("status") != "done" and partial_progress(out, k))
    console.print(
        f"run directory {escape(str(out))}: {status.get('done', 0)} done, {status.get('failed', 0)} failed, "
        f"{status.get('running', 0)} running, {status.get('pending', 0)} pending"
        + (f" ({partial} partly trained: they resume from their last saved epoch)" if partial else "")
    )


def _estimate(suite, cells, size, n: int, folds: int) -> str:
    """Training time from `bench perf`'s measured rate per backbone where there is one, else from FLOPs at an
    assumed rate; both said."""
    from backbones import flops_per_image, resize_target

    from ..run.threads import available_cores

    device = "cuda" if _cuda() else "cpu"
    n_trainval = n * (1 - suite.protocol.test_fraction)
    per_epoch = n_trainval * (1 - 1 / max(folds, 2)) + n_trainval / max(folds, 2) / 3  # evaluation ≈ ⅓ of a step
    seconds, sources = 0.0, set()
    rates: dict[str, float | None] = {}
    for c in cells:
        b = c.backbone
        seen = resize_target(b.name, b.input_size) or size
        key = f"{b.name}@{seen}"
        if key not in rates:
            rate = measured_rate(b.name, seen, device)
            if rate is None:
                flops = flops_per_image(b.name, seen)
                threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or available_cores()
                speed = GPU_TFLOPS * 1e12 if device == "cuda" else CPU_GFLOPS_PER_THREAD * 1e9 * threads
                rate = speed / (3 * flops) if flops else None
                sources.add(
                    f"FLOPs at an assumed {GPU_TFLOPS:g} TFLOP/s" if device == "cuda"
                    else f"FLOPs at an assumed {CPU_GFLOPS_PER_THREAD:g} GFLOP/s per thread × {threads}"
                )  # fmt: skip
            else:
                sources.add("`bench perf` measurements")
            rates[key] = rate
        if rates[key]:
            tc = c.training or suite.training
            epochs = (
                (c.formulation.finetune_options.epochs or tc.finetune_epochs or tc.epochs) if c.depends else tc.epochs
            )
            seconds += epochs * per_epoch / rates[key]
    hours = seconds / 3600
    when = f"{hours:.1f} h" if hours >= 1.5 else f"{seconds / 60:.0f} min"
    return (
        f"estimate: at most ≈ {when} of training on this machine's {device} if every cell runs all its epochs "
        f"(early stopping shortens it), from {' and '.join(sorted(sources))}; `bench perf --backbone NAME` measures "
        "a backbone's rate here"
    )


def _cuda() -> bool:
    import sys

    if "torch" not in sys.modules:  # no backbone needed torch: an NVIDIA driver is what says there is a GPU
        return Path("/proc/driver/nvidia/version").exists()
    import torch

    return bool(torch.cuda.is_available())


def add_commands(sub):
    p = sub.add_parser("plan", help="check a suite and its data without training; list and count its cells")
    p.add_argument("suite", help="suite YAML file")
    p.add_argument("--out", help="run directory to compare with (default runs/<suite name>); nothing is written")
    add_set_option(p)
    p.set_defaults(fn=cmd_plan)
