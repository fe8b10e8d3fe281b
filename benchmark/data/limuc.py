"""LIMUC on disk: detect the published layout, key images by (class folder, file name), inspect a tree."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..labels import MES
from ..suite.schema import DatasetConfig
from .files import IMAGE_SUFFIXES, bit_depth, decoded_dataset, patient_id_from_name, to_rgb8
from .registry import register_dataset

CLASS_DIRS = [f"Mayo {k}" for k in MES.grades]
LAYOUTS = {
    "train_test": "train_and_validation_sets/ + test_set/ (published patient-level hold-out)",
    "patient_based": "patient_based_classified_images/<pid>/Mayo k/",
    "class_folders": "a bare folder of Mayo 0..Mayo 3",
}


@dataclass
class Entry:
    path: Path
    label: int
    patient: str
    image_id: str
    published_test: bool


@dataclass
class Scan:
    root: Path
    layout: str | None
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def detect_layout(root: Path) -> tuple[str | None, Path]:
    if (root / "train_and_validation_sets").is_dir():
        return "train_test", root
    if (root / "patient_based_classified_images").is_dir():
        return "patient_based", root / "patient_based_classified_images"
    if any((root / c).is_dir() for c in CLASS_DIRS):
        return "class_folders", root
    subdirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    if subdirs and all(any((d / c).is_dir() for c in CLASS_DIRS) for d in subdirs):
        return "patient_based", root
    return None, root


def _scan_class_tree(scan: Scan, folder: Path, prefix: str, patient: str | None, test: bool, need_all: bool):
    for k, cls in enumerate(CLASS_DIRS):
        cdir = folder / cls
        if not cdir.is_dir():
            if need_all:
                scan.problems.append(f"missing class folder {cdir}")
            continue
        files = sorted(p for p in cdir.iterdir() if p.is_file() and not p.name.startswith("."))
        if need_all and not files:
            scan.problems.append(f"empty class folder {cdir}")
        for p in files:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                scan.problems.append(f"non-image file {p}")
                continue
            pid = patient or patient_id_from_name(p.name) or f"img:{prefix}{cls}/{p.name}"
            scan.entries.append(Entry(p, k, pid, f"{prefix}{cls}/{p.name}", test))


def scan_tree(root: Path) -> Scan:
    root = Path(os.path.expandvars(str(root))).expanduser()
    if not root.is_dir():
        return Scan(root, None, problems=[f"data root {root} does not exist or is not a folder"])
    layout, base = detect_layout(root)
    scan = Scan(root, layout)
    if layout is None:
        scan.problems.append(
            f"no class folders (Mayo 0..Mayo 3) and no known LIMUC layout under {root}; expected "
            + " or ".join(LAYOUTS.values())
        )
        return scan
    if layout == "train_test":
        _scan_class_tree(scan, root / "train_and_validation_sets", "train_and_validation_sets/", None, False, True)
        if (root / "test_set").is_dir():
            _scan_class_tree(scan, root / "test_set", "test_set/", None, True, True)
    elif layout == "patient_based":
        for pdir in sorted(d for d in base.iterdir() if d.is_dir()):
            _scan_class_tree(scan, pdir, f"{pdir.name}/", pdir.name, False, False)
        counts = Counter(e.label for e in scan.entries)
        for k, cls in enumerate(CLASS_DIRS):
            if counts[k] == 0:
                scan.problems.append(f"class {cls} has no image in any patient folder under {base}")
    else:
        _scan_class_tree(scan, root, "", None, False, True)
    return scan


def unreadable(entries: list[Entry]) -> list[tuple[Any, Any, Any, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def check(e):
        try:
            data = e.path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                to_rgb8(im, e.path)  # what training will do with it: a float or 32-bit image it cannot use fails here
                return None, im.size, hashlib.sha1(data).hexdigest(), bit_depth(im)
        except ValueError as exc:
            return f"unusable image {e.path} ({exc})", None, None, None
        except Exception as exc:
            return f"unreadable image {e.path} ({type(exc).__name__})", None, None, None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(check, entries))


def inspect_tree(root) -> tuple[dict, list[str]]:
    """What a LIMUC-like tree holds and what makes it unusable."""
    scan = scan_tree(Path(root))
    results = unreadable(scan.entries) if scan.entries else []
    problems = list(scan.problems) + [msg for msg, *_ in results if msg]
    sizes = Counter(size for _, size, _, _ in results if size)
    depths = Counter(depth for *_, depth in results if depth)
    by_hash = defaultdict(list)
    for e, (_, _, digest, _) in zip(scan.entries, results):
        if digest:
            by_hash[digest].append(e)
    per_class = Counter(e.label for e in scan.entries)
    patients = defaultdict(set)
    for e in scan.entries:
        patients[e.patient].add(e.label)
    names = defaultdict(set)
    for e in scan.entries:
        names[(e.patient, e.path.name)].add(e.label)
    info = {
        "root": str(scan.root),
        "layout": LAYOUTS.get(scan.layout or "", "unknown"),
        "images": len(scan.entries),
        "images_per_class": {CLASS_DIRS[k]: per_class.get(k, 0) for k in MES.grades},
        "patients": len(patients),
        "patients_per_class": {CLASS_DIRS[k]: sum(k in v for v in patients.values()) for k in MES.grades},
        "patients_spanning_grades": sum(len(v) > 1 for v in patients.values()),
        "published_test_images": sum(e.published_test for e in scan.entries),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        # 16-bit images are scaled to 8 bits when decoded (v / 257), never clipped
        "bit_depths": dict(depths.most_common()),
        "names_under_two_classes": sum(len(v) > 1 for v in names.values()),
        "byte_identical_files": sum(len(v) - 1 for v in by_hash.values() if len(v) > 1),
        "identical_files_with_different_labels": sum(len({e.label for e in v}) > 1 for v in by_hash.values()),
    }
    return info, problems


@register_dataset("limuc")
def limuc_dataset(cfg: DatasetConfig):
    root = cfg.root or os.environ.get("LIMUC_ROOT")
    if not root:
        raise BenchError(
            "dataset 'limuc' needs its location: set `dataset.root:` in the suite or LIMUC_ROOT in the "
            "environment to the folder of the LIMUC download (Zenodo record 5827695)."
        )
    scan = scan_tree(Path(root))
    if scan.problems:
        shown = "; ".join(scan.problems[:6])
        raise BenchError(
            f"LIMUC root {scan.root}: {len(scan.problems)} problem(s): {shown}. Fix the tree "
            "(`bench data inspect PATH` lists everything it finds)."
        )
    e = scan.entries
    published = None
    if any(x.published_test for x in e):
        import numpy as np

        published = np.array([x.published_test for x in e])
    return decoded_dataset(
        "limuc",
        [x.path for x in e],
        [x.label for x in e],
        [x.patient for x in e],
        [x.image_id for x in e],
        cfg,
        f"LIMUC root {scan.root}",
        published_test=published,
        meta={"root": str(scan.root), "layout": scan.layout, "grouped_ids": True, "classes": list(MES.classes)},
    )
