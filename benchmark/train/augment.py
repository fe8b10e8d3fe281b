"""Batched augmentation and normalisation from the decoded uint8 array, on the training device.

The study's recipe (the default `augment:`): random horizontal flip and rotation by a uniform angle in
[−180°, 180°], then normalisation with the fold's training mean/std. Pixels rotated in from outside the frame
are black, as torchvision's RandomRotation fills them. The suite's `augment:` adds a vertical flip, a random
resized crop, colour jitter, Gaussian blur and batch mixing (MixUp, CutMix, ResizeMix); each is checked against
torchvision's own v2 transform in tests/test_augment.py (ResizeMix, which torchvision lacks, against its
definition). The geometric parts (crop, rotation, flips) are one
affine warp per image; colour and blur act on the float batch; mixing pairs each image with the previous one of
its batch, as torchvision's MixUp/CutMix do.

Every random draw of an epoch comes from the run's generator seeded by (seed, epoch), so the batches are the
same for every formulation and a resumed cell replays them. The study's recipe draws exactly what it always
drew (its cells' results are unchanged); the other parts draw from a NumPy generator seeded from that generator
only when they are switched on. Batches stay NHWC until the end: NHWC permuted to NCHW *is*
channels_last, the fastest layout for convolutions on both CPU (oneDNN) and GPU.
- CUDA: uint8 data resident on the GPU, bilinear `grid_sample` on the batch.
- CPU: OpenCV `warpAffine` (nearest neighbour, on uint8, multithreaded) per image, then one fused
  in-place normalisation in NHWC. Measured on a 2-core CPU at 352×288: ~7,000 images/s for the
  rotation against ~500 for PIL per image and ~150 for float `grid_sample` (see `bench perf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F


def channel_stats(images: np.ndarray, idx: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std in [0, 1] over the given images only (the fold's training part). From each channel's
    histogram of the 256 uint8 values: exact, and ~35× faster than float sums (a LIMUC fold took minutes)."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(idx), chunk):
        block = images[np.sort(idx[start : start + chunk])]
        for c in range(3):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    value = np.arange(256, dtype=np.float64) / 255.0
    count = hist.sum(axis=1)
    mean = (hist * value).sum(axis=1) / count
    mean_sq = (hist * value**2).sum(axis=1) / count
    std = np.sqrt(np.maximum(mean_sq - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class Draws:
    """One epoch's augmentation draws, one row per position of the epoch's order (numbers only, on the CPU).
    `mix_lam`, `mix_x`, `mix_y` are read at the first position of each batch (one mixing per batch, as
    torchvision's)."""

    angles: torch.Tensor  # radians
    flips: torch.Tensor  # horizontal flip
    vflips: np.ndarray | None = None
    crops: np.ndarray | None = None  # (n, 4) top, left, height, width of the random resized crop
    jitter: np.ndarray | None = None  # (n, 4) brightness, contrast, saturation factors and hue shift
    blur: np.ndarray | None = None  # (n,) Gaussian sigma, 0 where the image is not blurred
    mix_lam: np.ndarray | None = None  # (n,) MixUp/CutMix λ ~ Beta(α, α); ResizeMix: the patch's side scale
    mix_x: np.ndarray | None = None  # (n,) CutMix box centre / ResizeMix patch corner, as a fraction of W / H
    mix_y: np.ndarray | None = None

    def __getitem__(self, s: slice) -> Draws:
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        return Draws(**{name: None if v is None else v[s] for name, v in parts.items()})  # type: ignore[arg-type]


def draw_params(n: int, generator: torch.Generator, recipe=None, size: tuple[int, int] | None = None) -> Draws:
    """The draws of n images from the run's generator (CPU). `recipe`: the suite's `augment:` (None: the
    study's); `size`: the images' (H, W), for the resized crop. The study's flip and rotation come first and
    exactly as they always did."""
    rotation = math.pi if recipe is None else math.radians(recipe.rotation)
    hflip = 0.5 if recipe is None else recipe.hflip
    angles = (torch.rand(n, generator=generator) * 2 - 1) * rotation
    flips = torch.rand(n, generator=generator) < hflip
    draws = Draws(angles, flips)
    if recipe is None or not recipe.beyond_study:
        return draws
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    if recipe.vflip:
        draws.vflips = rng.random(n) < recipe.vflip
    if recipe.resized_crop is not None:
        draws.crops = _crop_boxes(rng, n, recipe.resized_crop.scale, recipe.resized_crop.ratio, size)
    if recipe.color_jitter is not None:
        b, c, s, h = recipe.color_jitter
        draws.jitter = np.stack(
            [rng.uniform(max(0.0, 1 - b), 1 + b, n), rng.uniform(max(0.0, 1 - c), 1 + c, n),
             rng.uniform(max(0.0, 1 - s), 1 + s, n), rng.uniform(-h, h, n)], 1
        )  # fmt: skip
    if recipe.blur is not None:
        lo, hi = recipe.blur.sigma
        sigma = rng.uniform(lo, hi, n)
        draws.blur = np.where(rng.random(n) < recipe.blur.p, sigma, 0.0)
    if recipe.mix == "resizemix":
        draws.mix_lam = rng.uniform(recipe.mix_scale[0], recipe.mix_scale[1], n)
        draws.mix_x, draws.mix_y = rng.random(n), rng.random(n)
    elif recipe.mix != "none":
        draws.mix_lam = rng.beta(recipe.mix_alpha, recipe.mix_alpha, n)
        draws.mix_x, draws.mix_y = rng.random(n), rng.random(n)
    return draws


def _crop_boxes(rng, n, scale, ratio, size) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for n images at once: up to ten tries of an area fraction in
    `scale` and a log-uniform aspect ratio in `ratio`, else the central crop of the clamped ratio."""
    h, w = size
    area = h * w
    target = area * rng.uniform(scale[0], scale[1], (n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    cw = np.round(np.sqrt(target * aspect)).astype(int)
    ch = np.round(np.sqrt(target / aspect)).astype(int)
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.argmax(1)
    rows = np.arange(n)
    cw, ch = cw[rows, first], ch[rows, first]
    top = (rng.random(n) * (h - ch + 1)).astype(int)
    left = (rng.random(n) * (w - cw + 1)).astype(int)
    fallback = ~ok.any(1)
    if fallback.any():
        in_ratio = w / h
        fw, fh = (w, int(round(w / min(ratio)))) if in_ratio < min(ratio) else (
            (int(round(h * max(ratio))), h) if in_ratio > max(ratio) else (w, h))  # fmt: skip
        cw[fallback], ch[fallback] = fw, fh
        top[fallback], left[fallback] = (h - fh) // 2, (w - fw) // 2
    return np.stack([top, left, ch, cw], 1)


def affine_matrices(angles, flips, h, w, vflips=None, crops=None) -> np.ndarray:
    """(B, 2, 3) OpenCV forward maps: the resized crop (to the full frame), then the rotation about the centre by
    `angle`, then the horizontal and vertical flips."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    out = np.empty((len(angles), 2, 3))
    for i, (a, f) in enumerate(zip(np.asarray(angles, float), np.asarray(flips, bool))):
        c, s = math.cos(a), math.sin(a)
        # dst = R·(p − c) + c, with R the inverse of the sampling rotation used by rotate_flip_bilinear
        rot = np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0, 0, 1]])
        flip = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) if f else np.eye(3)
        m = flip @ rot
        if vflips is not None and vflips[i]:
            m = np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]]) @ m
        if crops is not None:
            top, left, ch, cw = crops[i]
            # pixel centres: the crop's (x − left + ½)·w/cw − ½, as torchvision's resized_crop samples
            sx, sy = w / cw, h / ch
            m = m @ np.array([[sx, 0, (0.5 - left) * sx - 0.5], [0, sy, (0.5 - top) * sy - 0.5], [0, 0, 1]])
        out[i] = m[:2]
    return out


def rotate_flip_cv2(x: np.ndarray, angles, flips, vflips=None, crops=None) -> np.ndarray:
    """x: (B, H, W, C) uint8 -> cropped, rotated then flipped copy; nearest neighbour, black outside."""
    return warp_cv2(x, affine_matrices(angles, flips, x.shape[1], x.shape[2], vflips, crops))


def warp_cv2(x: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    import cv2

    b, h, w, _ = x.shape
    out = np.empty_like(x)
    for i, m in enumerate(matrices):
        cv2.warpAffine(
            x[i], m, (w, h), dst=out[i], flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out


def rotate_flip_bilinear(x: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) float -> rotated + flipped, bilinear, zeros outside."""
    b, _, h, w = x.shape
    cos, sin = torch.cos(angles).to(x.device), torch.sin(angles).to(x.device)
    sign = torch.where(flips.to(x.device), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    # normalised coordinates: account for the aspect ratio so the rotation is rigid in pixels
    theta[:, 0, 0] = cos * sign
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * sign * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_bilinear(x: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
    """x: (B, C, H, W) float, warped by OpenCV-style forward pixel maps (as `affine_matrices` gives), bilinear,
    zeros outside: grid_sample's theta is the inverse map in its normalised coordinates (align_corners=False)."""
    b, c, h, w = x.shape
    full = np.zeros((b, 3, 3))
    full[:, :2], full[:, 2, 2] = matrices, 1.0
    norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    theta = norm @ np.linalg.inv(full) @ np.linalg.inv(norm)
    theta_t = torch.as_tensor(theta[:, :2], dtype=x.dtype).to(x.device, non_blocking=True)
    grid = F.affine_grid(theta_t, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """x: (B, 3, H, W) float in [0, 1]; per image brightness, contrast, saturation factors and hue shift, applied
    in that fixed order (torchvision's ColorJitter draws the order per call) with torchvision's formulas."""
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    f = torch.as_tensor(factors, dtype=x.dtype).to(x.device, non_blocking=True).view(-1, 4, 1, 1, 1)
    gray = (0.2989, 0.587, 0.114)

    def grayscale(t):
        return (t[:, 0:1] * gray[0] + t[:, 1:2] * gray[1] + t[:, 2:3] * gray[2]).clamp(0, 1)

    x = (x * f[:, 0]).clamp(0, 1)
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = (x * f[:, 1] + mean * (1 - f[:, 1])).clamp(0, 1)
    x = (x * f[:, 2] + grayscale(x) * (1 - f[:, 2])).clamp(0, 1)
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, 0:1] + f[:, 3]) % 1.0
    return _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, kernel: int) -> torch.Tensor:
    """x: (B, C, H, W) float; each image blurred with its own sigma (0: unchanged) by torchvision's separable
    kernel and reflect padding, as one grouped convolution for the batch."""
    b, c, h, w = x.shape
    keep = sigma <= 0
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, kernel, dtype=torch.float64)
    s = torch.as_tensor(np.where(keep, 1.0, sigma), dtype=torch.float64).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    k[torch.as_tensor(keep)] = (t == 0).double()  # the identity kernel (odd kernel sizes only)
    k = k.to(x.dtype).repeat_interleave(c, 0).to(x.device, non_blocking=True)
    pad = kernel // 2
    y = F.pad(x.reshape(1, b * c, h, w), [pad, pad, pad, pad], mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


def mix_batch(x: torch.Tensor, how: str, lam: float, cx: float, cy: float) -> tuple[torch.Tensor, float]:
    """MixUp, CutMix or ResizeMix of a batch with itself rolled by one (torchvision's pairing). Returns the mixed
    batch and the weight λ of each image's own label (CutMix, ResizeMix: the area actually kept, as torchvision
    adjusts CutMix's). ResizeMix (Qin et al. 2020): the paired image, shrunk whole by the side scale `lam`
    (bilinear), pasted at a position given by (cx, cy), so its label's share is the patch's area."""
    rolled = x.roll(1, 0)
    if how == "mixup":
        return rolled.mul(1.0 - lam).add_(x.mul(lam)), lam
    h, w = x.shape[-2:]
    if how == "resizemix":
        ph, pw = max(1, round(lam * h)), max(1, round(lam * w))
        y0, x0 = int(cy * (h - ph + 1)), int(cx * (w - pw + 1))
        out = x.clone()
        out[..., y0 : y0 + ph, x0 : x0 + pw] = F.interpolate(rolled, size=(ph, pw), mode="bilinear", antialias=True)
        return out, 1.0 - ph * pw / (h * w)
    rx, ry = int(cx * w), int(cy * h)
    r = 0.5 * math.sqrt(1.0 - lam)
    rw, rh = int(r * w), int(r * h)
    x1, y1, x2, y2 = max(rx - rw, 0), max(ry - rh, 0), min(rx + rw, w), min(ry + rh, h)
    out = x.clone()
    out[..., y1:y2, x1:x2] = rolled[..., y1:y2, x1:x2]
    return out, 1.0 - (x2 - x1) * (y2 - y1) / (w * h)


class BatchMaker:
    """Turns dataset indices into normalised channels_last (B, 3, H, W) batches on the training device."""

    def __init__(
        self, images, mean, std, device: torch.device, input_size=None, resident: bool | None = None, recipe=None
    ):
        self.device = device
        self.recipe = recipe  # the suite's augment: (None: the study's)
        # Resident: the uint8 array lives as one tensor on the device and batches are augmented there with
        # grid_sample (the CUDA path). The code is device-agnostic, so tests run it on CPU tensors too.
        self.resident = device.type == "cuda" if resident is None else resident
        if self.resident:
            # Resident uint8 data: the whole array is copied to the GPU once.
            self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
        else:
            self.images = images  # numpy array or memory map, shared by every cell of the run
        self.size = tuple(images.shape[1:3])
        self.scale = torch.as_tensor(1.0 / (255.0 * np.asarray(std)), dtype=torch.float32, device=device)
        self.shift = torch.as_tensor(-np.asarray(mean) / np.asarray(std), dtype=torch.float32, device=device)
        self.input_size = tuple(input_size) if input_size else None
        self.path = (
            f"resident-bilinear-grid_sample ({device.type})" if self.resident else "cpu-opencv-nearest-warpAffine"
        )

    def draw(self, n: int, generator: torch.Generator) -> Draws:
        return draw_params(n, generator, self.recipe, self.size)

    def _finish_nhwc(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nhwc.to(torch.float32)
        x.mul_(self.scale).add_(self.shift)  # broadcast over the last (channel) axis, in place
        return self._resize(x.permute(0, 3, 1, 2))  # NCHW view of NHWC memory = channels_last

    def _resize(self, x):
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_batch(self, idx, draws: Draws):
        """The augmented, normalised batch of the images `idx` with their draws (a slice of the epoch's)."""
        if self.recipe is not None and self.recipe.beyond_study:
            return self._recipe_batch(idx, draws)
        if self.resident:
            x = self.images[torch.as_tensor(idx, device=self.device)].permute(0, 3, 1, 2).float()
            x = rotate_flip_bilinear(x, draws.angles, draws.flips)
            x = x * self.scale.view(1, 3, 1, 1) + self.shift.view(1, 3, 1, 1)
            return self._resize(x.contiguous(memory_format=torch.channels_last))
        batch = np.ascontiguousarray(self.images[np.asarray(idx)])
        return self._finish_nhwc(torch.from_numpy(rotate_flip_cv2(batch, draws.angles.numpy(), draws.flips.numpy())))

    def _recipe_batch(self, idx, draws: Draws):
        """A recipe beyond the study's: one warp (crop, rotation, flips), colour and blur in [0, 1], normalisation.
        Mixing is the loop's (`mix`), since it changes the targets too."""
        h, w = self.size
        m = affine_matrices(draws.angles.numpy(), draws.flips.numpy(), h, w, draws.vflips, draws.crops)
        if self.resident:
            x = self.images[torch.as_tensor(idx, device=self.device)].permute(0, 3, 1, 2).float().div_(255.0)
            x = warp_bilinear(x, m)
        else:
            batch = warp_cv2(np.ascontiguousarray(self.images[np.asarray(idx)]), m)
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        if draws.jitter is not None:
            x = color_jitter(x, draws.jitter)
        if draws.blur is not None and (draws.blur > 0).any():
            x = gaussian_blur(x, draws.blur, self.recipe.blur.kernel)
        x = (x * 255.0) * self.scale.view(1, 3, 1, 1) + self.shift.view(1, 3, 1, 1)
        return self._resize(x.contiguous(memory_format=torch.channels_last))

    def mix(self, x: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, float] | None:
        """The batch mixed with itself rolled by one and λ, the weight of each image's own label; None when the
        recipe does not mix. Mixing after normalisation equals mixing before it (both are affine per channel)."""
        if self.recipe is None or draws.mix_lam is None or draws.mix_x is None or draws.mix_y is None:
            return None
        return mix_batch(x, self.recipe.mix, float(draws.mix_lam[0]), float(draws.mix_x[0]), float(draws.mix_y[0]))

    def eval_batch(self, idx):
        if self.resident:
            return self._finish_nhwc(self.images[torch.as_tensor(idx, device=self.device)])
        return self._finish_nhwc(torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(idx)])))
