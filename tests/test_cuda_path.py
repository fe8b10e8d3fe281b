"""The CUDA path without a GPU: the resident grid_sample augmentation runs on CPU tensors, bf16 autocast and
torch.compile run whole cells on the CPU through the same code the GPU uses, deterministic mode is set and
recorded, and every cell records where and how fast it ran."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from benchmark.cli import main
from benchmark.run.store import Store
from benchmark.train.augment import (
    BatchMaker,
    Draws,
    channel_stats,
    draw_params,
    rotate_flip_bilinear,
    rotate_flip_cv2,
)
from benchmark.train.device import pick_device
from reports.load import load_run
from reports.render import build, to_markdown
from reports.table import Options


def _images(n=6, h=32, w=48, seed=0):
    """Smooth images (bilinear and nearest sampling agree on them inside the frame)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a, b, c = rng.random(3)
        img = np.stack([a * xx + (1 - a) * yy, b * yy, c * xx * yy + 0.2], -1)
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


def _maker(images, resident):
    mean, std = channel_stats(images, np.arange(len(images)))
    return BatchMaker(images, mean, std, torch.device("cpu"), resident=resident)


def test_the_resident_path_runs_on_cpu_tensors_and_is_the_identity_at_angle_zero():
    images = _images()
    maker = _maker(images, resident=True)
    assert isinstance(maker.images, torch.Tensor) and maker.path.startswith("resident-bilinear-grid_sample")
    idx = np.arange(len(images))
    out = maker.train_batch(idx, Draws(torch.zeros(len(idx)), torch.zeros(len(idx), dtype=torch.bool)))
    ref = maker.eval_batch(idx)  # no augmentation at all
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_half_turn_twice_and_flip_twice_are_the_identity():
    x = torch.from_numpy(_images()).permute(0, 3, 1, 2).float()
    n = len(x)
    pi, zero = torch.full((n,), math.pi), torch.zeros(n)
    no, yes = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    twice = rotate_flip_bilinear(rotate_flip_bilinear(x, pi, no), pi, no)
    assert torch.allclose(twice, x, atol=1e-3)
    assert not torch.allclose(rotate_flip_bilinear(x, pi, no), x, atol=1.0)  # one half turn does move pixels
    flipped = rotate_flip_bilinear(rotate_flip_bilinear(x, zero, yes), zero, yes)
    assert torch.allclose(flipped, x, atol=1e-3)
    assert torch.allclose(rotate_flip_bilinear(x, zero, yes), torch.flip(x, dims=[3]), atol=1e-3)


def test_angles_are_uniform_on_the_full_circle_and_half_the_images_flip():
    g = torch.Generator().manual_seed(0)
    d = draw_params(20000, g)
    angles, flips = d.angles, d.flips
    assert stats.kstest(angles.numpy(), stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 0.01
    assert angles.min() >= -math.pi and angles.max() <= math.pi
    assert abs(flips.float().mean().item() - 0.5) < 0.015


def test_resident_and_cpu_paths_agree_inside_the_inscribed_circle():
    """Nearest (OpenCV, CPU) vs bilinear (grid_sample, resident): per-image means over the inscribed circle
    agree within 1 grey level of 255 on smooth images, for random angles and flips."""
    images = _images(n=8, h=40, w=40)
    g = torch.Generator().manual_seed(3)
    d = draw_params(len(images), g)
    angles, flips = d.angles, d.flips
    cpu = rotate_flip_cv2(images, angles.numpy(), flips.numpy()).astype(float)
    res = rotate_flip_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2).float(), angles, flips)
    res = res.permute(0, 2, 3, 1).numpy()
    h, w = images.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (min(h, w) / 2 - 2) ** 2
    diff = np.abs(cpu[:, inside].mean(1) - res[:, inside].mean(1))
    assert diff.max() < 1.0, diff


def _run(make_suite, tmp_path, name, *extra, backbone="tiny", **training):
    suite = make_suite(
        name=name,
        formulations=["softmax"],
        backbones=[backbone],
        training={"epochs": 1, "lr": 0.003, "batch_size": 32, **training},
    )
    out = tmp_path / name
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0", *extra]) == 0
    store = Store(out, create=False)
    key = store.cell_rows()[0]["key"]
    return out, store.result(key), store.predictions_frame("val")


def test_bf16_autocast_trains_a_whole_cell_on_the_cpu(make_suite, tmp_path):
    plan = pick_device("cpu", "bf16")
    with plan.autocast():
        y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    assert y.dtype == torch.bfloat16  # the autocast the training loop enters
    _, fp32, p32 = _run(make_suite, tmp_path, "fp32")
    out, bf16, p16 = _run(make_suite, tmp_path, "bf16", amp="bf16")
    assert fp32.amp == "off" and bf16.amp == "bfloat16"
    assert np.isfinite([h["train_loss"] for h in bf16.history]).all()
    # the reduced precision reached the model: outputs differ, though only a little
    a = np.stack([np.frombuffer(b) for b in p32.sort_values("image_id").outputs])
    b = np.stack([np.frombuffer(b) for b in p16.sort_values("image_id").outputs])
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.2
    assert "AMP bfloat16" in to_markdown(build(load_run(out), Options()))


def test_fp16_autocast_is_refused_on_the_cpu(capsys, make_suite, tmp_path):
    suite = make_suite(name="fp16", formulations=["softmax"], training={"amp": "fp16"})
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "fp16"), "--quiet"]) == 2
    assert "fp16 autocast needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_trains_a_whole_cell_with_inductor_on_the_cpu(make_suite, tmp_path):
    # The `null` backbone (channel means): the whole cell compiles, forward and backward, in a few kernels — the
    # tiny CNN's took inductor 3 minutes of C++ compiling on a machine whose compile cache was cold
    _, eager, _ = _run(make_suite, tmp_path, "eager", backbone="null")
    _, compiled, _ = _run(make_suite, tmp_path, "compiled", "--compile", backbone="null")
    assert compiled.compiled and not eager.compiled
    # the same computation: the first epoch's losses agree to float tolerance
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-3)
    assert compiled.history[0]["val_loss"] == pytest.approx(eager.history[0]["val_loss"], rel=1e-3)


def test_deterministic_mode_is_set_recorded_and_reported(make_suite, tmp_path):
    try:
        out, res, _ = _run(make_suite, tmp_path, "det", "--deterministic")
        assert torch.are_deterministic_algorithms_enabled()
        assert res.deterministic
        header = to_markdown(build(load_run(out), Options())).split("## ")[0]
        assert "deterministic algorithms in 1 of 1 cells" in header and "no CUDA run" in header
    finally:
        torch.use_deterministic_algorithms(False)


def test_every_cell_records_throughput_device_and_the_report_shows_it(make_suite, tmp_path):
    out, res, _ = _run(make_suite, tmp_path, "tp")
    assert res.timings["train_images_per_s"] > 0 and res.timings["eval_images_per_s"] > 0
    assert res.device_name and res.timings["peak_memory_bytes"] is None  # CPU: no device memory counter
    md = to_markdown(build(load_run(out), Options()))
    table7 = md.split("## Table 7")[1]
    row = next(line for line in table7.splitlines() if line.startswith("| tiny | softmax"))
    header = next(line for line in table7.splitlines() if line.startswith("| backbone"))
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]))
    assert float(cells["train images/s"].replace(",", "")) == pytest.approx(res.timings["train_images_per_s"], rel=0.01)
    assert float(cells["parameters (M)"]) == pytest.approx(res.timings["params"] / 1e6, abs=0.005)
    assert float(cells["GFLOPs / image"]) == pytest.approx(res.timings["flops_per_image"] / 1e9, abs=0.0005)
