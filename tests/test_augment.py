"""The CPU (OpenCV) and GPU (grid_sample) augmentation paths rotate and flip the same way."""

import math

import numpy as np
import torch

from benchmark.train.augment import BatchMaker, channel_stats, rotate_flip_bilinear, rotate_flip_cv2


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
    t = maker.train_batch(np.arange(4), torch.tensor([0.3, 1.0, -2.0, 3.0]), torch.tensor([True, False, True, False]))
    assert t.shape == (4, 3, 8, 10) and torch.isfinite(t).all()
