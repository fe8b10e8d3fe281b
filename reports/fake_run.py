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
    store.set_meta("fold_sizes", {i: [8640, n_val] for i in range(folds)})
    shares = np.array([0.541, 0.271, 0.111, 0.077])
    y_test = rng.choice(4, size=n_test, p=shares)
    test_ids = [f"test/{i}" for i in range(n_test)]
    store.set_meta("test_groups", {i: f"p{j % 86}" for j, i in enumerate(test_ids)})
    from formulations import create_formulation
    skill = skill or {f.display: 0.6 + 0.05 * j for j, f in enumerate(suite.formulations)}
    for cell in expand_cells(suite, folds):
        store.claim(cell.key, {"backbone": cell.backbone.name, "formulation": cell.formulation.display,
                               "seed": cell.seed, "fold": cell.fold, "config_hash": cell.key})
        p_ok = skill.get(cell.formulation.display, 0.7)
        metric_rows, pred_rows, confusion = [], [], {}
        for split, y in (("val", rng.choice(4, size=n_val, p=shares)), ("test", y_test)):
            pred = np.where(rng.random(len(y)) < p_ok, y, np.clip(y + rng.choice([-1, 1], len(y)), 0, 3))
            rows, cm = grade_metrics(y, pred)
            tasks = create_formulation(cell.formulation.name, cell.formulation.options).tasks
            for name, task in tasks.items():
                if name != "mes":  # a task's prediction: the task label of the predicted grade (clipped into it)
                    labels = np.asarray(task.labels)
                    valid = np.flatnonzero(labels >= 0)
                    nearest = valid[np.abs(pred[:, None] - valid[None, :]).argmin(1)]
                    rows += task_metrics(name, task.target(y), labels[nearest], len(task.classes))
            metric_rows += [{"split": split, "task": t, "metric": m, "cls": c, "value": v} for t, m, c, v in rows]
            confusion[split] = cm.tolist()
            if split == "test":
                form = create_formulation(cell.formulation.name, cell.formulation.options)
                outputs = form.example_outputs(pred, 0.7)
                for i, image_id in enumerate(test_ids):
                    pred_rows.append({"split": split, "image_id": image_id, "y_true": int(y[i]), "y_pred": int(pred[i]),
                                      "p0": None, "p1": None, "p2": None, "p3": None, "score": None, "aux": None,
                                      "outputs": outputs[i].tobytes()})
        history = [{"epoch": e + 1, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1) + 0.1, "val_macro_f1": 0.5,
                    "val_accuracy": 0.6, "val_qwk": 0.7, "lr": 2e-4} for e in range(30)]
        store.finish(cell.key, {"history": history, "n_train": 8640, "n_val": n_val, "n_test": n_test,
                                "confusion": confusion, "device": "fake", "versions": {},
                                "state": create_formulation(cell.formulation.name, cell.formulation.options)
                                .initial_state(),
                                "finished": time.time()}, metric_rows, pred_rows)
    return path
