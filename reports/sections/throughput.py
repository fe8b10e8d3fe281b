"""Table 7: where and how fast each backbone × formulation ran."""

from __future__ import annotations

import numpy as np

from ..load import Run
from ..table import Options, Table
from .base import Context, register_section


def throughput(run: Run, opts: Options) -> Table | None:
    """Per backbone × formulation: where it ran, with which numerics, and how fast — a starved GPU shows as a
    low training rate next to a high evaluation rate."""
    rows = []
    for b in run.backbones:
        for f in run.formulations:
            keys = run.cells[
                (run.cells.backbone == b) & (run.cells.formulation == f) & (run.cells.status == "done")
            ].key
            results = [run.result(k) for k in keys]
            results = [r for r in results if r.timings]
            if not results:
                continue
            train = [r.timings.get("train_images_per_s") or 0.0 for r in results]
            evals = [r.timings.get("eval_images_per_s") or 0.0 for r in results]
            peaks = [int(r.timings["peak_memory_bytes"]) for r in results if r.timings.get("peak_memory_bytes")]
            fits = [r.timings["fit_seconds"] for r in results if r.timings.get("fit_seconds") is not None]
            first = results[0]
            params = first.timings.get("params")
            flops = first.timings.get("flops_per_image")
            rows.append(
                [
                    b,
                    f,
                    f"{params / 1e6:,.2f}" if params else "—",
                    f"{flops / 1e9:,.3f}" if flops else "—",
                    first.device_name or first.device or "—",
                    first.amp,
                    "yes" if first.compiled else "no",
                    "yes" if first.deterministic else "no",
                    f"{np.median(train):,.1f}",
                    f"{np.median(evals):,.1f}",
                    (f"{np.median(fits):.2f}" if any(fits) else "0") if fits else "—",
                    f"{max(peaks) / 2**20:,.0f}" if peaks else "—",
                ]
            )
    if not rows:
        return None
    return Table(
        "Table 7 — where and how fast each cell ran",
        [
            "backbone",
            "formulation",
            "parameters (M)",
            "GFLOPs / image",
            "device",
            "AMP",
            "compiled",
            "deterministic",
            "train images/s",
            "eval images/s",
            "decoding fit (s)",
            "peak device memory (MiB)",
        ],
        rows,
        notes=[
            "Parameters: backbone and head; GFLOPs: one forward pass of one image at the size the model saw, "
            "counted by torch's FlopCounterMode (a multiply-add counts 2; — where an operation has no FLOP formula "
            "or for runs recorded before it was counted). "
            "Median over the cells of each row; training rate over each epoch's training pass; evaluation rate "
            "over the model's inference on the validation and test images of the best epoch alone (loading the "
            "checkpoint and fitting the decoding are not in it); decoding fit: seconds spent fitting decoding "
            "parameters such as cut points, cross-fitting included (0 for formulations without fitted decoding; "
            "— for runs recorded before it was measured); peak memory is CUDA's max_memory_allocated since the "
            "cell started (— on the CPU)."
        ],
        key="throughput",
    )


@register_section("throughput")
def throughput_section(ctx: Context, opts: Options, section) -> None:
    """Table 7 — device, numerics, parameters, FLOPs and images/s of each backbone × formulation."""
    ctx.table(throughput(ctx.run, opts))
