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

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"cuda ({name}), AMP {str(self.amp_dtype).replace('torch.', '')}, channels_last"
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def pick_device(requested: str | None = None) -> DevicePlan:
    requested = requested or os.environ.get("MESBENCH_DEVICE")
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            from ..errors import BenchError

            raise BenchError(
                f"device {requested!r} was requested but this torch ({torch.__version__}) sees no CUDA "
                "GPU; drop --device (or MESBENCH_DEVICE) to use the CPU."
            )
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DevicePlan(device, amp)
    return DevicePlan(device, None)


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
