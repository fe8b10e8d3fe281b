"""Procedural endoscopy-like images with Mayo-score-dependent findings.

Each image is rendered from a latent continuous severity (its grade plus noise), so neighbouring
grades overlap the way they do for human graders; a small share of labels is then moved to a
neighbouring grade. Patients carry their own tone and illumination and mostly one or two
neighbouring grades, so patient-grouped splits matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import zoom

from ..errors import BenchError
from ..labels import unnamed_grades
from ..suite.schema import DatasetConfig
from .dataset import Dataset, cached
from .registry import register_dataset

LIMUC_SHARES = (0.5414, 0.2707, 0.1112, 0.0767)


def assign_grades(n_images, shares, rng):
    counts = np.floor(np.asarray(shares) / np.sum(shares) * n_images).astype(int)
    counts[0] += n_images - counts.sum()
    return np.repeat(np.arange(len(shares)), counts)


def assign_patients(grades, n_patients, rng):
    """Chunk images sorted by (grade + noise) into patients: neighbouring grades share a patient."""
    order = np.argsort(grades + rng.normal(0, 0.6, size=len(grades)), kind="stable")
    sizes = rng.multinomial(len(grades) - 2 * n_patients, np.ones(n_patients) / n_patients) + 2
    patient = np.empty(len(grades), dtype=np.int64)
    start = 0
    for pid, size in enumerate(sizes):
        patient[order[start : start + size]] = pid
        start += size
    return patient


def _smooth_noise(rng, h, w, cells):
    low = rng.random((cells, cells)).astype(np.float32)
    return zoom(low, (h / cells, w / cells), order=1)[:h, :w]


def _blobs(img, xx, yy, rng, count, radius, color, strength):
    for _ in range(count):
        cx, cy = rng.uniform(-0.8, 0.8, size=2)
        r = radius * rng.uniform(0.6, 1.4)
        ax = rng.uniform(0.6, 1.6)
        mask = np.exp(-(((xx - cx) * ax) ** 2 + ((yy - cy) / ax) ** 2) / (r * r))
        mask = np.clip(mask * 2.5 - 0.6, 0, 1)[..., None] * strength
        img[:] = img * (1 - mask) + np.asarray(color, np.float32) * mask


def render(grade_latent, tone, gain, light, h, w, rng):
    """One RGB float image in [0, 1] for a latent severity in about [-0.5, 3.5]."""
    s = float(grade_latent)
    yy, xx = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij"
    )
    base = np.asarray(tone, np.float32)
    red = np.asarray([1 + 0.06 * s, 1 - 0.09 * s, 1 - 0.08 * s], np.float32)
    img = np.broadcast_to(base * red, (h, w, 3)).copy()

    # erythema texture grows with severity
    texture = _smooth_noise(rng, h, w, max(4, h // 6)) - 0.5
    img *= 1 + (0.05 + 0.05 * max(s, 0)) * texture[..., None]

    # vascular pattern: thin dark-red lines along level sets of a smooth field, fading with grade
    vis = float(np.clip(1 - s / 1.7, 0, 1))
    if vis > 0:
        field = _smooth_noise(rng, h, w, 5)
        vessels = np.exp(-((field - 0.5) ** 2) / 0.0012) + np.exp(-((field - 0.3) ** 2) / 0.0008)
        vessels = np.clip(vessels, 0, 1)[..., None] * vis
        img = img * (1 - 0.45 * vessels * np.asarray([0.5, 1.0, 0.9], np.float32))

    if s > 1.4:  # erosions: small white-yellow dots; friability: small blood spots
        _blobs(img, xx, yy, rng, rng.poisson(2.5 * (s - 1.3)), 0.05, (0.95, 0.9, 0.7), 0.8)
        _blobs(img, xx, yy, rng, rng.poisson(1.8 * (s - 1.4)), 0.06, (0.55, 0.05, 0.05), 0.75)
    if s > 2.4:  # ulcers: larger white-yellow patches; spontaneous bleeding
        _blobs(img, xx, yy, rng, rng.poisson(1.6 * (s - 2.3)) + 1, 0.16, (0.93, 0.88, 0.6), 0.9)
        _blobs(img, xx, yy, rng, rng.poisson(1.4 * (s - 2.4)), 0.2, (0.45, 0.02, 0.03), 0.85)

    # dark lumen, vignetting, directional light
    lx, ly = rng.uniform(-0.5, 0.5, size=2)
    lr = rng.uniform(0.18, 0.32)
    lumen = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (lr * lr))
    img *= (1 - 0.85 * lumen)[..., None]
    img *= (1 - 0.45 * (xx**2 + yy**2) / 2)[..., None]
    img *= (gain * (1 + 0.15 * (light[0] * xx + light[1] * yy)))[..., None]

    # specular highlights
    _blobs(img, xx, yy, rng, rng.integers(2, 7), 0.025, (1.0, 1.0, 1.0), 1.0)
    img += rng.normal(0, 0.015, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def default_shares(k: int) -> tuple[float, ...]:
    """LIMUC's class balance on four grades; on K grades, a balance falling as steeply (each grade about half
    as frequent as the one below)."""
    if k == len(LIMUC_SHARES):
        return LIMUC_SHARES
    return tuple(float(x) for x in 0.55 ** np.arange(k) / np.sum(0.55 ** np.arange(k)))


# A second centre's look per unit of `shift`: another mucosa tone (less red, more yellow: another light
# source and processor) and dimmer illumination.
SHIFT_TONE = np.array([-0.08, 0.06, 0.10])
SHIFT_GAIN = -0.12


def generate(
    n_images=800,
    n_patients=80,
    size=(64, 64),
    seed=0,
    shares=LIMUC_SHARES,
    label_noise=0.06,
    severity_sd=0.38,
    shift=0.0,
    class_names=None,
):
    """Images (N, H, W, 3) uint8, observed labels, patient ids and image ids. K = len(shares) grades span the
    same range of severity as MES's four; `shift` moves the colour and illumination as another centre's would."""
    if n_patients * 2 > n_images:
        raise ValueError(f"n_patients={n_patients} needs at least {2 * n_patients} images (got n_images={n_images})")
    rng = np.random.default_rng(seed)
    h, w = size
    k = len(shares)
    step = 3.0 / (k - 1)  # grade → severity: 0..3 whatever K, so every scale draws the same findings
    grades = assign_grades(n_images, shares, rng)
    patient = assign_patients(grades, n_patients, rng)
    tones = rng.normal([0.86, 0.50, 0.44], [0.04, 0.05, 0.04], size=(n_patients, 3)).clip(0.2, 1)
    gains = rng.uniform(0.8, 1.1, size=n_patients)
    lights = rng.normal(0, 1, size=(n_patients, 2))
    if shift:
        tones = (tones * (1 + shift * SHIFT_TONE)).clip(0.2, 1)
        gains = gains * (1 + shift * SHIFT_GAIN)
    images = np.empty((n_images, h, w, 3), dtype=np.uint8)
    for i in range(n_images):
        p = patient[i]
        latent = grades[i] * step + rng.normal(0, severity_sd * step)
        images[i] = (render(latent, tones[p], gains[p], lights[p], h, w, rng) * 255 + 0.5).astype(np.uint8)
    labels = grades.copy()
    flip = rng.random(n_images) < label_noise
    move = np.where(rng.random(n_images) < 0.5, -1, 1)
    labels[flip] = np.clip(grades[flip] + move[flip], 0, len(shares) - 1)
    groups = np.array([f"S{p:04d}" for p in patient])
    folder = list(class_names) if class_names else [f"Mayo {g}" for g in range(k)]
    ids = np.array([f"synthetic/{folder[g]}/S{p:04d}_{i:05d}" for i, (g, p) in enumerate(zip(labels, patient))])
    return images, labels.astype(np.int64), groups, ids


MAX_SYNTHETIC_BYTES = 8 << 30  # decoded images live in memory (and in the cache)


def checked_params(params: dict[str, Any]) -> dict[str, Any]:
    """The synthetic generator's parameters as the types and ranges it needs, or one paragraph naming the field."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)
        n_images: int = Field(ge=8, le=10_000_000)
        n_patients: int = Field(ge=1)
        size: tuple[int, int]
        seed: int
        label_noise: float = Field(ge=0, le=1)
        severity_sd: float = Field(0.38, gt=0, allow_inf_nan=False)
        classes: int | list[str] = 4
        shares: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
        shift: float = Field(0.0, ge=0, le=5, allow_inf_nan=False)

    try:
        p = Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise BenchError(
            f"dataset.params.{field}: {err['msg']} (got {err.get('input')!r}). Example: "
            "{n_images: 800, n_patients: 80, size: [64, 64], seed: 0}."
        ) from None
    k = p.classes if isinstance(p.classes, int) else len(p.classes)
    if not 2 <= k <= 20 or (isinstance(p.classes, list) and len(set(p.classes)) != k):
        raise BenchError(
            f"dataset.params.classes: a number of grades from 2 to 20, or their names, each once (got {p.classes!r})."
        )
    if p.shares is not None and len(p.shares) != k:
        raise BenchError(
            f"dataset.params.shares: one share per grade ({k}), got {len(p.shares)} ({p.shares}). Example for "
            "four grades: [0.5, 0.3, 0.1, 0.1]."
        )
    h, w = p.size
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise BenchError(f"dataset.params.size {[h, w]}: height and width between 8 and 4096 pixels.")
    need = p.n_images * h * w * 3
    if need > MAX_SYNTHETIC_BYTES:
        raise BenchError(
            f"dataset.params: {p.n_images:,} images of {h}×{w} would take {need / 2**30:,.1f} GiB decoded, more than "
            f"{MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB; use fewer or smaller images."
        )
    out = dict(params, n_images=p.n_images, n_patients=p.n_patients, size=[h, w], seed=p.seed)
    out["label_noise"] = p.label_noise
    return out


def grade_names(params: dict[str, Any]) -> list[str]:
    classes = params.get("classes", 4)
    return list(classes) if isinstance(classes, list) else list(unnamed_grades(classes))


@register_dataset("synthetic")
def synthetic_dataset(cfg: DatasetConfig) -> Dataset:
    params: dict[str, Any] = {"n_images": 800, "n_patients": 80, "size": [64, 64], "seed": 0, "label_noise": 0.06}
    optional = {"severity_sd", "classes", "shares", "shift"}  # absent: the generator's defaults (and cache keys)
    unknown_keys = set(cfg.params) - set(params) - optional
    if unknown_keys:
        from ..errors import closest

        k = sorted(unknown_keys)[0]
        raise BenchError(
            f"dataset.params: unknown synthetic parameter {k!r}: {closest(k, list(params) + sorted(optional))}."
        )
    params.update(cfg.params)
    if cfg.resize:
        params["size"] = list(cfg.resize)
    params = checked_params(params)

    names = grade_names(params)
    named = isinstance(params.get("classes"), list)

    def build():
        try:
            images, labels, groups, ids = generate(
                params["n_images"],
                params["n_patients"],
                tuple(params["size"]),
                params["seed"],
                shares=tuple(params.get("shares") or default_shares(len(names))),
                label_noise=params["label_noise"],
                shift=params.get("shift", 0.0),
                class_names=names if named else None,
                **({"severity_sd": params["severity_sd"]} if "severity_sd" in params else {}),
            )
        except ValueError as exc:
            raise BenchError(f"dataset.params: {exc}.") from None
        meta = {"params": params, "grouped_ids": True, "classes": names}
        return Dataset("synthetic", images, labels, groups, ids, meta=meta)

    ds = cached({"kind": "synthetic", "version": 1, **params}, build, cfg.mmap)
    ds.check("synthetic dataset")
    return ds
