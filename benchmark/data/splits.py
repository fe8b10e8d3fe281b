"""Splits: held-out test and cross-validation folds, computed once per run and identical for every cell.

`study`  — image-level stratified hold-out + stratified k-fold (the study's protocol; leaks patients).
`grouped` — the same with patients kept whole (StratifiedGroupKFold), optionally the published test set.
`polat`  — published test set + Monte-Carlo patient-level train/validation splits with a class-share rule.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ..errors import BenchError
from ..suite.schema import ProtocolConfig
from .dataset import Dataset


@dataclass
class Splits:
    protocol: str
    grouped: bool
    test: np.ndarray  # dataset indices
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, val) dataset indices

    @property
    def split_kind(self) -> str:
        return "patient-grouped" if self.grouped else "image-level"

    def to_json(self, ds: Dataset) -> dict:
        return {
            "protocol": self.protocol,
            "grouped": self.grouped,
            "test": ds.ids[self.test].tolist(),
            "folds": [{"train": ds.ids[tr].tolist(), "val": ds.ids[va].tolist()} for tr, va in self.folds],
        }

    @classmethod
    def from_json(cls, doc: dict, ds: Dataset) -> Splits:
        pos = {k: i for i, k in enumerate(ds.ids.tolist())}
        idx = lambda ids: np.array([pos[i] for i in ids], dtype=np.int64)
        return cls(
            doc["protocol"], doc["grouped"], idx(doc["test"]), [(idx(f["train"]), idx(f["val"])) for f in doc["folds"]]
        )


def read_splits(path: Path, ds: Dataset) -> Splits:
    """A run's recorded splits over its dataset, or one paragraph saying why they cannot be read: a damaged file, or
    image ids that are not the dataset's (the store named is another run's, or the data changed)."""
    fix = (
        "The splits are written by `bench run` from the suite's own data: check that the run directory and --store "
        "name one run, and that its dataset was not changed since."
    )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: the run's splits are missing. {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"{path}: not readable as the run's splits ({exc}). {fix}") from None
    try:
        return Splits.from_json(doc, ds)
    except KeyError as exc:
        raise BenchError(
            f"{path}: names image {exc.args[0]!r}, which the dataset {ds.name!r} does not hold (or lacks a field). "
            f"{fix}"
        ) from None
    except (TypeError, AttributeError, ValueError):
        raise BenchError(f"{path}: not the splits `bench run` writes. {fix}") from None


def _require_groups(ds: Dataset, protocol: str):
    if not ds.meta.get("grouped_ids", False):
        from .files import NO_PATIENTS_FIX

        raise BenchError(
            f"protocol {protocol!r} keeps patients whole, but dataset {ds.name!r} has no patient ids for (some of) its "
            f"images. A folder tree: {NO_PATIENTS_FIX}. `protocol.kind: study` splits by image instead, which lets "
            "one patient's images sit in training and test at once (every metric then reads high)."
        )


def _check_folds(labels, groups, k, grouped, what, names):
    unit = "patients" if grouped else "images"
    counts = [len(np.unique(groups[labels == c])) if grouped else int(np.sum(labels == c)) for c in range(len(names))]
    smallest = int(np.argmin(counts))
    if counts[smallest] >= k:
        return
    n = counts[smallest]
    if n < 2:
        fix = (
            f"No split can then put {names[smallest]} on both sides: add {unit} of {names[smallest]}"
            + (", or use `kind: study` (image-level splits, which leak patients)" if grouped else "")
            + "."
        )
        raise BenchError(
            f"protocol.folds = {k} needs {names[smallest]} in every fold, but it has only {n} "
            f"{unit[:-1] if n == 1 else unit} in the {what}. {fix}"
        )
    raise BenchError(
        f"protocol.folds = {k} but the smallest class, {names[smallest]}, has only {n} {unit} in the "
        f"{what}; use at most {n} folds (protocol.folds: {n}) or a larger dataset."
    )


def holdout(ds: Dataset, cfg: ProtocolConfig, grouped: bool) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(ds))
    if cfg.use_published_test or cfg.kind == "polat":
        if ds.published_test is not None:
            return idx[~ds.published_test], idx[ds.published_test]
        if cfg.use_published_test:
            raise BenchError(
                f"protocol asks for the published test set, but {ds.name!r} has none (LIMUC's layout "
                "train_and_validation_sets/ + test_set/ has one); set `protocol.use_published_test: false`."
            )
        # polat on data without a published hold-out: a patient-grouped hold-out stands in for it
    if grouped:
        n_splits = max(2, int(round(1 / cfg.test_fraction)))
        for c in range(len(ds.classes)):
            n = len(np.unique(ds.groups[ds.labels == c]))
            if n < 2:
                raise BenchError(
                    f"{ds.classes[c]} has only 1 patient, so no patient-grouped split can put {ds.classes[c]} on both "
                    f"sides of the hold-out: add patients of {ds.classes[c]}, or use `kind: study` (image-level "
                    "splits, which leak patients)."
                )
            if n < n_splits:
                raise BenchError(
                    f"protocol.test_fraction = {cfg.test_fraction} keeps patients whole, which needs at "
                    f"least {n_splits} patients per class, but {ds.classes[c]} has only {n}; raise test_fraction "
                    f"to at least {1 / n:.2f}, use a larger dataset, or use `kind: study`."
                )
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.seed)
        train, test = next(sgkf.split(idx, ds.labels, ds.groups))
        return np.sort(train), np.sort(test)
    _check_folds(ds.labels, ds.groups, 2, False, "dataset", ds.classes)
    n_test = int(np.ceil(cfg.test_fraction * len(idx)))
    k = len(ds.classes)
    if n_test < k or len(idx) - n_test < k:
        need = k / len(idx)
        raise BenchError(
            f"protocol.test_fraction = {cfg.test_fraction} of {len(idx)} images gives a hold-out of "
            f"{n_test} and a training part of {len(idx) - n_test} images, but a stratified split needs "
            f"at least {k} images (one per grade) on each side: use a test_fraction between "
            f"{need:.2f} and {1 - need:.2f}, or a larger dataset."
        )
    try:
        train, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=ds.labels, random_state=cfg.seed)
    except ValueError as exc:
        raise BenchError(
            f"protocol: the stratified hold-out split failed ({exc}); raise protocol.test_fraction or "
            "use a larger dataset."
        ) from None
    return np.sort(train), np.sort(test)


def kfold(train: np.ndarray, ds: Dataset, cfg: ProtocolConfig, grouped: bool):
    labels, groups = ds.labels[train], ds.groups[train]
    _check_folds(labels, groups, cfg.folds, grouped, "training part", ds.classes)
    folds = []
    for r in range(cfg.repeats):
        seed = cfg.seed + 1000 * r
        splitter = (
            StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=seed)
            if grouped
            else StratifiedKFold(cfg.folds, shuffle=True, random_state=seed)
        )
        for tr, va in splitter.split(train, labels, groups if grouped else None):
            folds.append((np.sort(train[tr]), np.sort(train[va])))
    return folds


def monte_carlo(train: np.ndarray, ds: Dataset, cfg: ProtocolConfig):
    """Polat et al.: fresh random patient-level splits, accepted when every class's validation share is
    within ±tolerance (relative) of its share in the pool."""
    labels, groups = ds.labels[train], ds.groups[train]
    target = np.bincount(labels, minlength=len(ds.classes)) / len(labels)
    patients = np.unique(groups)
    rng = np.random.default_rng(cfg.seed)
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    attempts = 0
    n_splits = cfg.folds * cfg.repeats
    while len(folds) < n_splits:
        attempts += 1
        if attempts > cfg.max_split_attempts * n_splits:
            raise BenchError(
                f"polat protocol: no split within ±{cfg.val_share_tolerance:.0%} of the class shares "
                f"after {attempts - 1} attempts; raise protocol.val_share_tolerance or val_fraction."
            )
        order = rng.permutation(patients)
        sizes = np.array([np.sum(groups == p) for p in order])
        n_val = np.searchsorted(np.cumsum(sizes), cfg.val_fraction * len(labels)) + 1
        val_mask = np.isin(groups, order[:n_val])
        share = np.bincount(labels[val_mask], minlength=len(ds.classes)) / max(val_mask.sum(), 1)
        if np.all(np.abs(share - target) <= cfg.val_share_tolerance * target):
            folds.append((np.sort(train[~val_mask]), np.sort(train[val_mask])))
    return folds


def make_splits(ds: Dataset, cfg: ProtocolConfig) -> Splits:
    grouped = cfg.kind in ("grouped", "polat")
    if grouped:
        _require_groups(ds, cfg.kind)
    train, test = holdout(ds, cfg, grouped)
    folds = monte_carlo(train, ds, cfg) if cfg.kind == "polat" else kfold(train, ds, cfg, grouped)
    return Splits(cfg.kind, grouped, test, folds)


def record_splits(path: Path, splits: Splits, ds: Dataset) -> Splits:
    """Written once per run directory; a later run whose splits differ is refused rather than mixed."""
    doc = splits.to_json(ds)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise BenchError(
                f"{path} is damaged (not valid JSON). It records the splits of this run's finished cells; "
                "restore it from a backup, or delete it: the same suite recomputes the same splits and "
                "writes it again (a different suite is then refused as usual by the store)."
            ) from None
        if stored != doc:
            raise BenchError(
                f"{path}: this run directory was made with other splits (dataset or protocol changed). "
                "Results from different splits cannot be mixed: use `--out` for a new run directory, "
                "or delete the old one."
            )
        return splits
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BenchError(
            f"cannot write {path} ({exc.strerror}); free space or choose another run directory with --out."
        ) from None
    return splits
