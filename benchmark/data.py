"""Datasets decoded once into one uint8 array (N, H, W, 3), with labels, patient ids and image ids."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .config import DatasetConfig, stable_hash
from .errors import BenchError, unknown

NUM_CLASSES = 4
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W, 3) uint8, possibly memory-mapped
    labels: np.ndarray  # (N,) int64 in 0..3
    groups: np.ndarray  # (N,) patient ids (str)
    ids: np.ndarray  # (N,) unique image ids (str)
    published_test: np.ndarray | None = None  # (N,) bool: the dataset's own hold-out, where it has one
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.labels)

    def check(self, source: str):
        if len(self.labels) == 0:
            raise BenchError(f"{source}: the dataset holds no image. Check the data root / manifest.")
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= NUM_CLASSES))
        if len(bad):
            raise BenchError(f"{source}: labels must be MES grades 0–3; image {self.ids[bad[0]]!r} has label "
                             f"{self.labels[bad[0]]} ({len(bad)} such images). Fix the labels.")
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:3]
            raise BenchError(f"{source}: duplicate image ids {list(dup)} ({int((counts > 1).sum())} in all). "
                             "Each image must appear once; remove or rename the duplicates.")
        present = np.bincount(self.labels, minlength=NUM_CLASSES)
        empty = [k for k in range(NUM_CLASSES) if present[k] == 0]
        if empty:
            raise BenchError(f"{source}: class(es) {empty} have no image. Every MES grade 0–3 needs images.")


DATASETS: dict[str, Callable[[DatasetConfig], Dataset]] = {}


def register_dataset(name):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def cache_dir() -> Path:
    path = Path(os.environ.get("MESBENCH_CACHE", Path.home() / ".cache" / "mesbench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_dataset(cfg: DatasetConfig) -> Dataset:
    from . import limuc  # noqa: F401 - registers 'limuc'

    if cfg.name not in DATASETS:
        raise unknown("dataset", cfg.name, DATASETS)
    return DATASETS[cfg.name](cfg)


def _cached(key: dict, build: Callable[[], Dataset], mmap: bool) -> Dataset:
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
            return Dataset(meta["name"], images, labels, np.asarray(meta["groups"]), np.asarray(meta["ids"]),
                           None if meta["published_test"] is None else np.asarray(meta["published_test"], bool),
                           meta["meta"])
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
        payload = {"name": ds.name, "labels": ds.labels.tolist(), "groups": ds.groups.tolist(), "ids": ds.ids.tolist(),
                   "published_test": None if ds.published_test is None else ds.published_test.tolist(),
                   "meta": ds.meta}
        tmpm.write_text(json.dumps(payload))
        os.replace(tmp, img_path)
        os.replace(tmpm, meta_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        tmpm.unlink(missing_ok=True)
        # numpy's short write carries no errno; the free space says whether the disk was the cause
        full = shutil.disk_usage(directory).free < ds.images.nbytes + (1 << 20)
        if full or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise BenchError(f"cannot write the decoded-image cache in {directory} ({exc.strerror}): "
                             f"{ds.images.nbytes / 1e9:.2f} GB are needed there. Free space, or point MESBENCH_CACHE "
                             "at a folder with room.") from None
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
    return stable_hash({"labels": np.asarray(labels).tolist(), "groups": np.asarray(groups).astype(str).tolist(),
                        "ids": np.asarray(ids).astype(str).tolist(),
                        "published_test": None if published_test is None else np.asarray(published_test).tolist()},
                       20)


@register_dataset("synthetic")
def synthetic_dataset(cfg: DatasetConfig) -> Dataset:
    from .synthetic import generate

    params = {"n_images": 800, "n_patients": 80, "size": [64, 64], "seed": 0, "label_noise": 0.06}
    unknown_keys = set(cfg.params) - set(params) - {"severity_sd"}
    if unknown_keys:
        from .errors import closest

        k = sorted(unknown_keys)[0]
        raise BenchError(f"dataset.params: unknown synthetic parameter {k!r}: {closest(k, list(params) + ['severity_sd'])}.")
    params.update(cfg.params)
    if cfg.resize:
        params["size"] = list(cfg.resize)

    def build():
        try:
            images, labels, groups, ids = generate(params["n_images"], params["n_patients"], tuple(params["size"]),
                                                   params["seed"], label_noise=params["label_noise"],
                                                   **({"severity_sd": params["severity_sd"]} if "severity_sd" in params else {}))
        except ValueError as exc:
            raise BenchError(f"dataset.params: {exc}.") from None
        return Dataset("synthetic", images, labels, groups, ids, meta={"params": params, "grouped_ids": True})

    ds = _cached({"kind": "synthetic", "version": 1, **params}, build, cfg.mmap)
    ds.check("synthetic dataset")
    return ds


# --------------------------------------------------------------------------- decoding files


def decode_files(paths: list[Path], resize: tuple[int, int] | None, source: str) -> np.ndarray:
    """Decode every file once; a corrupt, non-image or odd-sized file is a clear error naming it."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    def read(path):
        try:
            with Image.open(path) as im:
                im = to_rgb8(im, path)
                if resize is not None:
                    im = im.resize((resize[1], resize[0]), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        arrays = list(pool.map(read, paths))
    bad = [(p, a) for p, a in zip(paths, arrays) if isinstance(a, Exception)]
    if bad:
        listed = "; ".join(f"{p} ({type(e).__name__}: {e})" for p, e in bad[:5])
        raise BenchError(f"{source}: {len(bad)} image(s) cannot be decoded: {listed}. Remove or replace these files "
                         "(run `bench data inspect` on the root for the full list).")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BenchError(f"{source}: images have different sizes {sorted(shapes)[:4]}; set `dataset.resize: "
                         "[height, width]` in the suite to bring them to one size.")
    out = np.empty((len(arrays),) + arrays[0].shape, dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


HIGH_BIT_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32}


def bit_depth(im) -> str:
    """'8-bit RGB', '16-bit gray', … for `bench data inspect`."""
    bits = HIGH_BIT_MODES.get(im.mode, 1 if im.mode == "1" else 8)
    kind = {"L": "gray", "LA": "gray", "1": "binary", "P": "palette", "RGBA": "RGBA", "CMYK": "CMYK"}.get(
        im.mode, "gray" if im.mode in HIGH_BIT_MODES else "RGB" if im.mode == "RGB" else im.mode)
    return f"{bits}-bit {kind}"


def to_rgb8(im, path):
    """8-bit RGB. 16-bit images are scaled (v / 257, so 65535 -> 255), not clipped as `convert('RGB')`
    would clip them to {0, 255}; 32-bit integer images are refused rather than guessed at."""
    from PIL import Image

    if im.mode in HIGH_BIT_MODES:
        a = np.asarray(im)
        if im.mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer image with values {a.min()}..{a.max()}: convert it to 8- or 16-bit")
        a8 = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(np.repeat(a8[..., None], 3, axis=2), "RGB")
    return im.convert("RGB")


def files_key(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decoded_dataset(name, paths, labels, groups, ids, cfg: DatasetConfig, source, published_test=None, meta=None):
    key = {"kind": name, "version": 2, "files": files_key(paths), "resize": cfg.resize,
           "class_dirs": list(cfg.class_dirs), "content": content_key(labels, groups, ids, published_test)}

    def build():
        images = decode_files(paths, cfg.resize, source)
        return Dataset(name, images, np.asarray(labels, np.int64), np.asarray(groups), np.asarray(ids),
                       published_test, meta or {})

    ds = _cached(key, build, cfg.mmap)
    ds.check(source)
    return ds


@register_dataset("folder")
def folder_dataset(cfg: DatasetConfig) -> Dataset:
    """Any folder-per-class tree; class k is the folder `class_dirs[k]`."""
    if not cfg.root:
        raise BenchError("dataset 'folder' needs `dataset.root:` — the folder holding one sub-folder per class.")
    root = Path(os.path.expandvars(cfg.root)).expanduser()
    if not root.is_dir():
        raise BenchError(f"dataset.root {str(root)!r} does not exist or is not a folder. Point it at the data folder.")
    paths, labels, ids = [], [], []
    for k, cls in enumerate(cfg.class_dirs):
        files = class_files(root / cls, f"dataset.root {root}")
        paths += files
        labels += [k] * len(files)
        ids += [f"{cls}/{p.relative_to(root / cls)}" for p in files]
    groups = [patient_id_from_name(p.name) or f"img:{i}" for i, p in enumerate(paths)]
    return decoded_dataset("folder", paths, labels, groups, ids, cfg, f"dataset.root {root}",
                           meta={"root": str(root), "grouped_ids": all(not g.startswith("img:") for g in groups)})


def class_files(folder: Path, source: str) -> list[Path]:
    if not folder.is_dir():
        raise BenchError(f"{source}: class folder {str(folder)!r} is missing. Each class needs its own folder "
                         "(set `dataset.class_dirs` if yours are named differently).")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise BenchError(f"{source}: {str(others[0])!r} is not an image file ({len(others)} such files in "
                         f"{folder}). Move non-image files out of the class folders.")
    if not files:
        raise BenchError(f"{source}: class folder {str(folder)!r} is empty. Every MES grade needs images.")
    return files


def patient_id_from_name(name: str) -> str | None:
    import re

    m = re.match(r"UC_patient_(\d+)_\d+", name)
    return m.group(1) if m else None


@register_dataset("manifest")
def manifest_dataset(cfg: DatasetConfig) -> Dataset:
    """A CSV with columns path,label[,group]; relative paths are relative to the CSV."""
    import pandas as pd

    if not cfg.manifest:
        raise BenchError("dataset 'manifest' needs `dataset.manifest:` — a CSV with columns path,label[,group].")
    path = Path(os.path.expandvars(cfg.manifest)).expanduser()
    if not path.is_file():
        raise BenchError(f"dataset.manifest {str(path)!r} does not exist. Give the path of the CSV manifest.")
    fix = "The manifest must be a UTF-8 CSV with a header line `path,label[,group]` and one image per row."
    try:
        df = pd.read_csv(path, dtype={"path": str, "group": str}, keep_default_na=False, na_values={"label": [""]})
    except pd.errors.EmptyDataError:
        raise BenchError(f"{path}: the file is empty. {fix}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not a text file (not UTF-8). {fix}") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise BenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}). {fix}") from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise BenchError(f"{path}: missing column(s) {sorted(missing)}; the manifest needs path,label[,group].")
    if df.empty:
        raise BenchError(f"{path}: the manifest has a header but no image rows. {fix}")
    blank = df.index[df["path"].astype(str).str.strip() == ""]
    if len(blank):
        raise BenchError(f"{path}: row {blank[0] + 2} has an empty path ({len(blank)} such rows). Give every row the "
                         "image's file path (relative to the CSV or absolute).")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df[labels.isna() | ~labels.isin([0, 1, 2, 3])]
    if len(bad):
        row = bad.index[0]
        raise BenchError(f"{path}: row {row + 2} has label '{df['label'][row]}'; labels must be integers 0–3 "
                         f"({len(bad)} bad rows). Fix the manifest.")
    base = path.parent
    files = [Path(p) if Path(p).is_absolute() else base / p for p in df["path"]]
    dup = df["path"][df["path"].duplicated()]
    if len(dup):
        raise BenchError(f"{path}: duplicate image ids: {list(dup[:3])} listed more than once. List each image once.")
    missing_files = [str(f) for f in files if not f.is_file()]
    if missing_files:
        raise BenchError(f"{path}: {len(missing_files)} listed file(s) do not exist, e.g. {missing_files[0]!r}.")
    if "group" in df.columns and (df["group"].astype(str).str.strip() == "").any():
        row = int(np.flatnonzero(df["group"].astype(str).str.strip() == "")[0])
        raise BenchError(f"{path}: row {row + 2} has an empty group (patient id). Give every row its patient, or drop "
                         "the group column (then patients cannot be kept whole).")
    groups = df["group"].astype(str).tolist() if "group" in df.columns else [f"img:{i}" for i in range(len(df))]
    return decoded_dataset("manifest", files, labels.astype(int).tolist(), groups, df["path"].astype(str).tolist(),
                           cfg, str(path), meta={"manifest": str(path), "grouped_ids": "group" in df.columns})
