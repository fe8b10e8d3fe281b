"""HyperKvasir's ulcerative-colitis images as an external test set: find them in a download and say how to use them.

HyperKvasir (Borgli et al., Sci Data 2020) grades ulcerative colitis in six folders under
`labeled-images/lower-gi-tract/pathological-findings/`: `ulcerative-colitis-grade-0-1`, `-1`, `-1-2`, `-2`, `-2-3`
and `-3`. The whole grades map onto MES 1, 2 and 3; the in-between folders have no single MES grade and are dropped
(`null`), and MES 0 is absent. They load as a `folder` dataset through a test set's `label_map`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import IMAGE_SUFFIXES

PREFIX = "ulcerative-colitis-grade-"
# folder suffix -> MES grade (None: an in-between grade, dropped)
MES_GRADES: dict[str, int | None] = {"0-1": None, "1": 1, "1-2": None, "2": 2, "2-3": None, "3": 3}


def find_colitis_folders(root: Path, max_depth: int = 6) -> tuple[Path, list[str]] | None:
    """(the folder holding the `ulcerative-colitis-grade-*` folders, their names in grade order), or None."""
    root = Path(os.path.expandvars(str(root))).expanduser()
    if not root.is_dir():
        return None
    frontier = [root]
    for _ in range(max_depth):
        nxt = []
        for folder in frontier:
            try:
                children = sorted(d for d in folder.iterdir() if d.is_dir())
            except OSError:
                continue
            found = [d.name for d in children if d.name.startswith(PREFIX)]
            if found:
                order = list(MES_GRADES)
                known = sorted(
                    (n for n in found if n[len(PREFIX) :] in MES_GRADES), key=lambda n: order.index(n[len(PREFIX) :])
                )
                return folder, known + sorted(n for n in found if n not in known)
            nxt += children
        frontier = nxt
    return None


def inspect_colitis(root: Path) -> dict | None:
    """What a HyperKvasir-shaped tree holds, and the test set entry that loads it onto MES; None: not one."""
    found = find_colitis_folders(root)
    if found is None:
        return None
    folder, names = found
    counts = {
        n: sum(1 for p in (folder / n).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for n in names
    }
    label_map = {n: MES_GRADES.get(n[len(PREFIX) :]) for n in names}
    return {"root": str(folder), "class_dirs": names, "images": counts, "label_map": label_map}


def test_set_yaml(info: dict, name: str = "hyperkvasir") -> str:
    """The suite lines that add the tree as an external test set (every folder listed, in-between grades dropped)."""
    dirs = ", ".join(f"'{n}'" for n in info["class_dirs"])
    mapping = ", ".join(f"'{n}': {'null' if g is None else g}" for n, g in info["label_map"].items())
    return (
        "test_sets:\n"
        f"  - name: {name}\n"
        f"    dataset: {{name: folder, root: '{info['root']}', class_dirs: [{dirs}], resize: [H, W]}}\n"
        f"    label_map: {{{mapping}}}"
    )
