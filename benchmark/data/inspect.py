"""`bench data inspect` for anything a suite can name: a folder tree, a manifest, a suite (its dataset and every
external test set after its `label_map`). What it holds per grade and per patient, its image sizes and modes, exact
duplicates (the same pixels under two grades or two patients), and what would stop a run — in the data's own grade
names, never "Mayo" for a tree that is not MES."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BenchError
from ..suite.schema import DatasetConfig, Suite


@dataclass
class Inspection:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def file_facts(paths: list[Path]) -> tuple[Counter, Counter, list[str]]:
    """Image sizes (W×H) and modes from the files' headers (nothing decoded), and the files that cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from .files import bit_depth

    def head(p: Path):
        try:
            with Image.open(p) as im:
                return f"{im.size[0]}x{im.size[1]}", bit_depth(im), None
        except Exception as exc:
            return None, None, f"{p} ({type(exc).__name__})"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        facts = list(pool.map(head, paths))
    sizes = Counter(s for s, _, _ in facts if s)
    modes = Counter(m for _, m, _ in facts if m)
    return sizes, modes, [bad for *_, bad in facts if bad]


def summarize(
    title: str,
    images: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    ids: np.ndarray,
    classes: tuple[str, ...],
    extra: list[tuple[str, str]] | None = None,
) -> Inspection:
    """Counts per grade and patient, and exact duplicates, of decoded images (what training would see)."""
    out = Inspection(title)
    k = len(classes)
    counts = np.bincount(labels, minlength=k)
    out.rows.append(("grades", f"{k}: {', '.join(classes)}"))
    out.rows.append(("images", str(len(labels))))
    out.rows.append(("images per grade", ", ".join(f"{c}: {int(n)}" for c, n in zip(classes, counts))))
    absent = [c for c, n in zip(classes, counts) if n == 0]
    if groups is None:
        out.rows.append(("patients", "no patient ids (a grouped protocol cannot keep patients whole)"))
    else:
        per_patient = Counter(groups.tolist())
        sizes = np.array(list(per_patient.values()))
        out.rows.append(("patients", str(len(per_patient))))
        out.rows.append(
            (
                "patients per grade",
                ", ".join(f"{c}: {len(set(groups[labels == g].tolist()))}" for g, c in enumerate(classes)),
            )
        )
        out.rows.append(
            (
                "images per patient",
                f"min {sizes.min()}, median {np.median(sizes):g}, max {sizes.max()}",
            )
        )
        spanning = sum(len(set(labels[groups == p].tolist())) > 1 for p in per_patient)
        out.rows.append(("patients with images of several grades", str(spanning)))
    out.rows += extra or []
    by_content: dict[bytes, list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        by_content[hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest()].append(i)
    dups = [v for v in by_content.values() if len(v) > 1]
    two_grades = [v for v in dups if len(set(labels[v].tolist())) > 1]
    two_patients = [v for v in dups if groups is not None and len(set(groups[v].tolist())) > 1]
    out.rows.append(("identical images (same pixels)", f"{sum(len(v) - 1 for v in dups)} extra copies"))
    for name, found in (("two grades", two_grades), ("two patients", two_patients)):
        if found:
            shown = "; ".join(" = ".join(str(ids[i]) for i in v[:3]) for v in found[:3])
            out.problems.append(
                f"{len(found)} image(s) with the same pixels under {name}, e.g. {shown}: one image can then sit in "
                "training and test at once" + (" with two labels" if name == "two grades" else "")
                + ". Remove the copies."
            )  # fmt: skip
    if absent:
        out.notes.append(
            f"no image of {', '.join(absent)} (a training set needs every grade; a test set may lack some)"
        )
    return out


def listed_files(cfg: DatasetConfig) -> list[Path]:
    """The image files a dataset reads, found without decoding them (none for the synthetic data)."""
    from .files import folder_listing

    if cfg.name == "folder":
        return folder_listing(cfg)[1]
    if cfg.name == "limuc":
        from .limuc import scan_tree

        root = cfg.root or os.environ.get("LIMUC_ROOT")
        return [e.path for e in scan_tree(Path(root)).entries] if root else []
    if cfg.name == "manifest" and cfg.manifest:
        import pandas as pd

        path = Path(os.path.expandvars(cfg.manifest)).expanduser()
        try:
            rel = pd.read_csv(path, dtype=str, keep_default_na=False)["path"]
        except Exception:
            return []  # loading it says what is wrong
        return [Path(p) if Path(p).is_absolute() else path.parent / p for p in rel]
    return []


def inspect_config(cfg: DatasetConfig, title: str) -> Inspection:
    """One dataset as the suite would load it (an external set may lack grades)."""
    from .catalogue import load_dataset

    rows, file_problems = file_rows(cfg)
    try:
        ds = load_dataset(cfg, every_grade=False)
    except BenchError as exc:
        return Inspection(title, rows, file_problems + [str(exc)])
    grouped = bool(ds.meta.get("grouped_ids", False))
    out = summarize(title, ds.images, ds.labels, ds.groups if grouped else None, ds.ids, ds.classes, rows)
    out.problems = file_problems + out.problems
    if not grouped:
        from .files import NO_PATIENTS_FIX

        out.notes.append(
            f"no patient ids: `protocol.kind: grouped` or `polat` would be refused; {NO_PATIENTS_FIX}. "
            "`kind: study` splits by image and lets one patient's images sit in training and test at once"
        )
    return out


def file_rows(cfg: DatasetConfig) -> tuple[list[tuple[str, str]], list[str]]:
    try:
        files = listed_files(cfg)
    except BenchError:
        return [], []  # loading it says what is wrong
    if not files:
        return [], []
    sizes, modes, bad = file_facts(files)
    rows = [
        ("image sizes (files, W×H)", ", ".join(f"{s}: {n}" for s, n in sizes.most_common(6))),
        ("modes", ", ".join(f"{m}: {n}" for m, n in modes.most_common())),
    ]
    if len(sizes) > 1 and cfg.resize is None:
        rows.append(("note", "several sizes: give `dataset.resize: [H, W]`"))
    problems = [f"{len(bad)} file(s) cannot be read as images, e.g. {bad[0]}"] if bad else []
    return rows, problems


def inspect_suite(suite: Suite) -> list[Inspection]:
    """The suite's dataset, then each external test set on the suite's grades (after its label_map)."""
    from .catalogue import load_dataset
    from .dataset import resolve_scale
    from .external import load_external

    main = inspect_config(suite.dataset, f"dataset ({suite.dataset.name})")
    out = [main]
    if not suite.test_sets:
        return out
    try:
        scale = resolve_scale(suite.scale, load_dataset(suite.dataset, every_grade=False))
    except BenchError:
        return out  # the dataset's own problem is listed; its scale is what the test sets map onto
    for cfg in suite.test_sets:
        title = f"test_sets[{cfg.name}] ({cfg.dataset.name}), on the suite's grades after its label_map"
        try:
            ext = load_external(cfg, scale)
        except BenchError as exc:
            out.append(Inspection(title, problems=[str(exc)]))
            continue
        mapped = ", ".join(f"{k} → {'dropped' if v is None else scale.classes[v]}" for k, v in ext.mapping.items())
        extra = [("label_map", mapped), ("dropped by label_map", str(ext.dropped))]
        out.append(summarize(title, ext.images, ext.labels, ext.groups, ext.ids, scale.classes, extra))
    return out


def inspect_path(
    path: str, class_dirs: list[str] | None, patient_pattern: str | None, patients: str | None
) -> list[Inspection]:
    """A folder tree (its sub-folders the grades, in name order, unless --class-dirs), or a manifest CSV."""
    from pydantic import ValidationError

    p = Path(os.path.expandvars(path)).expanduser()
    doc: dict[str, object]
    if p.is_file() and p.suffix.lower() == ".csv":
        doc = {"name": "manifest", "manifest": str(p)}
    elif p.is_dir():
        dirs = class_dirs or sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        doc = {"name": "folder", "root": str(p), "class_dirs": dirs}
        doc |= {k: v for k, v in (("patient_pattern", patient_pattern), ("patients", patients)) if v}
    else:
        raise BenchError(
            f"{path}: neither a folder, a manifest (.csv) nor a suite (.yaml). Give a data folder (one sub-folder per "
            "grade), a CSV manifest (path,label[,group]) or a suite file."
        )
    try:
        cfg = DatasetConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "dataset"
        raise BenchError(f"{path}: {where}: {str(err['msg']).removeprefix('Value error, ')}.") from None
    kind = "folder tree" if cfg.name == "folder" else "manifest"
    return [inspect_config(cfg, f"{kind} {p}")]
