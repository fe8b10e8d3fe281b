"""Table 5: the fold-ensemble on the held-out test set (and, with `external`, on an external test set): bootstrap CIs
over patients where the data has them, paired differences against each row's reference, McNemar without patients."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..axes import reference_variant, row_references
from ..bootstrap import cluster_bootstrap, ensemble_metrics
from ..ensembles import FoldPredictions, ensemble, external_sets, few_patient_notes, undefined_notes
from ..load import Run
from ..protocol import protocol_notes
from ..stats import mcnemar_exact
from ..table import Options, Table, ci_text, incomplete, resolve
from .base import Context, register_section


def test_ensemble(run: Run, opts: Options, preds: pd.DataFrame, external: str | None = None) -> Table | None:
    """Table 5: the fold-ensemble on the held-out test set, or (`external`) on that external test set."""
    opts = resolve(run, opts)
    title = (
        "Table 5 — held-out test set, fold-ensemble"
        if external is None
        else f"Table 5c — external test set {external!r}, fold-ensemble"
    )
    if preds.empty:
        return None
    if preds.outputs.isna().any():
        return Table(
            title,
            ["note"],
            [
                [
                    "this run's test predictions carry no formulation outputs (written by an older mesbench): "
                    "no ensemble "
                    "can be decoded by the formulations' own rules, so none is shown"
                ]
            ],
            key="test",
        )
    tp = FoldPredictions.from_frame(preds)
    groups = (run.meta.get("test_groups") if external is None else run.meta.get(f"external_groups:{external}")) or {}
    clustered = bool(groups)
    rows = []
    dropped: dict[str, int] = {}  # metric -> most resamples on which it was undefined (a grade absent)
    refs, along = row_references(run, opts)
    metric_names = ensemble_metrics(run.scale.classes)
    for b in run.backbones:
        ensembles = {f: ensemble(run, tp, b, f) for f in run.formulations}
        for f in run.formulations:
            ref_name = refs.get(f)
            ref = ensembles.get(ref_name) if ref_name else None
            ens = ensembles[f]
            n_cols = len(metric_names) + 3 + (0 if clustered else 1)
            if ens is None:
                rows.append([b, f] + ["—"] * n_cols)
                continue
            codes, y, pred, n_models = ens
            row = [b, f + (" †" if incomplete(run, b, f) else "")]
            if ref is not None and f != ref_name:
                common, ia, ib = np.intersect1d(codes, ref[0], return_indices=True)
                yc, preds_list = y[ia], [ref[2][ib], pred[ia]]
            else:
                common, yc, preds_list = codes, y, [pred]
            clusters = [groups.get(i, i) for i in tp.image_ids[common]] if clustered else np.arange(len(common))
            boot = cluster_bootstrap(yc, preds_list, clusters, opts.n_resamples, k=run.scale.k)
            point, lo, hi = boot
            me = len(preds_list) - 1
            for i, name in enumerate(metric_names):
                if boot.undefined[me, 0, i]:
                    dropped[name] = max(dropped.get(name, 0), int(boot.undefined[me, 0, i]))
            row += [ci_text(point[me, 0, i], lo[me, 0, i], hi[me, 0, i]) for i in range(len(metric_names))]
            if f == ref_name:
                row += ["reference", "reference"]
            elif me == 0:
                row += ["—", "—"]
            else:
                row += [ci_text(point[1, 1, i], lo[1, 1, i], hi[1, 1, i], signed=True) for i in (0, 1)]
            if not clustered:
                if f == ref_name:
                    row.append("reference")
                elif me == 0:
                    row.append("—")
                else:
                    n01, n10, p = mcnemar_exact(yc, preds_list[1], preds_list[0])
                    row.append(f"{n01}/{n10}, p = {p:.3g}")
            row.insert(2, str(n_models))
            rows.append(row)
    by_rule: dict[str, list[str]] = {}
    for f in run.formulations:
        by_rule.setdefault(run.formulation(f).ensemble_rule, []).append(f)
    rules = "; ".join(f"{', '.join(fs)}: {rule}" for rule, fs in by_rule.items())
    if clustered:
        n_pat = len(set(groups.values()))
        ci = (
            f"95% percentile CIs from a patient-level (cluster) bootstrap: the {n_pat} test patients are resampled "
            f"with replacement ({opts.n_resamples} resamples, scipy.stats.bootstrap), since images of one patient are "
            "correlated. Δ = this formulation − the reference, computed on the same resamples (a paired CI of the "
            "difference). McNemar's test is not shown: it assumes independent images."
        )
    else:
        ci = (
            f"This dataset has no patient ids: 95% paired percentile bootstrap CIs over images ({opts.n_resamples} "
            "resamples, scipy.stats.bootstrap); Δ = this − reference on the same resamples. McNemar b/c = images "
            "only this / only the reference gets right; exact, uncorrected."
        )
    notes = [
        f"{'Held-out test set' if external is None else external_text(run, external)}; ensemble = the fold models "
        f"(column 'models') combined and decoded by each formulation's own rule — {rules}.",
        ci,
    ]
    if along:
        notes.append(
            f"Δ{'' if clustered else ' and McNemar'} along the ablation axis {along!r}: each row against the {along} "
            "variant "
            f"{reference_variant(run, opts, along)!r} of its own formulation and backbone (every other setting "
            "identical); the reference rows say 'reference'."
        )
    notes += undefined_notes(dropped, opts.n_resamples, "patient" if clustered else "image")
    if clustered:
        notes += few_patient_notes(tp, groups, run.scale)
    notes += protocol_notes(run, "test")
    against = f"its {along} reference" if along else opts.reference
    columns = (
        ["backbone", "formulation", "models"] + metric_names + [f"Δ accuracy vs {against}", f"Δ macro-F1 vs {against}"]
    )
    if not clustered:
        columns.append(f"McNemar vs {against} (b/c, exact p)")
    return Table(title, columns, rows, notes=notes, key="test" if external is None else f"external:{external}")


def external_text(run: Run, name: str) -> str:
    """What an external set is, in words: its size, what label_map dropped, and the grades it lacks."""
    info = external_sets(run).get(name, {})
    scale = run.scale
    mapping = info.get("mapping") or {}
    mapped = ", ".join(f"{k} → {'dropped' if v is None else scale.classes[v]}" for k, v in mapping.items())
    text = (
        (
            f"External test set {name!r}: "
            if info.get("in_sample")
            else f"External test set {name!r} (another centre; never used for training, model selection or decoding): "
        )
        + f"{info.get('images', '?')} images"
        + (f" of {info['patients']} patients" if info.get("patients") else ", no patient ids")
        + (f", {info['dropped']} more dropped by its label_map" if info.get("dropped") else "")
        + (f"; its classes mapped {mapped}" if mapped else "")
        + ", normalised with each fold's own training statistics as the internal test set"
    )
    if info.get("in_sample"):
        text += (
            f". IN-SAMPLE: {info['in_sample']} of its images are images of the suite's own dataset (identical "
            "pixels), which the models were trained, selected and decoded on, so these numbers are partly in-sample"
        )
    absent = info.get("absent") or []
    if absent:
        text += (
            f". Grades absent from it: {', '.join(absent)} — their recall is absent, not 0, and macro-F1 averages "
            "over the grades present"
        )
    return text


@register_section("test", needs=("test",))
def test(ctx: Context, opts: Options, section) -> None:
    """Table 5 — the held-out test set, each backbone × formulation's fold-ensemble."""
    ctx.table(test_ensemble(ctx.run, opts, ctx.outputs()))
