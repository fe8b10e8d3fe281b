"""Tables 5c and 5d: each external test set (`test_sets:`) — its own Table 5, and the drop from the internal test
set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..ensembles import FoldPredictions, ensemble, external_sets
from ..load import Run
from ..table import Options, Table, ci_text, incomplete, resolve
from .base import Context, register_section
from .test import test_ensemble

DROP_METRICS = ("accuracy", "macro-F1", "QWK")


def external_drop(run: Run, opts: Options, internal: pd.DataFrame, external: pd.DataFrame, name: str) -> Table | None:
    """The drop from the internal to an external test set: for each backbone × formulation, the fold-ensemble's
    metric on the external set minus that on the internal one, with a CI from resampling the two sets independently
    (each by its patients where it has them, else by image)."""
    from ..bootstrap import independent_difference

    opts = resolve(run, opts)
    if internal.empty or external.empty or internal.outputs.isna().any() or external.outputs.isna().any():
        return None
    ti, te = FoldPredictions.from_frame(internal), FoldPredictions.from_frame(external)
    gi = run.meta.get("test_groups") or {}
    ge = run.meta.get(f"external_groups:{name}") or {}
    rows = []
    for b in run.backbones:
        for f in run.formulations:
            a, e = ensemble(run, ti, b, f), ensemble(run, te, b, f)
            if a is None or e is None:
                rows.append([b, f] + ["—"] * len(DROP_METRICS))
                continue
            ca = [gi.get(i, i) for i in ti.image_ids[a[0]]] if gi else np.arange(len(a[0]))
            ce = [ge.get(i, i) for i in te.image_ids[e[0]]] if ge else np.arange(len(e[0]))
            res = independent_difference(a[1], a[2], ca, e[1], e[2], ce, run.scale.k, opts.n_resamples)
            rows.append(
                [b, f + (" †" if incomplete(run, b, f) else "")]
                + [ci_text(res.point[i], res.low[i], res.high[i], signed=True) for i in range(len(DROP_METRICS))]
            )
    units = ("patients" if gi else "images", "patients" if ge else "images")
    notes = [
        f"Δ = the fold-ensemble's metric on the external test set {name!r} − on the held-out (internal) test set, each "
        "decoded by the formulation's own rule; negative: worse at the other centre.",
        f"95% percentile CIs from {opts.n_resamples} bootstrap resamples drawn independently from the two sets "
        f"(internal by {units[0]}, external by {units[1]}; scipy.stats.bootstrap, paired=False): the sets share no "
        "image or patient.",
    ]
    return Table(
        f"Table 5d — from the internal to the external test set {name!r}",
        ["backbone", "formulation"] + [f"Δ {m}" for m in DROP_METRICS],
        rows,
        notes=notes,
        key=f"external_drop:{name}",
    )


@register_section("external", needs=("test",), follows="test")
def external(ctx: Context, opts: Options, section) -> None:
    """Tables 5c and 5d — each external test set's fold-ensemble, and its drop from the internal test set."""
    run = ctx.run
    for name in external_sets(run):
        preds = ctx.outputs(f"external:{name}")
        ctx.table(test_ensemble(run, opts, preds, external=name))
        ctx.table(external_drop(run, opts, ctx.outputs(), preds, name))
