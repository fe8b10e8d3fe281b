"""`bench tune`: Optuna search of the hierarchical model's joint-loss weights α, β, γ.

The weights live on the simplex (each ≥ 0, sum 1) through stick-breaking of two Optuna floats
u, v ∈ [0, 1]: α = 1 − √(1 − u), β = (1 − α)·v, γ = 1 − α − β — one-to-one onto the simplex (no
wasted or duplicate region) and uniform when u, v are. The objective is the mean over the first K cross-validation folds of a validation metric;
each epoch's value is reported to a median pruner. The held-out test set is never touched: the
cells of a trial get an empty test part. Storage is SQLite in the output directory by default,
so re-running continues the study; a PostgreSQL URL lets several workers share one study.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from formulations import create_formulation

from .augment import channel_stats
from .config import FormulationConfig, Suite, dump_suite
from .data import load_dataset
from .device import pick_device
from .errors import BenchError, CellFailed
from .metrics import grade_metrics, parse_metric, task_metrics
from .protocol import make_splits, record_splits
from .runner import batch_size_for, input_size_for, preflight
from .training import CellData, Schedule, build_model, train_cell

WEIGHT_KEYS = ("alpha", "beta", "gamma")


def simplex_from_unit(u: float, v: float) -> tuple[float, float, float]:
    """Stick-breaking with a uniform image on the simplex: α = 1 − √(1 − u), β = (1 − α)·v, γ = rest."""
    alpha = 1.0 - math.sqrt(1.0 - u)
    beta = (1.0 - alpha) * v
    gamma = 1.0 - alpha - beta
    return alpha, beta, max(gamma, 0.0)


def metric_value(key, y, pred, task_preds, formulation) -> float:
    task, metric, cls = key
    if task in ("mes", "ra"):
        rows, _ = grade_metrics(y, pred)
    else:
        spec = formulation.tasks.get(task)
        if spec is None or task not in task_preds:
            raise BenchError(f"metric {task}.{metric}: formulation {formulation.name!r} has no task {task!r}.")
        rows = task_metrics(task, spec.target(torch.as_tensor(y)).numpy(), task_preds[task], len(spec.classes))
    for t, m, c, v in rows:
        if (t, m, c) == key:
            return float(v)
    raise BenchError(f"metric {key} not computed")


def known_metrics(formulation) -> set:
    y = np.array([0, 1, 2, 3])
    keys = {(t, m, c) for t, m, c, _ in grade_metrics(y, y)[0]}
    for name, spec in formulation.tasks.items():
        if name != "mes":
            keys |= {(t, m, c) for t, m, c, _ in task_metrics(name, np.array([0, 1]), np.array([0, 1]),
                                                               len(spec.classes))}
    return keys


class Tuner:
    def __init__(self, suite: Suite, out: Path, backbone=None, formulation="mtl", metric="macro_f1", folds=None,
                 storage=None, study=None, device=None, seed=0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.suite, self.out = suite, Path(out)
        names = [b.name for b in suite.backbones]
        if backbone and backbone not in names:
            from .errors import closest

            raise BenchError(f"--backbone {backbone!r} is not in suite {suite.name!r}: {closest(backbone, names)}.")
        self.backbone = next(b for b in suite.backbones if b.name == (backbone or names[0]))
        base = next((f for f in suite.formulations if f.name == formulation and not f.finetune), None)
        self.fcfg = base or FormulationConfig(name=formulation)
        if "alpha" not in create_formulation(self.fcfg.name).defaults:
            raise BenchError(f"--formulation {formulation!r} has no joint-loss weights alpha/beta/gamma to tune; "
                             "use a hierarchical formulation such as 'mtl'.")
        self.metric_name = metric
        self.metric = parse_metric(metric, known_metrics(create_formulation(self.fcfg.name)))
        preflight(suite)
        self.dataset = load_dataset(suite.dataset)
        self.out.mkdir(parents=True, exist_ok=True)
        self.splits = record_splits(self.out / "splits.json", make_splits(self.dataset, suite.protocol), self.dataset)
        n = len(self.splits.folds)
        self.k = min(folds or n, n)
        if folds is not None and folds < 1:
            raise BenchError(f"--folds must be at least 1 (got {folds}).")
        self.plan = pick_device(device)
        self.storage = storage or f"sqlite:///{(self.out / 'tune.db').resolve()}"
        self.study_name = study or f"{suite.name}-{self.backbone.name}-{self.fcfg.name}-{metric}"
        self.study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, load_if_exists=True, direction="minimize"
            if self.metric[1] == "mae" else "maximize", sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))

    def objective(self, trial):
        u = trial.suggest_float("u", 0.0, 1.0)
        v = trial.suggest_float("v", 0.0, 1.0)
        weights = dict(zip(WEIGHT_KEYS, simplex_from_unit(u, v)))
        for k, w in weights.items():
            trial.set_user_attr(k, w)
        options = {**self.fcfg.options, **weights}
        cfg = self.suite.training
        values, step = [], 0
        for fold in range(self.k):
            formulation = create_formulation(self.fcfg.name, options)
            train, val = self.splits.folds[fold]
            mean, std = channel_stats(self.dataset.images, train)
            # no held-out test images: tuning must never see them
            data = CellData(self.dataset.images, self.dataset.labels, self.dataset.ids, train, val,
                            np.array([], dtype=np.int64), mean, std)
            model, native = build_model(self.backbone, formulation, cfg.seeds[0])

            def on_epoch(row, fold=fold):
                nonlocal step
                trial.report(row["objective"], step)
                step += 1
                if trial.should_prune():
                    raise self.optuna.TrialPruned(f"pruned at fold {fold}, epoch {row['epoch']}")

            metric = lambda y, p, tp, f=formulation: metric_value(self.metric, y, p, tp, f)  # noqa: E731
            sched = Schedule(cfg.epochs, cfg.lr, batch_size_for(self.suite, self.backbone), on_epoch=on_epoch,
                             objective=metric)
            outcome = train_cell(model, formulation, data, cfg, sched, self.plan, cfg.seeds[0],
                                 self.out / "trials" / f"{trial.number:04d}" / f"fold{fold}",
                                 input_size_for(self.backbone) or native)
            pred = outcome.predictions["val"]
            values.append(metric_value(self.metric, pred["y"], pred["pred"], pred["task_preds"], formulation))
        return float(np.mean(values))

    def optimize(self, trials, timeout=None):
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.study.optimize(self.objective, n_trials=trials, timeout=timeout, catch=(CellFailed,))
        return self.study

    def best_weights(self):
        best = self.study.best_trial
        return {k: best.user_attrs[k] for k in WEIGHT_KEYS}

    def write_override(self) -> Path:
        """A suite that `bench run` accepts: the original plus the tuned formulation, labelled `[tuned]`."""
        tuned = FormulationConfig(name=self.fcfg.name, label=f"{self.fcfg.display}[tuned]",
                                  options={**self.fcfg.options, **self.best_weights()})
        forms = [f for f in self.suite.formulations if f.display != tuned.display] + [tuned]
        suite = self.suite.model_copy(update={"formulations": forms})
        path = self.out / f"{self.suite.name}.tuned.yaml"
        path.write_text(f"# written by bench tune: study {self.study_name!r}, best {self.metric_name} = "
                        f"{self.study.best_value:.4f}\n" + dump_suite(suite))
        return path

    def figures(self) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        done = [t for t in self.study.trials if t.state.name == "COMPLETE"]
        paths = []
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        best = np.maximum.accumulate(ys) if self.study.direction.name == "MAXIMIZE" else np.minimum.accumulate(ys)
        ax.plot(xs, ys, "o", label="trial")
        ax.plot(xs, best, "-", label="best so far")
        pruned = [t.number for t in self.study.trials if t.state.name == "PRUNED"]
        if pruned:
            ax.plot(pruned, [min(ys or [0])] * len(pruned), "x", color="grey", label="pruned")
        ax.set_xlabel("trial")
        ax.set_ylabel(self.metric_name)
        ax.legend()
        ax.set_title("Optimisation history")
        paths.append(self.out / "optimization_history.png")
        fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        w = np.array([[t.user_attrs[k] for k in WEIGHT_KEYS] for t in done]) if done else np.zeros((0, 3))
        x = w[:, 1] + w[:, 2] / 2
        y = w[:, 2] * math.sqrt(3) / 2
        ax.plot([0, 1, 0.5, 0], [0, 0, math.sqrt(3) / 2, 0], "k-", lw=0.8)
        sc = ax.scatter(x, y, c=ys, cmap="viridis", s=40)
        fig.colorbar(sc, label=self.metric_name)
        for (px, py, label) in ((0, -0.05, "α (primary)"), (1, -0.05, "β (remission)"),
                                (0.5, math.sqrt(3) / 2 + 0.03, "γ (active)")):
            ax.text(px, py, label, ha="center")
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title("Trials on the weight simplex")
        paths.append(self.out / "weights_simplex.png")
        fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(fig)
        return paths
