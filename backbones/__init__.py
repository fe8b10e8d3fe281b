"""Backbone registry over timm: pooled feature extractors with the classifier removed.

Like timm's own registry: a dict filled by registration and `create_backbone`. Any timm model name works
even when not registered here; registered names add defaults (input size, batch size). Importing this
package imports neither timm nor torch and changes nothing in the environment: the registry of specs is
plain data, and timm is imported where a model is built or an unregistered name is looked up.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    input_size: tuple[int, int] | None = None  # (H, W) the network expects; None: native resolution
    batch_size: int | None = None  # default batch size (Polat et al.'s per-backbone sizes)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(name, timm_name=None, input_size=None, batch_size=None) -> BackboneSpec:
    return BACKBONES.register(name, BackboneSpec(name, timm_name or name, input_size, batch_size))


register_backbone("resnet18", batch_size=64)
register_backbone("resnet50", batch_size=32)
register_backbone("densenet121", batch_size=16)
register_backbone("inception_v3", input_size=(299, 299), batch_size=32)
register_backbone("mobilenetv3_large_100", batch_size=16)
# A few hundred thousand parameters: smoke suites and tests on a 2-core CPU.
register_backbone("tiny", timm_name="test_resnet", batch_size=32)


def unknown_backbone(name: str) -> BenchError:
    """The five closest names (registered or timm), not all ~1,300 of timm's."""
    import timm

    names = list(BACKBONES) + timm.list_models()
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    shown = ", ".join(repr(n) for n in near) if near else "none close"
    return BenchError(
        f"Unknown backbone {name!r}: closest {shown}. Registered: {', '.join(BACKBONES)}; any timm "
        "model name also works (`bench list --timm` lists them all)."
    )


def resolve(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES.lookup(name)
    import timm

    if name in timm.list_models():
        return BackboneSpec(name, name)
    raise unknown_backbone(name)


def cached_weights(timm_name: str) -> Path | None:
    """An already-downloaded ImageNet checkpoint for this model in the HF or torch hub cache."""
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    cfg = cfg.to_dict()
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


def offline() -> bool:
    """No downloads: `bench ... --offline` (MESBENCH_OFFLINE) or the user's own HF_HUB_OFFLINE."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("MESBENCH_OFFLINE", "HF_HUB_OFFLINE"))


def _is_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("http://", "https://"))


def url_cache_path(name: str, url: str) -> Path:
    """Where a `weights:` URL is cached: keyed by the whole URL (a hash of it before the file name, as torch hub
    and timm key their own files), so …/v1/good.pth and …/v2/good.pth, or good.pth?token=x, never collide."""
    import hashlib
    from urllib.parse import unquote, urlsplit

    import torch

    filename = os.path.basename(unquote(urlsplit(url).path))
    if not filename or "." not in filename:
        raise BenchError(
            f"Backbone {name!r}: the weights URL {url!r} names no file (it should end in a file name such as "
            "model.pth or model.safetensors). Give the URL of the checkpoint file itself, or a local `weights:` file."
        )
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(torch.hub.get_dir()) / "checkpoints" / "mesbench" / f"{digest}-{filename}"


def check_weights_file(name: str, source: str, path: Path) -> None:
    """A downloaded file enters the cache only if it loads, weights only, as a state dict of tensors: a truncated
    download, an HTML error page or an arbitrary pickle is refused here rather than failing every later run."""
    import torch

    try:
        state: Any
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        ok = isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
        reason = "" if ok else f"it holds a {type(state).__name__}, not a state dict of tensors"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'}"
    if reason:
        raise BenchError(
            f"Backbone {name!r}: the file downloaded from {source} ({path.stat().st_size:,} bytes) is not a weights "
            f"file ({reason}); a cut connection, an error page or a wrong URL. Nothing was cached; check the URL and "
            "fetch again."
        )


def ensure_weights(name: str, weights: str | None = None) -> Path:
    """The ImageNet weights of a backbone as a local file, as timm finds them: the `weights:` file, else the
    HF / torch hub cache, else a download (from the `weights:` URL, or timm's own source) unless offline."""
    import torch

    spec = resolve(name)
    if weights and not _is_url(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BenchError(
                f"Backbone {name!r}: the weights file {weights!r} does not exist. Give the path of the "
                "checkpoint, an http(s) URL to download it from, or `pretrained: false`."
            )
        return path
    if _is_url(weights):
        target = url_cache_path(name, str(weights))
        if target.is_file():
            return target
        if offline():
            raise BenchError(
                f"Backbone {name!r}: its weights {weights} are not in the cache ({target}) and this run "
                "is offline. Fetch them where there is internet (`bench weights fetch SUITE`) and copy "
                "the torch hub cache (TORCH_HOME) here, or drop --offline / HF_HUB_OFFLINE."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            torch.hub.download_url_to_file(str(weights), str(partial), progress=False)
            check_weights_file(name, str(weights), partial)
        except BenchError:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise BenchError(
                f"Backbone {name!r}: downloading {weights} failed ({type(exc).__name__}: {exc}). Check "
                "the URL and the network, or give a local `weights:` file."
            ) from None
        os.replace(partial, target)  # only a complete, loadable state dict ever enters the cache
        return target
    cached = cached_weights(spec.timm_name)
    if cached is not None:
        return cached
    if offline():
        raise BenchError(
            f"Backbone {name!r} asks for pretrained ImageNet weights, but no local weights file or filled cache was "
            "found, and this run is offline, so nothing is downloaded. Either set `weights: "
            f"/path/to/{spec.timm_name}.safetensors` (or .pth) under this backbone in the suite, or fetch them on a "
            'machine with internet (`bench weights fetch SUITE`, or `python -c "import timm; '
            f"timm.create_model('{spec.timm_name}', pretrained=True)\"`) and copy ~/.cache/huggingface (HF_HOME) "
            "here. Or set `pretrained: false`."
        )
    import timm

    try:
        timm.create_model(spec.timm_name, pretrained=True, num_classes=0)  # timm downloads into its cache
    except Exception as exc:
        raise BenchError(
            f"Backbone {name!r}: timm could not download its ImageNet weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). On a machine without internet, give a local `weights:` "
            "file or fill the cache elsewhere with `bench weights fetch SUITE`."
        ) from None
    cached = cached_weights(spec.timm_name)
    if cached is None:
        raise BenchError(
            f"Backbone {name!r}: timm loaded its weights but left no file in the HF or torch hub cache; "
            "give a local `weights:` file."
        )
    return cached


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None):
    """(module, feature size, input size). The module maps images to a pooled (B, d) feature vector."""
    import timm

    spec = resolve(name)
    if not pretrained:
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        return model, model.num_features, spec.input_size
    path = ensure_weights(name, weights)
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
        )
    except Exception as exc:
        raise BenchError(
            f"Backbone {name!r}: weights file {str(path)!r} could not be loaded into timm model "
            f"{spec.timm_name!r} ({type(exc).__name__}: {exc}). Check that it is that model's "
            "ImageNet checkpoint."
        ) from None
    return model, model.num_features, spec.input_size


def list_backbones() -> list[BackboneSpec]:
    return BACKBONES.values()
