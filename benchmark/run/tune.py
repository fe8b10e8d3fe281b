"""`bench tune`: Optuna search, nested in the CV, of the hierarchical model's joint-loss weights α, β, γ (the
default) or of any settings a cell takes (`--space`: training, augmentation, backbone fields, formulation options;
see space.py).

The weights live on the simplex (each ≥ 0, sum 1) through stick-breaking of two Optuna floats
u, v ∈ [0, 1]: α = 1 − √(1 − u), β = (1 − α)·v, γ = 1 − α − β — one-to-one onto the simplex (no
wasted or duplicate region) and uniform when u, v are.

Nested: each outer fold gets its own study, whose trials train and validate on an inner split of that
fold's training part (stratified; patient-grouped where the protocol groups). So the weights a fold's
`[tuned]` cell uses were chosen without its validation images (and of course without the held-out
test set, which no trial ever reads). Each epoch's inner-validation value goes to a median pruner.
Storage is SQLite in the output directory by default, so re-running continues the studies. Several workers
share them the standard Optuna RDB way (`--workers N` on one machine, `bench submit --tune` on Slurm, best with
a PostgreSQL `--storage`): each worker opens the same studies with its own sampler seed and stops a fold's
study once it holds the number of trials asked for, running ones included.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from formulations import FORMULATIONS, formulation_class, scaled_formulation

from ..data.catalogue import load_dataset
from ..data.dataset import resolve_scale
from ..data.splits import make_splits, record_splits
from ..errors import BenchError, CellFailed
from ..metrics import LOWER_IS_BETTER, known_metrics, metric_value, parse_metric
from ..suite.loading import dump_suite
from ..suite.schema import FormulationConfig, Suite, stable_hash
from ..train.cell import CellSpec, fold_inputs, run_cell
from ..train.device import pick_device
from ..train.loop import CellData
from .location import sqlite_url
from .runner import batch_size_for, check_backbones_fit, input_size_for, preflight
from .store import HEARTBEAT_SECONDS, STALE_SECONDS


def simplex_from_unit(u: float, v: float) -> tuple[float, float, float]:
    """Stick-breaking with a uniform image on the simplex: α = 1 − √(1 − u), β = (1 − α)·v, γ = rest."""
    alpha = 1.0 - math.sqrt(1.0 - u)
    beta = (1.0 - alpha) * v
    gamma = 1.0 - alpha - beta
    return alpha, beta, max(gamma, 0.0)


def inner_split(train: np.ndarray, labels: np.ndarray, groups: np.ndarray, grouped: bool, n_splits: int, seed: int):
    """One (inner train, inner validation) split of an outer fold's training part, like the outer folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y, g = labels[train], groups[train]
    splitter = (
        StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        if grouped
        else StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    )
    try:
        tr, va = next(splitter.split(train, y, g if grouped else None))
    except ValueError as exc:
        raise BenchError(
            f"bench tune: the inner split of an outer fold's training part failed ({exc}); every class "
            f"needs at least {n_splits} {'patients' if grouped else 'images'} in each outer training part. "
            "Use a larger dataset or fewer protocol.folds."
        ) from None
    return np.sort(train[tr]), np.sort(train[va])


def tunable_formulation(suite: Suite, name: str | None, any_formulation: bool = False) -> FormulationConfig:
    """The suite's formulation to tune: the one named, else the first whose loss weights can be tuned (with a
    `--space`, any formulation: the suite's first)."""
    if any_formulation:
        if name is None:
            return next((f for f in suite.formulations if not f.finetune), suite.formulations[0])
        base = next((f for f in suite.formulations if f.name == name and not f.finetune), None)
        return base or FormulationConfig(name=name)
    if name is None:
        base = next(
            (f for f in suite.formulations if not f.finetune and formulation_class(f.name).tunable_weights), None
        )
        if base is None:
            tunable = [n for n, c in FORMULATIONS.items() if c.tunable_weights]
            raise BenchError(
                f"suite {suite.name!r} has no formulation with loss weights to tune; add one of "
                f"{', '.join(tunable)} or name it with --formulation."
            )
        return base
    base = next((f for f in suite.formulations if f.name == name and not f.finetune), None)
    cfg = base or FormulationConfig(name=name)
    if not formulation_class(cfg.name).tunable_weights:
        tunable = [n for n, c in FORMULATIONS.items() if c.tunable_weights]
        raise BenchError(
            f"--formulation {name!r} has no joint-loss weights to tune; formulations with tunable "
            f"weights: {', '.join(tunable)}."
        )
    return cfg


class Tuner:
    def __init__(
        self,
        suite: Suite,
        out: Path,
        backbone=None,
        formulation=None,
        metric="macro_f1",
        folds=None,
        storage=None,
        study=None,
        device=None,
        seed=0,
        worker=0,
        space: list[str] | None = None,
    ):
        """`seed` seeds the samplers; `worker` (the index of one of several workers sharing the studies) shifts
        it, else every worker would propose the same first points. `space`: `--space` specs (space.py); without
        one, the formulation's three loss weights on their simplex."""
        import optuna

        from .space import check_space, parse_space

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.suite, self.out, self.worker = suite, Path(out), worker
        names = [b.name for b in suite.backbones]
        if backbone and backbone not in names:
            from ..errors import closest

            raise BenchError(f"--backbone {backbone!r} is not in suite {suite.name!r}: {closest(backbone, names)}.")
        self.backbone = next(b for b in suite.backbones if b.name == (backbone or names[0]))
        self.space = [parse_space(s) for s in space or []]
        self.fcfg = tunable_formulation(suite, formulation, any_formulation=bool(self.space))
        if folds is not None and folds < 1:
            raise BenchError(f"--folds must be at least 1 (got {folds}).")
        self.metric_name = metric
        self.dataset = load_dataset(suite.dataset)
        self.scale = resolve_scale(suite.scale, self.dataset)
        tuned = scaled_formulation(self.fcfg.name, self.fcfg.options, self.scale)
        self.tasks, self.weight_keys = tuned.tasks, tuned.loss_weight_names()  # the weights this hierarchy has
        if self.space:
            check_space(self.space, suite, self.backbone, self.fcfg)
            self.weight_keys = ()
        self.param_names = [p.name for p in self.space] or list(self.weight_keys)
        if not self.space and len(self.weight_keys) != 3:
            raise BenchError(
                f"bench tune searches three loss weights on their simplex, and {self.fcfg.display!r} has "
                f"{len(self.weight_keys)} on this scale ({', '.join(self.weight_keys)}): give it a hierarchy with two "
                "or more sub-heads (groups), or tune another formulation."
            )
        self.metric = parse_metric(metric, known_metrics(self.tasks, self.scale))
        preflight(suite, self.scale)
        check_backbones_fit(suite, tuple(self.dataset.images.shape[1:3]))
        self.out.mkdir(parents=True, exist_ok=True)
        self.splits = record_splits(self.out / "splits.json", make_splits(self.dataset, suite.protocol), self.dataset)
        n = len(self.splits.folds)
        self.k = min(folds or n, n)
        self.inner = {
            i: inner_split(
                self.splits.folds[i][0],
                self.dataset.labels,
                self.dataset.groups,
                self.splits.grouped,
                max(suite.protocol.folds, 2),
                suite.protocol.seed + 7 + i,
            )
            for i in range(self.k)
        }
        self.plan = pick_device(device, suite.training.amp, suite.training.deterministic)
        self.storage = storage or str(sqlite_url(self.out / "tune.db"))
        # Optuna's heartbeat, with the results store's timing: a trial whose worker was killed stops being RUNNING
        # once its heartbeat is stale, and is failed when the next trial starts (it would block the study forever).
        beat = {"heartbeat_interval": max(1, round(HEARTBEAT_SECONDS)), "grace_period": max(2, round(STALE_SECONDS))}
        if self.storage.startswith("sqlite"):  # local workers share the file: wait for its lock, never fail on it
            rdb = optuna.storages.RDBStorage(self.storage, engine_kwargs={"connect_args": {"timeout": 120}}, **beat)
        else:
            rdb = optuna.storages.RDBStorage(self.storage, engine_kwargs={"pool_pre_ping": True}, **beat)
        space_tag = f"-space{stable_hash([p.spec for p in self.space], 8)}" if self.space else ""
        self.study_name = study or f"{suite.name}-{self.backbone.name}-{self.fcfg.name}-{metric}{space_tag}"
        direction: Literal["minimize", "maximize"] = "minimize" if self.metric[1] in LOWER_IS_BETTER else "maximize"
        self.studies = {
            i: optuna.create_study(
                study_name=f"{self.study_name}-fold{i}",
                storage=rdb,
                load_if_exists=True,
                direction=direction,
                sampler=optuna.samplers.TPESampler(seed=seed + 1000 * worker + i),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            )
            for i in range(self.k)
        }
        self._claim_studies(study is not None)

    def identity(self, fold: int | None = None) -> dict:
        """Everything that changes what a trial trains, for one fold (or for the whole study when fold is None)."""
        out = {
            "dataset": self.suite.dataset.key(),
            "protocol": self.suite.protocol.model_dump(mode="json"),
            "training": self.suite.training.model_dump(mode="json"),
            "backbone": self.backbone.model_dump(mode="json"),
            "formulation": self.fcfg.name,
            "options": self.fcfg.options,
            "metric": self.metric_name,
        }
        if self.space:  # a study holds one search space: another one's trials are another problem
            out["space"] = [p.text() for p in self.space]
        if fold is not None:
            train, val = self.inner[fold]
            out |= {
                "fold": fold,
                "fold_options": self.fcfg.options_by_fold.get(fold, {}),
                "inner": stable_hash([np.asarray(train).tolist(), np.asarray(val).tolist()]),
            }
        return out

    def _claim_studies(self, named: bool) -> None:
        """A study on shared storage belongs to one tuning problem: a --study naming another suite's (or the same
        suite's with other settings) would silently mix trials of different problems, so it is refused."""
        key = stable_hash(self.identity())
        for study in self.studies.values():
            owner = study.user_attrs.get("mesbench_identity")
            if owner is None:
                study.set_user_attr("mesbench_identity", key)
                study.set_user_attr("mesbench_suite", self.suite.name)
            elif owner != key:
                theirs = study.user_attrs.get("mesbench_suite", "another suite")
                raise BenchError(
                    f"study {study.study_name!r} on {self.storage.split('@')[-1]} was made for {theirs!r} with other "
                    f"data, training settings, backbone, formulation or metric than this tune of {self.suite.name!r}; "
                    "adding trials would mix two problems. "
                    + ("Give another --study name." if named else "Use another --storage, or --study NAME.")
                )

    @property
    def study(self):  # the first fold's study (single-fold use and tests)
        return self.studies[0]

    def trial_dir(self, fold: int, trial, weights: dict) -> Path:
        """Keyed by everything that changes the trial's result (data, protocol, training settings, backbone,
        formulation, fold, inner split) and its parameters: a tune with other settings in the same --out never
        resumes these checkpoints, even when its sampler proposes the same first points."""
        study = self.studies[fold].study_name
        key = stable_hash({"cell": self.identity(fold), "params": weights}, 16)
        return self.out / "trials" / _safe(study) / f"{trial.number:04d}-{key}"

    def objective(self, trial, fold: int = 0):
        from .space import settings

        cfg, backbone = self.suite.training, self.backbone
        base = {**self.fcfg.options, **self.fcfg.options_by_fold.get(fold, {})}
        if self.space:
            weights = {p.name: p.suggest(trial) for p in self.space}
            cfg, backbone, options = settings(self.suite, self.backbone, self.fcfg.model_copy(update={"options": base}),
                                              weights)  # fmt: skip
        else:
            u = trial.suggest_float("u", 0.0, 1.0)
            v = trial.suggest_float("v", 0.0, 1.0)
            weights = dict(zip(self.weight_keys, simplex_from_unit(u, v)))
            options = {**base, **weights}
        for k, w in weights.items():
            trial.set_user_attr(k, w)
        trial.set_user_attr("worker", self.worker)
        train, val = self.inner[fold]
        # no outer validation and no held-out test images: only the outer fold's training part
        data = CellData.of(self.dataset, train, val, np.array([], dtype=np.int64), self.splits.grouped)

        def on_epoch(row):
            trial.report(row["objective"], row["epoch"] - 1)
            if trial.should_prune():
                raise self.optuna.TrialPruned(f"pruned at epoch {row['epoch']}")

        options, class_weights = fold_inputs(self.fcfg.name, options, self.dataset.labels[train], cfg, scale=self.scale)
        spec = CellSpec(
            backbone,
            self.fcfg.name,
            options,
            cfg.seeds[0],
            data,
            cfg,
            batch_size_for(self.suite, backbone, cfg),
            input_size_for(backbone),
            self.trial_dir(fold, trial, weights),
            on_epoch=on_epoch,
            objective=lambda y, p, tp: metric_value(self.metric, y, p, tp, self.tasks, self.scale),
            class_weights=class_weights,
            scale=self.scale,
        )
        result = run_cell(spec, self.plan)
        pred = result.predictions["val"]
        return metric_value(self.metric, pred.y, pred.pred, pred.task_preds, self.tasks, self.scale)

    def optimize_fold(self, fold: int, trials: int, timeout=None, callbacks=None):
        study = self.studies[fold]
        study.optimize(
            lambda t: self.objective(t, fold),
            n_trials=trials,
            timeout=timeout,
            catch=(CellFailed,),
            callbacks=callbacks,
        )
        return study

    def optimize(self, trials, timeout=None, callbacks=None):
        for fold in range(self.k):
            self.optimize_fold(fold, trials, timeout, callbacks)
        return self.studies

    def targets(self, trials: int) -> dict[int, int]:
        """Each fold's study size after `trials` more trials: what workers sharing the studies aim for."""
        return {i: len(s.trials) + trials for i, s in self.studies.items()}

    def optimize_to(self, targets: dict[int, int], timeout=None, callbacks=None):
        """One of several workers: fill every fold's study up to its target, counting every worker's trials
        (running ones included), beginning at the fold of this worker's index so workers spread over the folds."""
        from optuna.study import MaxTrialsCallback

        for j in range(self.k):
            fold = (self.worker + j) % self.k
            study = self.studies[fold]
            left = targets[fold] - len(study.trials)
            if left <= 0:
                continue
            study.optimize(
                partial(self.objective, fold=fold),
                n_trials=left,
                timeout=timeout,
                catch=(CellFailed,),
                callbacks=[MaxTrialsCallback(targets[fold], states=None), *(callbacks or [])],
            )
        return self.studies

    def best_weights(self) -> dict[int, dict[str, Any]]:
        """Each outer fold's best values of the tuned parameters (folds without a completed trial left out)."""
        return {
            i: {k: s.best_trial.user_attrs[k] for k in self.param_names}
            for i, s in self.studies.items()
            if any(t.state.name == "COMPLETE" for t in s.trials)
        }

    def importances(self) -> dict[int, dict[str, float]]:
        """Optuna's parameter importances (fANOVA) per outer fold, where a fold has enough completed trials."""
        if len(self.space) < 2:
            return {}
        out = {}
        for i, s in self.studies.items():
            if sum(t.state.name == "COMPLETE" for t in s.trials) < 2:
                continue
            try:
                out[i] = dict(self.optuna.importance.get_param_importances(s))
            except (RuntimeError, ValueError):  # e.g. every completed trial with one value: nothing to attribute
                continue
        return out

    def writable_override(self) -> bool:
        """Per-fold values fit a suite only as per-fold formulation options (`options_by_fold`)."""
        return all(name.startswith("options.") for name in self.param_names) or not self.space

    def write_override(self) -> Path:
        """A suite that `bench run` accepts: the original plus the tuned formulation, labelled `[tuned]`, with
        each outer fold's own weights."""
        best = self.best_weights()
        if self.space:
            best = {i: {k.removeprefix("options."): v for k, v in values.items()} for i, values in best.items()}
        n_trials = {i: len(s.trials) for i, s in self.studies.items()}
        provenance = (
            f"`bench tune` study {self.study_name!r}, metric {self.metric_name}, on backbone "
            f"{self.backbone.name}: each outer fold's {'options' if self.space else 'weights'} searched ({n_trials} "
            "trials per fold) on an "
            f"inner {'patient-grouped' if self.splits.grouped else 'stratified'} split of that fold's own "
            "training part, so its validation and the held-out test images were never seen"
        )
        tuned = FormulationConfig(
            name=self.fcfg.name,
            label=f"{self.fcfg.display}[tuned]",
            options=self.fcfg.options,
            options_by_fold=best,
            tuned=provenance,
        )
        forms = [f for f in self.suite.formulations if f.display != tuned.display] + [tuned]
        suite = self.suite.model_copy(update={"formulations": forms})
        path = self.out / f"{self.suite.name}.tuned.yaml"
        path.write_text(
            f"# written by bench tune: study {self.study_name!r}, tuned folds {sorted(best)}\n" + dump_suite(suite)
        )
        return path

    def figures(self) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["text.parse_math"] = False  # names are user text, never mathtext
        import matplotlib.pyplot as plt

        maximize = next(iter(self.studies.values())).direction.name == "MAXIMIZE"
        paths = []
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        all_w, all_v = [], []
        for i, study in self.studies.items():
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            if not done:
                continue
            xs = [t.number for t in done]
            ys = [float(t.value or 0.0) for t in done]  # complete trials always have a value
            best = np.maximum.accumulate(ys) if maximize else np.minimum.accumulate(ys)
            line = ax.plot(xs, ys, "o", alpha=0.6, label=f"fold {i}: trial")[0]
            # the best-so-far line runs to the last trial of the study, pruned ones included
            last = max(t.number for t in study.trials)
            ax.step(
                xs + [last],
                list(best) + [best[-1]],
                where="post",
                color=line.get_color(),
                label=f"fold {i}: best so far",
            )
            all_w += [[t.user_attrs[k] for k in self.weight_keys] for t in done]
            all_v += ys
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{self.metric_name} (inner validation)")
        ax.legend(fontsize=7)
        ax.set_title("Optimisation history per outer fold")
        paths.append(self.out / "optimization_history.png")
        fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(fig)
        if self.space:  # the simplex is the loss weights' own picture
            return paths
        fig, ax = plt.subplots(figsize=(5.5, 5))
        w = np.array(all_w) if all_w else np.zeros((0, 3))
        x = w[:, 1] + w[:, 2] / 2
        y = w[:, 2] * math.sqrt(3) / 2
        ax.plot([0, 1, 0.5, 0], [0, 0, math.sqrt(3) / 2, 0], "k-", lw=0.8)
        sc = ax.scatter(x, y, c=all_v, cmap="viridis", s=40)
        fig.colorbar(sc, label=self.metric_name, shrink=0.7)
        corners = ((0, -0.07, "left"), (1, -0.07, "right"), (0.5, math.sqrt(3) / 2 + 0.04, "center"))
        for (px, py, ha), key in zip(corners, self.weight_keys):
            ax.text(px, py, key, ha=ha)
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(-0.15, 1.0)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title("Trials on the weight simplex (all folds)")
        paths.append(self.out / "weights_simplex.png")
        fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(fig)
        return paths


def _safe(name):
    return "".join(c if c.isalnum() or c in "-+_." else "_" for c in name)
