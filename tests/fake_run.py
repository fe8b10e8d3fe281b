"""A run directory filled with plausible results without training, for report tests and the report-speed
benchmark (scripts/report-speed). Written through the same `CellResult` -> `Store.finish` path as `bench run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.labels import MES
from benchmark.metrics import all_rows
from benchmark.result import CellResult, SplitPredictions
from benchmark.run.store import Store
from benchmark.suite.cells import expand_cells, protocol_hash
from benchmark.suite.schema import Suite
from formulations import create_formulation

PAPER_BACKBONES = ("resnet18", "resnet50", "densenet121", "inception_v3", "mobilenetv3_large_100")
PAPER_FORMULATIONS = ("softmax", "regression", "coral", "corn", "mtl", "mtl+f1")
LIMUC_SHARES = np.array([0.541, 0.271, 0.111, 0.077])


def write_fake_run(
    path,
    backbones=PAPER_BACKBONES,
    formulations=PAPER_FORMULATIONS,
    folds=10,
    n_val=960,
    n_test=1692,
    seed=0,
    skill=None,
    n_patients=86,
    val_predictions=False,
) -> Path:
    """`skill` maps formulation -> probability of a correct prediction (default: rising with list position)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    suite = Suite.model_validate(
        {
            "name": "fake",
            "dataset": {"name": "synthetic"},
            "protocol": {"kind": "grouped", "folds": folds},
            "backbones": list(backbones),
            "formulations": list(formulations),
        }
    )
    store = Store(path)
    store.set_meta("protocol_hash", protocol_hash(suite))
    store.set_meta("suite", suite.model_dump(mode="json"))
    store.set_meta("n_folds", folds)
    store.set_meta("split_kind", "patient-grouped")
    store.set_meta("fold_sizes", {i: [8640, n_val] for i in range(folds)})
    store.set_meta(
        "dataset",
        {
            "name": "fake",
            "images": 11276,
            "image_size": [288, 352],
            "class_counts": [6105, 3052, 1254, 865],
            "patients": 564,
            "n_test": n_test,
        },
    )
    y_test = rng.choice(MES.k, size=n_test, p=LIMUC_SHARES)
    test_ids = np.array([f"test/{i}" for i in range(n_test)])
    store.set_meta("test_groups", {i: f"p{j % n_patients}" for j, i in enumerate(test_ids)})
    skill = skill or {f.display: 0.6 + 0.05 * j for j, f in enumerate(suite.formulations)}
    for cell in expand_cells(suite, folds):
        store.claim(
            cell.key,
            {
                "backbone": cell.backbone.name,
                "formulation": cell.formulation.display,
                "seed": cell.seed,
                "fold": cell.fold,
                "config_hash": cell.key,
            },
        )
        form = create_formulation(cell.formulation.name, cell.options)
        p_ok = skill.get(cell.formulation.display, 0.7)
        result = CellResult(
            n_train=8640,
            n_val=n_val,
            n_test=n_test,
            device="fake",
            state=form.initial_state(),
            history=[
                {
                    "epoch": e + 1,
                    "train_loss": 1 / (e + 1),
                    "val_loss": 1.2 / (e + 1) + 0.1,
                    "val_macro_f1": 0.5,
                    "val_accuracy": 0.6,
                    "val_qwk": 0.7,
                    "lr": 2e-4,
                }
                for e in range(30)
            ],
        )
        for split, y in (("val", rng.choice(MES.k, size=n_val, p=LIMUC_SHARES)), ("test", y_test)):
            pred = np.where(rng.random(len(y)) < p_ok, y, np.clip(y + rng.choice([-1, 1], len(y)), 0, MES.k - 1))
            outputs = form.example_outputs(pred, 0.7)
            dec = form.decode_outputs(outputs, result.state)
            rows, cm = all_rows(y, dec.pred, dec.task_preds, form.tasks, dec.proba)
            result.metrics += [{"split": split, "task": t, "metric": m, "cls": c, "value": v} for t, m, c, v in rows]
            result.confusion[split] = cm.tolist()
            if split == "test" or val_predictions:
                ids = test_ids if split == "test" else np.array([f"val/{cell.fold}/{i}" for i in range(n_val)])
                result.predictions[split] = SplitPredictions(
                    ids, y, dec.pred, outputs, dec.proba, dec.score, dec.task_preds
                )
        store.finish(cell.key, result)
    return path
