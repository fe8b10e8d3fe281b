"""The CPU (OpenCV) and GPU (grid_sample) augmentation paths rotate and flip the same way."""

import math

import numpy as np
import torch

from benchmark.train.augment import BatchMaker, Draws, channel_stats, rotate_flip_bilinear, rotate_flip_cv2


def test_flip_and_half_turn_move_a_corner_pixel_where_expected():
    x = np.zeros((1, 5, 7, 3), np.uint8)
    x[0, 0, 6] = 255  # top-right
    assert np.argwhere(rotate_flip_cv2(x, [0.0], [True])[0, ..., 0]).tolist() == [[0, 0]]
    assert np.argwhere(rotate_flip_cv2(x, [math.pi], [False])[0, ..., 0]).tolist() == [[4, 0]]
    assert np.array_equal(rotate_flip_cv2(x, [0.0], [False]), x)


def test_cpu_and_gpu_paths_agree_on_a_smooth_image():
    yy, xx = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 60), indexing="ij")
    img = np.stack([xx, yy, xx * yy], -1)
    batch = np.repeat((img * 255).round().astype(np.uint8)[None], 3, 0)
    angles, flips = np.array([0.4, -1.3, 2.9]), np.array([True, False, True])
    cpu = rotate_flip_cv2(batch, angles, flips).astype(float) / 255
    gpu = rotate_flip_bilinear(
        torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255,
        torch.tensor(angles, dtype=torch.float32),
        torch.tensor(flips),
    ).permute(0, 2, 3, 1)
    inner = (slice(None), slice(12, 28), slice(20, 40))
    assert np.abs(cpu[inner] - gpu.numpy()[inner]).max() < 0.05


def test_batches_are_normalised_channels_last_with_fold_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 10, 3), dtype=np.uint8)
    mean, std = channel_stats(images, np.arange(10))
    ref = images[:10].reshape(-1, 3) / 255.0
    assert np.allclose(mean, ref.mean(0), atol=1e-6) and np.allclose(std, ref.std(0), atol=1e-5)
    maker = BatchMaker(images, mean, std, torch.device("cpu"))
    x = maker.eval_batch(np.arange(10))
    assert x.shape == (10, 3, 8, 10) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    draws = Draws(torch.tensor([0.3, 1.0, -2.0, 3.0]), torch.tensor([True, False, True, False]))
    t = maker.train_batch(np.arange(4), draws)
    assert t.shape == (4, 3, 8, 10) and torch.isfinite(t).all()


# ---------------------------------------------------------- the suite's `augment:` recipes, against torchvision v2
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from benchmark.errors import BenchError  # noqa: E402
from benchmark.suite.cells import expand_cells  # noqa: E402
from benchmark.suite.loading import load_suite, validate_suite  # noqa: E402
from benchmark.suite.schema import AugmentConfig  # noqa: E402
from benchmark.train.augment import (  # noqa: E402
    _crop_boxes,
    affine_matrices,
    color_jitter,
    draw_params,
    gaussian_blur,
    mix_batch,
    warp_bilinear,
)


def smooth(n=3, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 3, 3)
        out.append(np.stack([np.sin(a * xx) ** 2, np.cos(b * yy) ** 2, (xx * yy) ** c], -1))
    return (np.stack(out) * 255).round().astype(np.uint8)


def test_the_default_recipe_draws_and_augments_exactly_as_the_study_always_did():
    """A suite without `augment:` keeps its cells' results: the same random numbers, the same pixels, the same key."""
    images = smooth(6)
    draws = [draw_params(6, torch.Generator().manual_seed(5), r, (40, 56)) for r in (None, AugmentConfig())]
    assert torch.equal(draws[0].angles, draws[1].angles) and torch.equal(draws[0].flips, draws[1].flips)
    assert draws[1].crops is None and draws[1].mix_lam is None
    mean, std = channel_stats(images, np.arange(6))
    cpu = torch.device("cpu")
    a = BatchMaker(images, mean, std, cpu).train_batch(np.arange(6), draws[0])
    b = BatchMaker(images, mean, std, cpu, recipe=AugmentConfig()).train_batch(np.arange(6), draws[1])
    assert torch.equal(a, b)
    plain = validate_suite({"name": "k", "backbones": ["resnet18"], "formulations": ["softmax"]})
    written = validate_suite({"name": "k", "backbones": ["resnet18"], "formulations": ["softmax"], "augment": {}})
    rotated = validate_suite(
        {"name": "k", "backbones": ["resnet18"], "formulations": ["softmax"], "augment": {"rotation": 90}}
    )
    keys = [expand_cells(s, 1)[0].key for s in (plain, written, rotated)]
    assert keys[0] == keys[1] != keys[2]


def test_no_flip_and_no_rotation_train_on_the_images_as_evaluated():
    """The options change what they say: with both off the training batch is the evaluation batch."""
    images = smooth(4)
    mean, std = channel_stats(images, np.arange(4))
    recipe = AugmentConfig(hflip=0, rotation=0)
    maker = BatchMaker(images, mean, std, torch.device("cpu"), recipe=recipe)
    d = maker.draw(4, torch.Generator().manual_seed(0))
    assert not d.flips.any() and (d.angles == 0).all()
    assert torch.equal(maker.train_batch(np.arange(4), d), maker.eval_batch(np.arange(4)))
    always = BatchMaker(images, mean, std, torch.device("cpu"), recipe=AugmentConfig(hflip=1, rotation=0, vflip=1))
    d = always.draw(4, torch.Generator().manual_seed(0))
    assert torch.equal(always.train_batch(np.arange(4), d), torch.flip(maker.eval_batch(np.arange(4)), dims=[2, 3]))


def test_random_resized_crop_boxes_follow_torchvisions_distribution_and_fallback():
    h, w, n = 60, 80, 4000
    ours = _crop_boxes(np.random.default_rng(0), n, (0.08, 1.0), (3 / 4, 4 / 3), (h, w))
    t = v2.RandomResizedCrop((h, w))
    torch.manual_seed(0)
    theirs = []
    for _ in range(n):
        p = t.make_params([torch.zeros(3, h, w)])
        theirs.append([p["top"], p["left"], p["height"], p["width"]])
    theirs = np.array(theirs)
    for stat in (
        lambda b: b[:, 2] * b[:, 3] / (h * w),
        lambda b: b[:, 3] / b[:, 2],
        lambda b: b[:, 0] + b[:, 2] / 2,
        lambda b: b[:, 1] + b[:, 3] / 2,
    ):
        assert stats.ks_2samp(stat(ours), stat(theirs)).pvalue > 0.001
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    # no try fits (a 3:1 box of the whole area): torchvision's central crop of the clamped ratio, exactly
    fallback = _crop_boxes(np.random.default_rng(1), 3, (1.0, 1.0), (3.0, 4.0), (40, 40))
    p = v2.RandomResizedCrop((40, 40), scale=(1.0, 1.0), ratio=(3.0, 4.0)).make_params([torch.zeros(3, 40, 40)])
    assert fallback.tolist() == [[p["top"], p["left"], p["height"], p["width"]]] * 3


def test_resized_crop_pixels_match_torchvision_on_both_paths():
    images = smooth(3)
    h, w = images.shape[1:3]
    crops = np.array([[5, 7, 20, 30], [0, 0, 40, 56], [12, 20, 25, 17]])
    zero, no = np.zeros(3), np.zeros(3, bool)
    cpu = rotate_flip_cv2(images, zero, no, crops=crops)
    m = affine_matrices(zero, no, h, w, None, crops)
    gpu = warp_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2).float(), m)
    for i, (top, left, ch, cw) in enumerate(crops):
        img = torch.from_numpy(images[i]).permute(2, 0, 1)
        near = TF.resized_crop(img, int(top), int(left), int(ch), int(cw), [h, w], v2.InterpolationMode.NEAREST_EXACT)
        assert (cpu[i] == near.permute(1, 2, 0).numpy()).all(-1).mean() > 0.99
        bil = TF.resized_crop(
            img.float(), int(top), int(left), int(ch), int(cw), [h, w], v2.InterpolationMode.BILINEAR, antialias=False
        )
        inner = (slice(None), slice(2, h - 2), slice(2, w - 2))  # the border: zeros outside vs torchvision's clamp
        assert (gpu[i][inner] - bil[inner]).abs().max() < 0.5  # grey levels of 255


def test_vertical_flip_is_torchvisions():
    images = smooth(2)
    out = rotate_flip_cv2(images, np.zeros(2), np.zeros(2, bool), vflips=np.array([True, False]))
    flipped = TF.vertical_flip(torch.from_numpy(images[0]).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(out[0], flipped)
    assert np.array_equal(out[1], images[1])


def test_color_jitter_is_torchvisions_adjustments_in_order():
    x = torch.from_numpy(smooth(4)).permute(0, 3, 1, 2).float() / 255
    factors = np.array([[1.3, 0.7, 1.5, 0.1], [0.6, 1.4, 0.2, -0.3], [1.0, 1.0, 1.0, 0.0], [0.9, 0.0, 1.9, 0.5]])
    ours = color_jitter(x, factors)
    for i, (b, c, s, hue) in enumerate(factors):
        ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), c), s), hue)
        assert torch.allclose(ours[i], ref, atol=1e-5), i


def test_gaussian_blur_is_torchvisions_per_image_sigma():
    x = torch.from_numpy(smooth(3)).permute(0, 3, 1, 2).float() / 255
    x += torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 0.2  # edges to blur
    sigma = np.array([0.7, 0.0, 1.8])
    ours = gaussian_blur(x, sigma, 7)
    assert torch.allclose(ours[0], TF.gaussian_blur(x[0], [7, 7], [0.7, 0.7]), atol=1e-5)
    assert torch.allclose(ours[2], TF.gaussian_blur(x[2], [7, 7], [1.8, 1.8]), atol=1e-5)
    assert torch.equal(ours[1], x[1])


@pytest.mark.parametrize("how", ["mixup", "cutmix"])
def test_mixing_is_torchvisions_and_its_loss_is_the_soft_target_cross_entropy(how):
    """The same λ (and CutMix box) as torchvision's transform draws from the same seed give the same batch and the
    same label weight; λ·CE(y) + (1 − λ)·CE(y rolled) is the cross-entropy with torchvision's mixed soft labels."""
    from formulations import create_formulation

    x = torch.from_numpy(smooth(5)).permute(0, 3, 1, 2).float()
    y = torch.tensor([0, 3, 1, 2, 2])
    t = (v2.MixUp if how == "mixup" else v2.CutMix)(alpha=0.8, num_classes=4)
    torch.manual_seed(11)
    params = t.make_params([x])
    torch.manual_seed(11)
    lam = float(t._dist.sample(()))
    h, w = x.shape[-2:]
    rx, ry = (int(torch.randint(w, (1,))), int(torch.randint(h, (1,)))) if how == "cutmix" else (0, 0)
    ours, weight = mix_batch(x, how, lam, (rx + 0.5) / w, (ry + 0.5) / h)
    theirs = t.transform(x, {**params, "labels": y, "batch_size": len(x)})
    assert torch.equal(ours, theirs)
    torch.manual_seed(11)
    _, soft = t(x, y)
    expected = params["lam"] if how == "mixup" else params["lam_adjusted"]
    assert weight == pytest.approx(expected)
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    softmax = create_formulation("softmax")
    mixed_loss = weight * softmax.loss(logits, y) + (1 - weight) * softmax.loss(logits, y.roll(1, 0))
    assert torch.allclose(mixed_loss, torch.nn.functional.cross_entropy(logits, soft), atol=1e-6)


def test_recipe_draws_replay_from_the_seed_and_every_part_is_drawn():
    recipe = AugmentConfig(
        vflip=0.5, resized_crop={}, color_jitter=(0.2, 0.2, 0.2, 0.05), blur={"p": 1.0}, mix="cutmix"
    )
    a, b = (draw_params(64, torch.Generator().manual_seed(9), recipe, (40, 56)) for _ in range(2))
    for name in ("vflips", "crops", "jitter", "blur", "mix_lam", "mix_x", "mix_y"):
        assert getattr(a, name) is not None and np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.blur > 0).all() and 0.3 < a.vflips.mean() < 0.7 and a.jitter[:, 3].min() >= -0.05
    images = smooth(8)
    mean, std = channel_stats(images, np.arange(8))
    maker = BatchMaker(images, mean, std, torch.device("cpu"), recipe=recipe)
    resident = BatchMaker(images, mean, std, torch.device("cpu"), resident=True, recipe=recipe)
    d = maker.draw(8, torch.Generator().manual_seed(1))
    x, r = maker.train_batch(np.arange(8), d), resident.train_batch(np.arange(8), d)
    assert x.shape == (8, 3, 40, 56) and x.is_contiguous(memory_format=torch.channels_last)
    assert (x - r).abs().mean() < 0.1  # nearest vs bilinear warp of the same draws, in normalised units
    assert maker.mix(x, d) is not None


def test_mixing_is_refused_for_a_batch_level_loss_naming_the_variant(make_suite):
    path = make_suite(
        name="mixwk",
        formulations=["softmax", "wk"],
        variants={"augment": {"study": {}, "cutmix": {"augment.mix": "cutmix"}}},
    )
    with pytest.raises(BenchError) as exc:
        load_suite(path)
    text = " ".join(str(exc.value).split())
    assert "augment=cutmix" in text and "'wk'" in text and "mixed batches" in text


def test_a_bad_augment_value_names_the_field(make_suite):
    with pytest.raises(BenchError) as exc:
        load_suite(make_suite(name="badaug", augment={"blur": {"kernel": 4}}))
    assert "augment.blur" in str(exc.value) and "odd" in str(exc.value)
    with pytest.raises(BenchError) as exc:
        load_suite(make_suite(name="badvar", variants={"aug": {"x": {"augment.rotation": 400}}}))
    assert "augment.rotation" in str(exc.value) and "aug" in str(exc.value)


def test_an_augment_axis_trains_each_recipe_and_changes_only_its_cells(make_suite, tmp_path):
    from benchmark.cli import main
    from benchmark.run.store import Store

    axis = {
        "study": {},
        "heavy": {
            "augment.vflip": 0.5,
            "augment.resized_crop": {"scale": [0.5, 1.0]},
            "augment.color_jitter": [0.2, 0.2, 0.2, 0.02],
            "augment.blur": {"kernel": 3},
            "augment.mix": "mixup",
        },
    }
    path = make_suite(name="augaxis", formulations=["softmax", "coral"], variants={"augment": axis})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    rows = Store(out, create=False).cell_rows()
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    plain = make_suite(name="augaxis", formulations=["softmax", "coral"])
    study_keys = {c.key for c in expand_cells(load_suite(plain), 2) if c.fold == 0}
    assert study_keys < {r["key"] for r in rows}  # the study variant shares the plain suite's cells
    heavy = [Store(out, create=False).result(r["key"]) for r in rows if r["key"] not in study_keys]
    assert len(heavy) == 2 and all(h.history[0]["train_loss"] > 0 for h in heavy)


def test_resizemix_pastes_the_whole_paired_image_shrunk_and_weighs_labels_by_its_area():
    """ResizeMix by its definition (Qin et al. 2020; torchvision has none): the previous image of the batch, resized
    whole to the scale's fraction of each side, replaces exactly that patch; λ = 1 − patch area / image area."""
    x = torch.from_numpy(smooth(4)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    out, lam = mix_batch(x, "resizemix", 0.5, 0.999, 0.0)  # the patch at the right edge, top
    ph, pw = round(0.5 * h), round(0.5 * w)
    x0 = w - pw
    patch = torch.nn.functional.interpolate(x.roll(1, 0), size=(ph, pw), mode="bilinear", antialias=True)
    assert torch.equal(out[..., :ph, x0:], patch)
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[:ph, x0:] = False
    assert torch.equal(out[..., outside], x[..., outside])
    assert lam == pytest.approx(1 - ph * pw / (h * w))
    recipe = AugmentConfig(mix="resizemix", mix_scale=(0.2, 0.4))
    d = draw_params(500, torch.Generator().manual_seed(3), recipe, (h, w))
    assert d.mix_lam.min() >= 0.2 and d.mix_lam.max() <= 0.4
    with pytest.raises(ValueError, match="mix_scale: used only with mix: resizemix"):
        AugmentConfig(mix="cutmix", mix_scale=(0.2, 0.4))
