"""A dataset decoded once into one uint8 array (N, H, W, 3) with labels, patient ids and image ids, and the
on-disk cache that makes "decoded once" true across runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BenchError
from ..labels import MES, Scale, scale_of
from ..suite.schema import ScaleConfig, stable_hash


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W, 3) uint8, possibly memory-mapped
    labels: np.ndarray  # (N,) int64 in 0..K−1
    groups: np.ndarray  # (N,) patient ids (str)
    ids: np.ndarray  # (N,) unique image ids (str)
    published_test: np.ndarray | None = None  # (N,) bool: the dataset's own hold-out, where it has one
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.labels)

    @property
    def classes(self) -> tuple[str, ...]:
        """The grades' names in order, as the data names them (meta["classes"]); MES's when it does not."""
        names = self.meta.get("classes")
        return tuple(names) if names else MES.classes

    @property
    def scale(self) -> Scale:
        return scale_of(self.classes)

    def check(self, source: str):
        """Labels within the scale and ids unique: every loader's check. Whether every grade has images is
        `check_every_grade`'s, asked by `load_dataset` of a training set (an external test set may lack grades,
        which its report then shows as absent)."""
        if len(self.labels) == 0:
            raise BenchError(f"{source}: the dataset holds no image. Check the data root / manifest.")
        k = len(self.classes)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= k))
        if len(bad):
            raise BenchError(
                f"{source}: labels must be grades 0–{k - 1} ({', '.join(self.classes)}); image "
                f"{self.ids[bad[0]]!r} has label {self.labels[bad[0]]} ({len(bad)} such images). Fix the labels."
            )
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:3]
            raise BenchError(
                f"{source}: duplicate image ids {list(dup)} ({int((counts > 1).sum())} in all). "
                "Each image must appear once; remove or rename the duplicates."
            )

    def check_every_grade(self, source: str):
        k = len(self.classes)
        present = np.bincount(self.labels, minlength=k)
        empty = [self.classes[g] for g in range(k) if present[g] == 0]
        if empty:
            raise BenchError(
                f"{source}: class(es) {empty} have no image. Every grade of the scale ({', '.join(self.classes)}) "
                "needs images: add them, or drop the grade from the data."
            )


def resolve_scale(named: ScaleConfig | None, dataset: Dataset, source: str = "the suite") -> Scale:
    """The run's scale: the data's K grades, under the suite's `scale:` names where it gives them."""
    if named is None:
        return dataset.scale
    if len(named.classes) != len(dataset.classes):
        raise BenchError(
            f"{source}: scale.classes names {len(named.classes)} grades ({', '.join(named.classes)}), but the data has "
            f"{len(dataset.classes)} ({', '.join(dataset.classes)}). Name each of the data's grades once, in order, "
            "or drop `scale:` to use the data's own names."
        )
    return named.scale()


def _size(n: float) -> str:
    """Bytes as a person reads them: 412 kB, 3.1 MB, 2.40 GB (a small dataset is not '0.00 GB')."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def cache_dir() -> Path:
    path = Path(os.environ.get("MESBENCH_CACHE") or Path.home() / ".cache" / "mesbench")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"the decoded-image cache {path} (MESBENCH_CACHE, else ~/.cache/mesbench) cannot be a folder there "
            f"({exc.strerror}: a file of that name, or no permission). Point MESBENCH_CACHE at a writable folder."
        ) from None
    return path


def cached(key: dict, build: Callable[[], Dataset], mmap: bool) -> Dataset:
    """Decode once: arrays saved under the cache dir, keyed by everything that defines the dataset. A
    damaged entry is rebuilt, never fatal; a full disk is a clear error and leaves no partial file."""
    directory = cache_dir()
    _remove_stale_temp_files(directory)
    stem = directory / f"{key['kind']}-{stable_hash(key, 16)}"
    img_path, meta_path = stem.with_suffix(".images.npy"), stem.with_suffix(".json")
    if img_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(img_path, mmap_mode="r" if mmap else None)
            labels = np.asarray(meta["labels"], np.int64)
            if images.ndim != 4 or images.shape[0] != len(labels) or images.dtype != np.uint8:
                raise ValueError(f"{images.shape} {images.dtype} for {len(labels)} labels")
            return Dataset(
                meta["name"],
                images,
                labels,
                np.asarray(meta["groups"]),
                np.asarray(meta["ids"]),
                None if meta["published_test"] is None else np.asarray(meta["published_test"], bool),
                meta["meta"],
            )
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            # damaged (a killed write, a truncated copy): decode again rather than fail
            img_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
    ds = build()
    token = uuid.uuid4().hex
    tmp = img_path.with_name(f"{img_path.name}.{token}.tmp.npy")
    tmpm = meta_path.with_name(f"{meta_path.name}.{token}.tmp")
    try:
        np.save(tmp, np.ascontiguousarray(ds.images))
        payload = {
            "name": ds.name,
            "labels": ds.labels.tolist(),
            "groups": ds.groups.tolist(),
            "ids": ds.ids.tolist(),
            "published_test": None if ds.published_test is None else ds.published_test.tolist(),
            "meta": ds.meta,
        }
        tmpm.write_text(json.dumps(payload))
        os.replace(tmp, img_path)
        os.replace(tmpm, meta_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        tmpm.unlink(missing_ok=True)
        # numpy's short write carries no errno; the free space says whether the disk was the cause
        full = shutil.disk_usage(directory).free < ds.images.nbytes + (1 << 20)
        if full or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            why = exc.strerror or ("no space left on the device" if full else str(exc) or type(exc).__name__)
            free = shutil.disk_usage(directory).free
            raise BenchError(
                f"cannot write the decoded-image cache in {directory} ({why}): it needs "
                f"{_size(ds.images.nbytes)} and {_size(free)} are free there. Free space, or point MESBENCH_CACHE "
                "at a folder with room."
            ) from None
        raise
    if mmap:
        ds.images = np.load(img_path, mmap_mode="r")
    return ds


def _remove_stale_temp_files(directory: Path, older_than_s: float = 3600.0):
    """Temp files of a killed cache write; recent ones may belong to a process writing right now."""
    now = time.time()
    for tmp in directory.glob("*.tmp*"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:
            pass


def content_key(labels, groups, ids, published_test=None) -> str:
    """What the decoded images are labelled and grouped as: part of every cache key, so a changed label,
    patient or class order never reuses a cache entry built for other ones."""
    return stable_hash(
        {
            "labels": np.asarray(labels).tolist(),
            "groups": np.asarray(groups).astype(str).tolist(),
            "ids": np.asarray(ids).astype(str).tolist(),
            "published_test": None if published_test is None else np.asarray(published_test).tolist(),
        },
        20,
    )
