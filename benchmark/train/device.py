"""Device choice and the CUDA extras (AMP, channels_last) applied automatically where present."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch


@dataclass
class DevicePlan:
    device: torch.device
    amp_dtype: torch.dtype | None
    deterministic: bool = False

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()

    @property
    def amp(self) -> str:
        return "off" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")

    @property
    def description(self) -> str:
        det = ", deterministic" if self.deterministic else ""
        if self.device.type == "cuda":
            return f"cuda ({self.name}), AMP {self.amp}, channels_last{det}"
        return f"cpu ({self.name}, {torch.get_num_threads()} threads), AMP {self.amp}, channels_last{det}"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def reset_peak_memory(self) -> None:
        """Start a cell's peak-memory window: CUDA's peak is per process, so without a reset a small cell run after
        a large one would report the large one's peak."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        """The peak device memory allocated since `reset_peak_memory` (None on the CPU)."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.device))


AMP_MODES = ("auto", "bf16", "fp16", "off")


def pick_device(requested: str | None = None, amp: str = "auto", deterministic: bool = False) -> DevicePlan:
    """The device and its numerics. `amp`: auto (bf16, else fp16, on CUDA; off on the CPU), bf16 (CUDA or CPU:
    the same autocast code path either way), fp16 (CUDA only), off. `deterministic`: deterministic algorithms
    only (and the cuBLAS workspace setting they need on CUDA)."""
    from ..errors import BenchError

    requested = requested or os.environ.get("MESBENCH_DEVICE")
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise BenchError(
                f"device {requested!r} (--device or MESBENCH_DEVICE) is not a device: use cpu, cuda or cuda:N."
            ) from None
        if device.type not in ("cpu", "cuda"):
            raise BenchError(f"device {requested!r} (--device or MESBENCH_DEVICE): mesbench runs on cpu or cuda[:N].")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError(
                f"device {requested!r} was requested but this torch ({torch.__version__}) sees no CUDA "
                "GPU; drop --device (or MESBENCH_DEVICE) to use the CPU."
            )
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
    if cuda:
        torch.backends.cudnn.benchmark = not deterministic  # autotuning picks kernels run by run
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if amp == "auto":
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    elif amp == "bf16":
        dtype = torch.bfloat16
    elif amp == "fp16":
        if not cuda:
            raise BenchError("training.amp: fp16 autocast needs a CUDA device; use bf16 on the CPU, or auto.")
        dtype = torch.float16
    elif amp == "off":
        dtype = None
    else:
        raise BenchError(f"training.amp {amp!r}: one of {', '.join(AMP_MODES)}.")
    return DevicePlan(device, dtype, deterministic)


def versions() -> dict:
    import timm

    out = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["mesbench"] = version("mesbench")
        out["coral-pytorch"] = version("coral-pytorch")
    except Exception:
        pass
    return out
