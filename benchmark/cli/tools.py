"""`bench explain` and `bench perf`."""

from __future__ import annotations

from .console import console


def cmd_explain(args):
    from pathlib import Path

    from ..errors import BenchError
    from ..tools.explain import explain

    if not 1 <= args.per_class <= 50:
        raise BenchError(f"--per-class {args.per_class}: between 1 and 50 images per grade.")
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise BenchError(f"-o {args.output}: a file of that name exists; -o names the folder the Grad-CAM grids go to.")
    from .report import writable_or_refuse

    folder = Path(args.output) if args.output else Path(args.run_dir) / "explain"
    writable_or_refuse(folder, "Grad-CAM grids", "Give -o FOLDER elsewhere for them.")
    written, _, flat = explain(
        args.run_dir,
        args.backbone,
        args.formulation,
        args.fold,
        args.split,
        args.per_class,
        args.head,
        args.output,
        args.device,
        args.store,
    )
    for p in written:
        console.print(f"written: {p}")
    console.print(
        f"{len(flat)} images, {args.per_class} per true grade; `bench report --html` includes "
        "these figures when they are in RUN_DIR/explain."
    )
    return 0


def _add_explain(sub):
    r = sub.add_parser("explain", help="Grad-CAM grids of stored checkpoints, per formulation and head")
    r.add_argument("run_dir", help="run directory written by `bench run`")
    r.add_argument("--backbone", help="backbone whose checkpoints to explain (default: the first)")
    r.add_argument("--formulation", nargs="+", help="formulations to explain (default: all of the run)")
    r.add_argument("--fold", type=int, default=0, help="whose fold model and images (default 0)")
    r.add_argument(
        "--split", choices=["val", "test"], default="val", help="images from the validation part or the test set"
    )
    r.add_argument("--per-class", type=int, default=2, help="images per true grade")
    r.add_argument(
        "--head", default="grade", help="'grade' (every formulation), or a task head of a multi-task formulation"
    )
    r.add_argument("-o", "--output", help="output folder (default RUN_DIR/explain)")
    r.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    r.add_argument("--store", help="results store URL (default: MESBENCH_STORE, else RUN/results.db)")
    r.set_defaults(fn=cmd_explain)


def cmd_perf_cell(args):
    from rich.table import Table

    from ..tools.perf import cell_perf
    from .console import err_console
    from .progress import RunProgress

    h, w = _hw(args.size)
    batch = args.batch or 32
    with RunProgress(0, err_console, enabled=not args.quiet) as progress:  # progress is part of what is timed
        r = cell_perf(
            args.backbone, (h, w), batch, args.images, args.epochs, args.device, args.checkpoint_every, progress
        )
    every = "every epoch" if args.checkpoint_every == 0 else f"every {args.checkpoint_every:g} s of training"
    t = Table(
        title=f"bench perf --cell — {r.backbone} · {w}×{h} · {r.n_train} training / {r.n_val} validation / "
        f"{r.n_test} test images · batch {r.batch} · {r.device} · mean of {r.epochs} epochs, a checkpoint {every}"
    )
    t.add_column("part of an epoch")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    names = {
        "train": "training pass (data path + model)",
        "validate": "validation pass",
        "decode": "decoding + metrics + scheduler",
        "checkpoint": "checkpoint (time the loop waits)",
        "callbacks": "progress + trackers",
    }
    for k, label in names.items():
        t.add_row(label, f"{r.parts[k]:.3f}", f"{100 * r.parts[k] / r.epoch:.1f}%")
    t.add_row("epoch", f"{r.epoch:.3f}", "100%")
    console.print(t)
    console.print(
        f"bare model step over the same {r.n_train} images: {r.bare:.3f} s; training pass / bare step = "
        f"{r.parts['train'] / r.bare:.2f}×"
    )
    console.print(
        f"checkpoint stall: {100 * r.stall_share:.1f}% of the epoch ({r.parts['checkpoint'] * 1000:.0f} ms; one "
        f"synchronous save of the same model + Adam state, {r.sync_save_bytes / 1e6:,.0f} MB, takes "
        f"{r.sync_save:.2f} s = {100 * r.sync_save / r.epoch:.0f}% of the epoch)"
    )
    console.print(
        f"per-epoch fixed cost (decoding, metrics, checkpoint stall, progress): {r.fixed_per_epoch * 1000:.0f} ms"
    )
    before = sum(r.before_first_batch.values())
    after = sum(r.after_last_epoch.values())
    console.print(
        f"per-cell fixed cost: before the first batch {before:.2f} s ("
        + ", ".join(f"{k} {v:.2f}" for k, v in r.before_first_batch.items())
        + f"); after the last epoch {after:.2f} s ("
        + ", ".join(f"{k} {v:.2f}" for k, v in r.after_last_epoch.items())
        + ")"
    )
    return 0


def cmd_perf(args):
    from rich.table import Table

    from ..run.threads import set_threads

    set_threads(args.threads)
    if args.cell:
        return cmd_perf_cell(args)

    from ..tools.perf import run_perf
    from .console import err_console

    h, w = _hw(args.size)
    args.batch = args.batch or 64
    stages = 2 if args.no_model else 4
    done = [0]

    def say(text):
        done[0] += 1
        err_console.print(f"[{done[0]}/{stages}] {text}", highlight=False)

    with err_console.status(f"bench perf: {stages} measurements, each timed after a warm-up pass"):
        plan, path, res, memory = run_perf(
            args.backbone, (h, w), args.batch, args.images, args.device, args.compile, args.no_model, say
        )
    t = Table(title=f"bench perf — {args.images} images {w}×{h}, batch {args.batch}, device {plan.description}")
    t.add_column("measurement")
    t.add_column("images/s", justify="right")
    t.add_column("seconds", justify="right")
    for r in res.values():
        t.add_row(r.name, f"{r.images_per_s:,.1f}", f"{r.seconds:.2f}")
    console.print(t)
    console.print(f"augmentation path on this device: {path}")
    console.print(
        f"ratio (1)/(2) data path vs usual recipe: {res['data'].images_per_s / res['usual'].images_per_s:.2f}×"
    )
    if "harness" in res:
        console.print(
            f"ratio (4)/(3) harness epoch vs bare model step: "
            f"{res['harness'].images_per_s / res['bare'].images_per_s:.3f}×"
        )
        saved = save_rate(args.backbone, (h, w), plan.device.type, res["harness"].images_per_s, plan.description)
        console.print(f"rate saved for `bench plan`'s estimates: {saved}")
    console.print(
        f"memory: {memory}; a decoded cache of full LIMUC (11,276 × {h}×{w}×3 uint8) takes "
        f"{11276 * h * w * 3 / 1e9:.2f} GB (memory-mapped with `dataset.mmap: true`)"
    )
    return 0


def save_rate(backbone: str, size, device: str, images_per_s: float, description: str):
    """The measured training rate, where `bench plan` looks for it (the cache, per device kind, backbone and size)."""
    import json
    from datetime import UTC, datetime

    from ..cli.plan import rate_path

    path = rate_path(backbone, size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"images_per_s": images_per_s, "device": description, "measured": datetime.now(UTC).isoformat()}
    path.write_text(json.dumps(doc))
    return path


def _hw(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        from ..errors import BenchError

        raise BenchError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 352x288.") from None
    return h, w


def _add_perf(sub):
    r = sub.add_parser("perf", help="measure the data path and training epoch against the usual PyTorch recipe")
    r.add_argument("--backbone", default="resnet18", help="timm backbone whose training step is measured")
    r.add_argument("--size", default="352x288", help="WIDTHxHEIGHT (LIMUC native: 352x288)")
    r.add_argument("--batch", type=int, default=None, help="batch size (default 64; --cell: 32)")
    r.add_argument("--images", type=int, default=256, help="synthetic images per measurement")
    r.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--no-model", action="store_true", help="only the data paths (1) and (2)")
    r.add_argument(
        "--cell",
        action="store_true",
        help="one whole cell as `bench run` trains it: where each epoch's time goes, the checkpoint stall, and the "
        "per-cell fixed costs (`--backbone null`: everything but the model)",
    )
    r.add_argument("--epochs", type=int, default=3, help="--cell: epochs timed")
    r.add_argument(
        "--checkpoint-every", type=float, default=0.0, help="--cell: seconds between checkpoints (0: every epoch)"
    )
    r.add_argument("--quiet", action="store_true", help="--cell: no progress display")
    from .console import add_threads_option

    add_threads_option(r)
    r.set_defaults(fn=cmd_perf)


def add_commands(sub):
    _add_explain(sub)
    _add_perf(sub)
