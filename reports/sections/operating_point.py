"""Table 8b: each grade's sensitivity at a fixed specificity (`--specificity`), the threshold read off validation."""

from __future__ import annotations

import numpy as np

from ..calibration import CalibrationData
from ..load import Run
from ..protocol import mark_in_sample, protocol_notes
from ..table import Options, Table
from .base import Context, register_section


def operating_points(run: Run, opts: Options, data: CalibrationData) -> Table | None:
    """Sensitivity of each grade (one vs the rest, score = its class probability) at a fixed specificity: the
    threshold is read off the pooled validation ROC (the highest sensitivity whose validation specificity reaches
    the target), then the held-out test fold-ensemble is scored at it — its realised specificity printed beside,
    since a threshold chosen elsewhere need not hold it exactly."""
    from sklearn.metrics import roc_curve

    if not data.val or not data.test:
        return None
    target = opts.specificity
    rows = []
    unreachable: set[str] = set()
    for b in run.backbones:
        for f in run.formulations:
            keys = data.cells(run, b, f)
            ens = data.test_ensemble(keys) if keys else None
            if ens is None:
                continue
            yv, pv = data.pooled_val(keys)
            yt, pt = ens
            row = [b, mark_in_sample(run, "val", f)]
            for k in run.scale.grades:
                if not (yv == k).any() or (yv == k).all() or not (yt == k).any() or (yt == k).all():
                    row.append("—")
                    continue
                fpr, tpr, thr = roc_curve(yv == k, pv[:, k])
                ok = np.flatnonzero(fpr <= 1 - target + 1e-12)
                t = thr[ok[np.argmax(tpr[ok])]]
                hit = pt[:, k] >= t
                sens = hit[yt == k].mean()
                spec = 1 - hit[yt != k].mean()
                if np.isinf(t):  # roc_curve's first point: no threshold reaches the specificity but flagging none
                    unreachable.add(run.scale.classes[k])
                row.append(f"{sens:.3f} (spec {spec:.3f}, t = {'none' if np.isinf(t) else f'{t:.3f}'})")
            rows.append(row)
    if not rows:
        return None
    extra = []
    if unreachable:
        extra.append(
            f"t = none ({', '.join(sorted(unreachable))}): on validation no threshold reaches specificity {target:g} "
            "except one above every score, so no test image is called that grade (sensitivity 0, specificity 1): at "
            "this specificity the model cannot flag it. A lower --specificity finds an operating point."
        )
    return Table(
        f"Table 8b — sensitivity per grade at specificity {target:g} (held-out test set, fold-ensemble)",
        ["backbone", "formulation"] + [f"{c} sensitivity" for c in run.scale.classes],
        rows,
        notes=[
            f"One grade against the rest, scored by its class probability. Operating point: the threshold t with the "
            f"highest validation sensitivity among those whose validation specificity is at least {target:g} (every "
            "validation image of the fold models pooled; --specificity). At t, the fold-ensemble's probabilities (the "
            "mean of the fold models') on the held-out test set give the sensitivity shown, with the test "
            "specificity realised beside it: the test set chooses nothing.",
            f"For {run.scale.classes[-1]} a false negative (a severe case graded lower) is the costly error: its "
            "column is the sensitivity a screening use would get at this specificity.",
        ]
        + extra
        + [n for n in protocol_notes(run, "val") if n.startswith("‡")],
        key="operating_point",
    )


@register_section("operating_point", needs=("test",))
def operating_point(ctx: Context, opts: Options, section) -> None:
    """Table 8b — sensitivity per grade at a validation-chosen specificity, on the test fold-ensemble."""
    ctx.table(operating_points(ctx.run, opts, ctx.calibration()), section.title)
