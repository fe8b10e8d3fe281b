"""Backbone registry over timm: pooled feature extractors with the classifier removed.

Like timm's own registry: a decorator, a dict and `create_backbone`. Any timm model name works
even when not registered here; registered names add defaults (input size, batch size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Nothing may download at run time: make the Hugging Face hub client refuse before it tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402

from benchmark.errors import BenchError, closest  # noqa: E402


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    input_size: tuple[int, int] | None = None  # (H, W) the network expects; None: native resolution
    batch_size: int | None = None  # default batch size (Polat et al.'s per-backbone sizes)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name, timm_name=None, input_size=None, batch_size=None):
    BACKBONES[name] = BackboneSpec(name, timm_name or name, input_size, batch_size)
    return BACKBONES[name]


register_backbone("resnet18", batch_size=64)
register_backbone("resnet50", batch_size=32)
register_backbone("densenet121", batch_size=16)
register_backbone("inception_v3", input_size=(299, 299), batch_size=32)
register_backbone("mobilenetv3_large_100", batch_size=16)
# A few hundred thousand parameters: smoke suites and tests on a 2-core CPU.
register_backbone("tiny", timm_name="test_resnet", batch_size=32)


def resolve(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    if name in timm.list_models():
        return BackboneSpec(name, name)
    raise BenchError(f"Unknown backbone {name!r}: {closest(name, list(BACKBONES) + timm.list_models())}. "
                     "Any timm model name is accepted.")


def cached_weights(timm_name: str) -> Path | None:
    """An already-downloaded ImageNet checkpoint for this model in the HF or torch hub cache."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub_id"].split("/", 2)
        repo_id = "/".join(repo[:2])
        for fname in ("model.safetensors", "pytorch_model.bin", cfg.get("hf_hub_filename") or ""):
            if fname:
                hit = try_to_load_from_cache(repo_id, fname)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
        if path.is_file():
            return path
    return None


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None):
    """(module, feature size, input size). The module maps images to a pooled (B, d) feature vector."""
    spec = resolve(name)
    if not pretrained:
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        return model, model.num_features, spec.input_size
    path = Path(weights).expanduser() if weights else cached_weights(spec.timm_name)
    if path is None or not path.is_file():
        where = f"the file {weights!r} does not exist" if weights else "no local weights file or filled cache was found"
        raise BenchError(
            f"Backbone {name!r} asks for pretrained ImageNet weights, but {where}, and nothing is downloaded at run "
            f"time. Either set `weights: /path/to/{spec.timm_name}.safetensors` (or .pth) under this backbone in the "
            f"suite, or fill the cache on a machine with internet: `python -c \"import timm; "
            f"timm.create_model('{spec.timm_name}', pretrained=True)\"` and copy ~/.cache/huggingface (HF_HOME) "
            "here. Or set `pretrained: false`.")
    try:
        model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)})
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear message
        raise BenchError(f"Backbone {name!r}: weights file {str(path)!r} could not be loaded into timm model "
                         f"{spec.timm_name!r} ({type(exc).__name__}: {exc}). Check that it is that model's "
                         "ImageNet checkpoint.") from None
    return model, model.num_features, spec.input_size


def list_backbones() -> list[BackboneSpec]:
    return list(BACKBONES.values())
