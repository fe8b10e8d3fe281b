"""External test sets (`test_sets:`): another centre's data, its labels mapped onto the suite's grades.

A test set is any dataset the catalogue loads (folder, manifest, LIMUC, synthetic); `label_map` sends each of its
classes (a folder name, a label, or a grade's index) to a grade of the suite's scale, or to null to drop those
images (HyperKvasir's in-between grades 'ulcerative-colitis-grade-1-2', …). Grades of the scale that no image maps
to are absent from the set, and its report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BenchError
from ..labels import Scale
from ..suite.schema import TestSetConfig
from .catalogue import load_dataset


@dataclass
class ExternalSet:
    name: str
    images: np.ndarray  # (n, H, W, 3) uint8
    labels: np.ndarray  # (n,) grades of the suite's scale
    ids: np.ndarray
    groups: np.ndarray | None  # patient ids where the data has them
    mapping: dict[str, int | None]  # the set's own class -> the suite's grade (None: dropped)
    dropped: int  # images of classes mapped to null
    in_sample: int = 0  # images that are also images of the suite's own dataset (identical pixels)

    def summary(self, scale: Scale) -> dict:
        counts = np.bincount(self.labels, minlength=scale.k)
        return {
            "images": int(len(self.labels)),
            "dropped": self.dropped,
            "patients": None if self.groups is None else int(len(np.unique(self.groups))),
            "class_counts": counts.tolist(),
            "absent": [scale.classes[g] for g in scale.grades if counts[g] == 0],
            "mapping": self.mapping,
            "in_sample": self.in_sample,
        }


def shared_images(images: np.ndarray, others: np.ndarray) -> int:
    """How many of `images` have the exact pixels of an image among `others` (both decoded uint8 arrays)."""
    import hashlib

    if images.shape[1:] != others.shape[1:]:
        return 0  # decoded at another size: not the same pixels (a resized copy is not detected)

    def digests(a: np.ndarray) -> list[bytes]:
        return [hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest() for x in a]

    seen = set(digests(others))
    return sum(d in seen for d in digests(images))


def _grade(value, scale: Scale, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and 0 <= value < scale.k:
        return value
    if isinstance(value, str) and value in scale.classes:
        return scale.classes.index(value)
    grades = ", ".join(f"{i}: {c}" for i, c in enumerate(scale.classes))
    raise BenchError(
        f"{where}: {value!r} is not a grade of the suite's scale ({grades}). Map it to a grade's index or name, or "
        "to null to drop those images."
    )


def class_mapping(classes: tuple[str, ...], label_map: dict | None, scale: Scale, where: str) -> dict[str, int | None]:
    """The set's own class (by name) -> a grade of the suite's scale, from `label_map` (keys: the class's name or its
    index), or one for one where the set has the scale's grades."""
    if label_map is None:
        if len(classes) != scale.k:
            raise BenchError(
                f"{where}: the set has {len(classes)} classes ({', '.join(classes)}) and the suite's scale {scale.k} "
                f"({', '.join(scale.classes)}); give a label_map from each of its classes to a grade or null, e.g. "
                f"label_map: {{{classes[0]!r}: 0, …}}."
            )
        return {c: k for k, c in enumerate(classes)}
    known = {str(k): c for k, c in enumerate(classes)} | {c: c for c in classes}
    mapping: dict[str, int | None] = {}
    for key, value in label_map.items():
        name = known.get(str(key))
        if name is None:
            raise BenchError(
                f"{where}.label_map: {key!r} is none of the set's classes ({', '.join(classes)}). Map each of them "
                "by its name (a folder's name) or its index."
            )
        if name in mapping:
            first = next(k for k in label_map if known.get(str(k)) == name)
            raise BenchError(
                f"{where}.label_map: {first!r} and {key!r} both name the set's class {name!r} (by its name and by its "
                "index), so one would silently win. Map each class once."
            )
        mapping[name] = _grade(value, scale, f"{where}.label_map[{key!r}]")
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise BenchError(
            f"{where}.label_map: no entry for {', '.join(repr(c) for c in missing)}. Map every class of the set to a "
            "grade, or to null to drop its images."
        )
    return mapping


def load_external(cfg: TestSetConfig, scale: Scale) -> ExternalSet:
    where = f"test_sets[{cfg.name}]"
    try:
        ds = load_dataset(cfg.dataset, every_grade=False)  # a grade it lacks is reported absent
    except BenchError as exc:
        raise BenchError(f"{where} (an external test set): {exc}") from None
    mapping = class_mapping(ds.classes, cfg.label_map, scale, where)
    lookup = np.array([-1 if mapping[c] is None else mapping[c] for c in ds.classes], dtype=np.int64)
    labels = lookup[ds.labels]
    keep = np.flatnonzero(labels >= 0)
    if not len(keep):
        raise BenchError(f"{where}: label_map drops every image of the set. Map at least one class to a grade.")
    grouped = bool(ds.meta.get("grouped_ids", False))
    return ExternalSet(
        cfg.name,
        ds.images if len(keep) == len(labels) else ds.images[keep],
        labels[keep],
        ds.ids[keep],
        ds.groups[keep] if grouped else None,
        mapping,
        int(len(labels) - len(keep)),
    )
