"""`bench perf`: the harness's data path and training epoch against the usual PyTorch recipe.

Measured in one process on the same images: (1) decoded-once uint8 data → batched flip + rotation →
normalisation on the training device, no model; (2) the usual recipe — PIL decode per image per
epoch, torchvision per-image transforms, a DataLoader with one worker per core — over the same
images written as BMP files; (3) the bare model step on pre-staged tensors; (4) the harness's real
training epoch (`training.train_epoch`). Ratios (1)/(2) and (4)/(3).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..train.augment import BatchMaker, draw_params
from ..train.device import pick_device


@dataclass
class PerfResult:
    name: str
    images_per_s: float
    seconds: float
    images: int


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, n_images, device, repeat=2):
    """Best of `repeat` timed passes after one warm-up pass."""
    fn()
    _sync(device)
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, n_images / best


def synthetic_images(n, h, w, seed=0):
    from ..data.synthetic import generate

    images, labels, _, _ = generate(n, max(2, n // 8), (h, w), seed=seed)
    return images, labels


def data_path(images, batch, plan, mean, std):
    maker = BatchMaker(images, mean, std, plan.device)
    n = len(images)
    g = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(n, generator=g).numpy()
        draws = draw_params(n, g)
        for s in range(0, n, batch):
            x = maker.train_batch(order[s : s + batch], draws[s : s + batch])
        return x

    return epoch, maker.path


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


def usual_recipe(images, labels, batch, mean, std, folder: Path):
    from PIL import Image
    from torchvision import transforms

    files = []
    for i, img in enumerate(images):
        path = folder / f"img_{i:05d}.bmp"
        Image.fromarray(img).save(path)
        files.append(path)
    tf = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(180),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ]
    )
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(
        _FolderDataset(files, labels, tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

    def epoch():
        batch = None
        for batch in loader:  # noqa: B007 - iterating is the work being timed
            pass
        return batch

    return epoch, workers


def model_parts(backbone, plan, input_hw):
    from backbones import create_backbone
    from formulations import create_formulation, reference_formulation

    from ..train.cell import Net

    torch.manual_seed(0)
    bb, d, _ = create_backbone(backbone)
    formulation = create_formulation(reference_formulation())
    model = Net(bb, formulation.head(d)).to(plan.device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    return model, formulation, opt


def bare_step(model, formulation, opt, plan, batch, hw, n_images):
    x = torch.randn(batch, 3, *hw, device=plan.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, formulation.num_classes, (batch,), device=plan.device)
    steps = max(1, n_images // batch)

    def epoch():
        model.train()
        for _ in range(steps):
            with plan.autocast():
                out = model(x)
            loss = formulation.loss(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss

    return epoch, steps * batch


def harness_epoch(model, formulation, opt, plan, images, labels, batch, mean, std):
    from ..train.loop import train_epoch

    maker = BatchMaker(images, mean, std, plan.device)
    idx = np.arange(len(images))
    g = torch.Generator().manual_seed(1)
    steps = len(images) // batch

    def epoch():
        model.train()
        order = torch.randperm(len(idx), generator=g).numpy()[: steps * batch]
        draws = draw_params(len(order), g)
        total, _ = train_epoch(model, formulation, maker, labels, idx, order, draws, batch, opt, None, None, plan)
        return float(total.cpu())

    return epoch, steps * batch


def peak_memory(plan) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    text = f"process peak RSS {rss:,.0f} MiB"
    if plan.device.type == "cuda":
        text += f"; GPU peak allocated {torch.cuda.max_memory_allocated(plan.device) / 2**20:,.0f} MiB"
    return text


def run_perf(
    backbone="resnet18",
    size=(288, 352),
    batch=64,
    n_images=256,
    device=None,
    compile_model=False,
    skip_model=False,
    say=lambda text: None,
):
    plan = pick_device(device)
    h, w = size
    images, labels = synthetic_images(n_images, h, w)
    mean = images.reshape(-1, 3).mean(0) / 255.0
    std = images.reshape(-1, 3).std(0) / 255.0
    results = {}
    fn, path = data_path(images, batch, plan, mean.astype(np.float32), std.astype(np.float32))
    secs, rate = _timed(fn, n_images, plan.device, repeat=3)
    say(f"(1) data path: {rate:,.1f} images/s")
    results["data"] = PerfResult(
        "(1) harness data path: uint8 cache → flip + rotation → normalise, no model", rate, secs, n_images
    )
    with tempfile.TemporaryDirectory() as tmp:
        fn, workers = usual_recipe(images, labels, batch, mean, std, Path(tmp))
        secs, rate = _timed(fn, n_images, plan.device, repeat=2)
    say(f"(2) usual recipe: {rate:,.1f} images/s")
    results["usual"] = PerfResult(
        f"(2) usual recipe: PIL decode + torchvision per image, DataLoader({workers} workers)", rate, secs, n_images
    )
    if not skip_model:
        model, formulation, opt = model_parts(backbone, plan, (h, w))
        if compile_model:
            model = torch.compile(model)
        fn, n = bare_step(model, formulation, opt, plan, batch, (h, w), n_images)
        secs, rate = _timed(fn, n, plan.device, repeat=2)
        say(f"(3) bare model step: {rate:,.1f} images/s")
        results["bare"] = PerfResult(
            f"(3) bare model step ({backbone}, fwd + bwd + Adam, pre-staged tensors)", rate, secs, n
        )
        fn, n = harness_epoch(
            model, formulation, opt, plan, images, labels, batch, mean.astype(np.float32), std.astype(np.float32)
        )
        secs, rate = _timed(fn, n, plan.device, repeat=2)
        say(f"(4) harness epoch: {rate:,.1f} images/s")
        results["harness"] = PerfResult(f"(4) harness training epoch ({backbone}, training.train_epoch)", rate, secs, n)
    return plan, path, results, peak_memory(plan)


@dataclass
class CellPerf:
    """One cell as the runner runs it, split into where its time goes (seconds)."""

    backbone: str
    device: str
    n_train: int
    n_val: int
    n_test: int
    batch: int
    epochs: int
    parts: dict  # per epoch (mean): train, validate, decode, checkpoint, callbacks
    epoch: float  # mean epoch, all parts
    bare: float  # the bare model step over the same number of training images
    before_first_batch: dict  # seconds: claim + spec, model build, loop set-up
    after_last_epoch: dict  # seconds: final evaluation (flush included), metrics, store write
    sync_save: float  # one synchronous save of the same model + Adam state, as every epoch cost before
    sync_save_bytes: int

    @property
    def stall_share(self) -> float:
        return self.parts["checkpoint"] / self.epoch

    @property
    def fixed_per_epoch(self) -> float:
        """Everything of an epoch but the data path and the model: decoding and metrics, the checkpoint stall,
        the store write and progress."""
        return self.parts["decode"] + self.parts["checkpoint"] + self.parts["callbacks"]


def cell_perf(
    backbone="resnet18",
    size=(288, 352),
    batch=32,
    n_images=256,
    epochs=3,
    device=None,
    checkpoint_every=0.0,
    progress=None,
    workdir: Path | None = None,
) -> CellPerf:
    """Train one real cell through `Runner` (claim, fold data, model build, epochs with validation, decoding,
    metrics, background checkpoints, store writes, progress, final evaluation) on synthetic images, and time each
    part; then the bare model step on the same number of training images, and one synchronous save of the same
    state for comparison. `checkpoint_every=0`: a checkpoint every epoch, the most the writer is asked to do."""
    import yaml

    from formulations import reference_formulation

    from ..run.runner import Runner
    from ..run.store import Store
    from ..suite.loading import load_suite
    from ..train.loop import atomic_save

    h, w = size
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        doc = {
            "name": "perf-cell",
            "dataset": {
                "name": "synthetic",
                "params": {"n_images": n_images, "n_patients": max(40, n_images // 6), "size": [h, w], "seed": 0},
            },
            "protocol": {"kind": "study", "folds": 5, "test_fraction": 0.2, "seed": 0},
            "training": {
                "epochs": epochs,
                "lr": 2e-4,
                "batch_size": batch,
                "early_stopping": epochs + 1,
                "checkpoint_every": checkpoint_every,
            },
            "backbones": [backbone],
            "formulations": [reference_formulation()],
        }
        path = Path(tmp) / "perf-cell.yaml"
        path.write_text(yaml.safe_dump(doc))
        suite = load_suite(path)
        runner = Runner(suite, Path(tmp) / "run", device=device)
        runner.progress = progress
        cells = runner.prepare(["fold=0"])
        if progress is not None:
            progress.set_total(len(cells))
        t0 = time.perf_counter()
        report = runner.run(["fold=0"])
        wall = time.perf_counter() - t0
        if report.failed or not report.trained:
            from ..errors import BenchError

            error = Store(Path(tmp) / "run", create=False).cell_rows()[0].get("error", "")
            raise BenchError(f"bench perf --cell: the cell did not train ({str(error).splitlines()[0][:300]}).")
        store = Store(Path(tmp) / "run", create=False)
        key = cells[0].key
        overhead = runner.overhead[key]
        res = store.result(key)
        store.close()
        assert res is not None  # the cell was trained and stored just above
        t = res.timings
        n = max(t["epochs_timed"], 1)
        parts = {k: v / n for k, v in t["epoch_parts"].items()}
        epoch = sum(parts.values())
        # the same model + Adam state (two moments per weight) written synchronously, as each epoch did before
        state = torch.load(Path(tmp) / "run" / "cells" / key / "best.pt", weights_only=True)
        resume = {"model": state, "optimizer": {k: (v.clone(), v.clone()) for k, v in state.items()}}
        target = Path(tmp) / "sync.pt"
        t1 = time.perf_counter()
        atomic_save(resume, target)
        sync = time.perf_counter() - t1
        sync_bytes = target.stat().st_size
    plan = pick_device(device)
    model, formulation, opt = model_parts(backbone, plan, (h, w))
    fn, n_bare = bare_step(model, formulation, opt, plan, batch, (h, w), res.n_train)
    bare_secs, _ = _timed(fn, n_bare, plan.device, repeat=1)
    # what the runner spends around run_cell besides claim, fold data and the store write: progress, heartbeat
    rest = wall - t["cell_seconds"] - sum(overhead.values())
    return CellPerf(
        backbone=backbone,
        device=plan.description,
        n_train=res.n_train,
        n_val=res.n_val,
        n_test=res.n_test,
        batch=batch,
        epochs=t["epochs_timed"],
        parts=parts,
        epoch=epoch,
        bare=bare_secs * res.n_train / max(n_bare, 1),
        before_first_batch={
            "claim": overhead["claim"],
            "fold data": overhead["fold data"],
            "model build": t["build_seconds"],
            "loop set-up": t["setup_seconds"],
        },
        after_last_epoch={
            "final evaluation": t["final_seconds"],
            "metrics": t["metrics_seconds"],
            "store write": overhead["store write"],
            "progress, heartbeat": rest,
        },
        sync_save=sync,
        sync_save_bytes=sync_bytes,
    )
