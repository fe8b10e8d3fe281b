"""Image files on disk: decode once (8- and 16-bit), folder-per-class trees and CSV manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import BenchError, not_a_file
from ..labels import unnamed_grades
from ..suite.schema import DatasetConfig
from .dataset import Dataset, cached, content_key
from .registry import register_dataset

IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}


MAX_GRADE = 99  # a scale of a hundred grades is a regression target, not an ordinal label


def decode_files(paths: list[Path], resize: tuple[int, int] | None, source: str) -> np.ndarray:
    """Decode every file once; a corrupt, non-image or odd-sized file is a clear error naming it."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    def read(path):
        try:
            with Image.open(path) as im:
                im = to_rgb8(im, path)
                if resize is not None:
                    im = im.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            return exc  # a decompression bomb (an image of hundreds of megapixels) is named like any bad file

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        arrays = list(pool.map(read, paths))
    bad = [(p, a) for p, a in zip(paths, arrays) if isinstance(a, Exception)]
    if bad:
        listed = "; ".join(f"{p} ({type(e).__name__}: {e})" for p, e in bad[:5])
        raise BenchError(
            f"{source}: {len(bad)} image(s) cannot be decoded: {listed}. Remove or replace these files "
            "(run `bench data inspect` on the root for the full list)."
        )
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BenchError(
            f"{source}: images have different sizes {sorted(shapes)[:4]}; set `dataset.resize: "
            "[height, width]` in the suite to bring them to one size."
        )
    out = np.empty((len(arrays),) + arrays[0].shape, dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


HIGH_BIT_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def bit_depth(im) -> str:
    """'8-bit RGB', '16-bit gray', … for `bench data inspect`."""
    bits = HIGH_BIT_MODES.get(im.mode, 1 if im.mode == "1" else 8)
    kind = {"L": "gray", "LA": "gray", "1": "binary", "P": "palette", "RGBA": "RGBA", "CMYK": "CMYK"}.get(
        im.mode, "float gray" if im.mode == "F" else "gray" if im.mode in HIGH_BIT_MODES else im.mode
    )
    return f"{bits}-bit {kind}"


def to_rgb8(im, path):
    """8-bit RGB. 16-bit images are scaled (v / 257, so 65535 -> 255), not clipped as `convert('RGB')`
    would clip them to {0, 255}; 32-bit integer images are refused rather than guessed at."""
    from PIL import Image

    if im.mode == "F":
        # 32-bit float: only the [0, 1] convention is unambiguous (a float image of 0–255 values is rare and could
        # equally be a dark [0, 1] one); anything else is refused with the file, never turned black by a cast.
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            lo, hi = np.nanmin(a), np.nanmax(a)
            raise ValueError(
                f"32-bit float image with values {lo:g}..{hi:g}: only floats in [0, 1] are read (scaled by "
                "255); save it as an 8- or 16-bit image"
            )
        a8 = np.rint(a * 255.0).astype(np.uint8)
        return Image.fromarray(np.repeat(a8[..., None], 3, axis=2), "RGB")
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
    key = {
        "kind": name,
        "version": 3,  # 3: meta holds the grades' names
        "files": files_key(paths),
        "resize": cfg.resize,
        "class_dirs": list(cfg.class_dirs),
        "content": content_key(labels, groups, ids, published_test),
    }

    def build():
        images = decode_files(paths, cfg.resize, source)
        return Dataset(
            name, images, np.asarray(labels, np.int64), np.asarray(groups), np.asarray(ids), published_test, meta or {}
        )

    ds = cached(key, build, cfg.mmap)
    ds.check(source)
    return ds


@register_dataset("folder")
def folder_dataset(cfg: DatasetConfig) -> Dataset:
    """Any folder-per-class tree; class k is the folder `class_dirs[k]`, and the folders' names are the grades'."""
    root, paths, labels, ids = folder_listing(cfg)
    groups, grouped = folder_patients(cfg, root, paths, labels, ids)
    return decoded_dataset(
        "folder",
        paths,
        labels,
        groups,
        ids,
        cfg,
        f"dataset.root {root}",
        meta={"root": str(root), "grouped_ids": grouped, "classes": list(cfg.class_dirs)},
    )


def folder_listing(cfg: DatasetConfig) -> tuple[Path, list[Path], list[int], list[str]]:
    """(root, image files, their grades, their ids `class_dir/path-in-it`) of a folder-per-class tree."""
    if not cfg.root:
        raise BenchError("dataset 'folder' needs `dataset.root:` — the folder holding one sub-folder per class.")
    root = Path(os.path.expandvars(cfg.root)).expanduser()
    if not root.is_dir():
        raise BenchError(f"dataset.root {str(root)!r} does not exist or is not a folder. Point it at the data folder.")
    paths: list[Path] = []
    labels: list[int] = []
    ids: list[str] = []
    for k, cls in enumerate(cfg.class_dirs):
        files = class_files(root / cls, f"dataset.root {root}")
        paths += files
        labels += [k] * len(files)
        ids += [f"{cls}/{p.relative_to(root / cls).as_posix()}" for p in files]
    return root, paths, labels, ids


NO_PATIENTS_FIX = (
    "name them with `dataset.patient_pattern: REGEX` (a named group `patient` searched in each image's path inside its "
    r"class folder, e.g. '(?P<patient>[^_/]+)_\d+' for p012_003.png, '(?P<patient>[^/]+)/' for per-patient "
    "sub-folders) or `dataset.patients: FILE.csv` (columns path,patient); a manifest takes a group column"
)


def folder_patients(
    cfg: DatasetConfig, root: Path, paths: list[Path], labels: list[int], ids: list[str]
) -> tuple[list[str], bool]:
    """Each image's patient, and whether every image has one: from `patient_pattern`, from the `patients` CSV, or by
    LIMUC's file names (`UC_patient_<id>_<n>`); an image without one is its own unit (`img:N`)."""
    import re

    if cfg.patient_pattern is not None:
        pattern = re.compile(cfg.patient_pattern)
        inside = [p.relative_to(root / cfg.class_dirs[k]).as_posix() for p, k in zip(paths, labels)]
        found = [pattern.search(rel) for rel in inside]
        missed = [ids[i] for i, m in enumerate(found) if m is None or not m.group("patient")]
        if missed:
            raise BenchError(
                f"dataset.patient_pattern {cfg.patient_pattern!r} finds no patient in {missed[0]!r} ({len(missed)} of "
                f"{len(ids)} images; it is searched in the path inside the class folder, e.g. {inside[0]!r}). Fix the "
                "pattern, or move the files it cannot read."
            )
        return [m.group("patient") for m in found if m is not None], True
    if cfg.patients is not None:
        return patients_from_csv(cfg.patients, root, paths, ids), True
    groups = [patient_id_from_name(p.name) or f"img:{i}" for i, p in enumerate(paths)]
    return groups, all(not g.startswith("img:") for g in groups)


def patients_from_csv(csv: str, root: Path, paths: list[Path], ids: list[str]) -> list[str]:
    """The patient of every image from a CSV with columns path,patient (paths relative to the tree's root, as
    `class_dir/file`, or absolute); every image needs a row, rows for files not in the tree are ignored."""
    import pandas as pd

    path = Path(os.path.expandvars(csv)).expanduser()
    fix = "The patients file is a CSV with a header line `path,patient` and one image per row."
    if not path.is_file():
        what = not_a_file(path)
        raise BenchError(f"dataset.patients {str(path)!r} {what}. {fix}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"dataset.patients {path}: not a readable CSV ({str(exc).splitlines()[0]}). {fix}") from None
    if {"path", "patient"} - set(df.columns):
        raise BenchError(f"dataset.patients {path}: columns {list(df.columns)}; it needs path and patient. {fix}")
    by_file: dict[Path, str] = {}
    for row, (p, patient) in enumerate(zip(df["path"], df["patient"])):
        if not patient.strip():
            raise BenchError(f"dataset.patients {path}: row {row + 2} ({p!r}) has no patient. Give every row one.")
        file = (Path(p) if Path(p).is_absolute() else root / p).resolve()
        if by_file.get(file, patient) != patient:
            raise BenchError(
                f"dataset.patients {path}: {p!r} is listed with two patients ({by_file[file]!r} and {patient!r}). "
                "An image belongs to one patient."
            )
        by_file[file] = patient
    missing = [i for i, f in zip(ids, paths) if f.resolve() not in by_file]
    if missing:
        raise BenchError(
            f"dataset.patients {path}: no row for {missing[0]!r} ({len(missing)} of {len(ids)} images). Every image "
            "needs its patient; paths are relative to dataset.root (as class_dir/file) or absolute."
        )
    return [by_file[f.resolve()] for f in paths]


def class_files(folder: Path, source: str) -> list[Path]:
    if not folder.is_dir():
        raise BenchError(
            f"{source}: class folder {str(folder)!r} is missing. Each class needs its own folder "
            "(set `dataset.class_dirs` if yours are named differently)."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise BenchError(
            f"{source}: {str(others[0])!r} is not an image file ({len(others)} such files in "
            f"{folder}). Move non-image files out of the class folders."
        )
    if not files:
        raise BenchError(f"{source}: class folder {str(folder)!r} is empty. Every grade needs images.")
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
        what = not_a_file(path)
        raise BenchError(
            f"dataset.manifest {str(path)!r} {what}. Give the path of the CSV manifest (path,label[,group])."
        )
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
        raise BenchError(
            f"{path}: row {blank[0] + 2} has an empty path ({len(blank)} such rows). Give every row the "
            "image's file path (relative to the CSV or absolute)."
        )
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df[labels.isna() | (labels % 1 != 0) | (labels < 0) | (labels > MAX_GRADE)]
    if len(bad):
        row = bad.index[0]
        raise BenchError(
            f"{path}: row {row + 2} has label '{df['label'][row]}'; labels must be grades 0, 1, …, K − 1 (integers, "
            f"at most {MAX_GRADE}) ({len(bad)} bad rows). Fix the manifest."
        )
    k = int(labels.max()) + 1  # the grades are 0..K−1, each with images
    gaps = sorted(set(range(k)) - {int(v) for v in labels})
    if gaps:  # most often one mistyped label past the others: name its row
        above = df.index[labels > gaps[0]]
        row = above[0]
        raise BenchError(
            f"{path}: row {row + 2} has label '{df['label'][row]}', but no image has grade(s) "
            f"{', '.join(map(str, gaps))}: the labels must be the grades 0, 1, …, K − 1 with images of each (MES: "
            "0–3). Fix the label, or add images of the missing grades."
        )
    base = path.parent
    files = [Path(p) if Path(p).is_absolute() else base / p for p in df["path"]]
    missing_files = [str(f) for f in files if not f.is_file()]
    if missing_files:
        raise BenchError(f"{path}: {len(missing_files)} listed file(s) do not exist, e.g. {missing_files[0]!r}.")
    # One file under two spellings (a.png, ./a.png, its absolute path) would be two images, possibly of two grades,
    # and could sit in train and test at once.
    first_row: dict[Path, int] = {}
    for row, f in enumerate(files):
        real = f.resolve()
        if real in first_row:
            a, b = first_row[real], row
            raise BenchError(
                f"{path}: rows {a + 2} ({df['path'][a]!r}, label {df['label'][a]}) and {b + 2} ({df['path'][b]!r}, "
                f"label {df['label'][b]}) name the same file {str(real)!r}. List each image once, with its one grade."
            )
        first_row[real] = row
    if "group" in df.columns and (df["group"].astype(str).str.strip() == "").any():
        row = int(np.flatnonzero(df["group"].astype(str).str.strip() == "")[0])
        raise BenchError(
            f"{path}: row {row + 2} has an empty group (patient id). Give every row its patient, or drop "
            "the group column (then patients cannot be kept whole)."
        )
    groups = df["group"].astype(str).tolist() if "group" in df.columns else [f"img:{i}" for i in range(len(df))]
    return decoded_dataset(
        "manifest",
        files,
        labels.astype(int).tolist(),
        groups,
        df["path"].astype(str).tolist(),
        cfg,
        str(path),
        meta={"manifest": str(path), "grouped_ids": "group" in df.columns, "classes": list(unnamed_grades(k))},
    )
