"""A run directory filled with plausible results without training: for report benchmarks and tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmark.cells import expand_cells, protocol_hash
from benchmark.config import Suite
from benchmark.metrics import grade_metrics, task_metrics
from benchmark.store import Store


def write_fake_run(path, backbones=("resnet18", "resnet50", "densenet121", "inception_v3", "mobilenetv3_large_100"),
                   formulations=("softmax", "regression", "coral", "corn", "mtl", "mtl+f1"), folds=10, n_val=960,
                   n_test=1692, seed=0, skill=None) -> Path:
    """`skill` maps formulation -> probability of a correct prediction (default: rising with list position)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    suite = Suite.model_validate({"name": "fake", "dataset": {"name": "synthetic"},
                                  "protocol": {"kind": "grouped", "folds": folds},
                                  "backbones": list(backbones), "formulations": list(formulations)})
    store = Store(path)
    store.set_meta("protocol_hash", protocol_hash(suite))
    store.set_meta("suite", suite.model_dump(mode="json"))
    store.set_meta("n_folds", folds)
    store.set_meta("split_kind", "patient-grouped")
    store.set_meta("dataset", {"name": "fake", "images": 11276, "image_size": [288, 352],
                               "class_counts": [6105, 3052, 1254, 865], "patients": 564, "n_test": n_test})
    shares = np.array([0.541, 0.271, 0.111, 0.077])
    y_test = rng.choice(4, size=n_test, p=shares)
    test_ids = [f"test/{i}" for i in range(n_test)]
    skill = skill or {f.display: 0.6 + 0.05 * j for j, f in enumerate(suite.formulations)}
    for cell in expand_cells(suite, folds):
        store.claim(cell.key, {"backbone": cell.backbone.name, "formulation": cell.formulation.display,
                               "seed": cell.seed, "fold": cell.fold, "config_hash": cell.key})
        p_ok = skill.get(cell.formulation.display, 0.7)
        metric_rows, pred_rows, confusion = [], [], {}
        for split, y in (("val", rng.choice(4, size=n_val, p=shares)), ("test", y_test)):
            pred = np.where(rng.random(len(y)) < p_ok, y, np.clip(y + rng.choice([-1, 1], len(y)), 0, 3))
            rows, cm = grade_metrics(y, pred)
            if cell.formulation.name == "mtl":
                rows += task_metrics("primary", (y >= 2).astype(int), (pred >= 2).astype(int), 2)
                rows += task_metrics("remission", np.where(y <= 1, y, -1), np.clip(pred, 0, 1), 2)
                rows += task_metrics("active", np.where(y >= 2, y - 2, -1), np.clip(pred - 2, 0, 1), 2)
            metric_rows += [{"split": split, "task": t, "metric": m, "cls": c, "value": v} for t, m, c, v in rows]
            confusion[split] = cm.tolist()
            if split == "test":
                proba = np.full((len(y), 4), 0.1)
                proba[np.arange(len(y)), pred] = 0.7
                for i, image_id in enumerate(test_ids):
                    pred_rows.append({"split": split, "image_id": image_id, "y_true": int(y[i]), "y_pred": int(pred[i]),
                                      "p0": proba[i, 0], "p1": proba[i, 1], "p2": proba[i, 2], "p3": proba[i, 3],
                                      "score": None, "aux": None})
        history = [{"epoch": e + 1, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1) + 0.1, "val_macro_f1": 0.5,
                    "val_accuracy": 0.6, "val_qwk": 0.7, "lr": 2e-4} for e in range(30)]
        store.finish(cell.key, {"history": history, "n_train": 8640, "n_val": n_val, "n_test": n_test,
                                "confusion": confusion, "device": "fake", "versions": {}, "state": {},
                                "finished": time.time()}, metric_rows, pred_rows)
    return path
