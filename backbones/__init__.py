"""Backbone registry over timm: pooled feature extractors with the classifier removed.

Like timm's own registry: a dict filled by registration and `create_backbone`. Any timm model name works
even when not registered here; registered names add defaults (input size, batch size). Importing this
package imports neither timm nor torch and changes nothing in the environment: the registry of specs is
plain data, and timm is imported where a model is built or an unregistered name is looked up.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable
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
    builder: Callable[[], Any] | None = None  # a module not from timm (the `null` backbone, a user's factory)


def _adopt(name: str, obj: Any) -> None:
    """An entry point that names a factory (a callable returning the feature extractor) or a BackboneSpec."""
    if isinstance(obj, BackboneSpec):
        BACKBONES.register(name, obj)
    elif callable(obj):
        register_backbone(name, timm_name=name, builder=obj)


BACKBONES: Registry[BackboneSpec] = Registry("backbone", "mesbench.backbones", _adopt)


def register_backbone(name, timm_name=None, input_size=None, batch_size=None, builder=None) -> BackboneSpec:
    return BACKBONES.register(name, BackboneSpec(name, timm_name or name, input_size, batch_size, builder))


def _null_backbone():
    """The global average of each input channel: a 3-feature backbone that costs (almost) nothing, so that a CPU
    measures the harness's own per-batch, per-epoch and per-cell costs, which a fast GPU would expose."""
    from torch import nn

    class NullBackbone(nn.Module):
        num_features = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    return NullBackbone()


register_backbone("resnet18", batch_size=64)
register_backbone("resnet50", batch_size=32)
register_backbone("densenet121", batch_size=16)
register_backbone("inception_v3", input_size=(299, 299), batch_size=32)
register_backbone("mobilenetv3_large_100", batch_size=16)
# What the field compares with the study's CNNs (CLoE 2025, EndoDINO 2025, the 2026 multi-centre benchmark).
# Transformers are built at the images' own size (timm's img_size) unless `input_size:` says otherwise.
register_backbone("convnext_tiny", batch_size=32)
register_backbone("efficientnet_b0", batch_size=32)
register_backbone("vit_small_patch16_224", batch_size=64)
register_backbone("swin_tiny_patch4_window7_224", batch_size=32)
register_backbone("vit_small_patch14_dinov2", batch_size=32)
# A few hundred thousand parameters: smoke suites and tests on a 2-core CPU.
register_backbone("tiny", timm_name="test_resnet", batch_size=32)
# No model at all: `bench perf --cell --backbone null` measures everything a cell costs besides the model.
register_backbone("null", timm_name="null", batch_size=64, builder=_null_backbone)


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
    if ":" in name:
        return factory_spec(name)
    import timm

    if name in timm.list_models():
        return BackboneSpec(name, name)
    raise unknown_backbone(name)


FACTORY_FORM = (
    "a backbone factory is named `package.module:function`: a function, importable from this Python (an installed "
    "package, or a module on PYTHONPATH), that returns an nn.Module mapping a batch of images (B, 3, H, W) to "
    "features (B, d) and says d as its `num_features`"
)


def factory_spec(name: str) -> BackboneSpec:
    """A user's own backbone, `package.module:function`: imported (never unpickled) like any installed code."""
    import importlib

    module, _, attr = name.partition(":")
    if not module or not attr or ":" in attr:
        raise BenchError(f"Backbone {name!r}: {FACTORY_FORM}.")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise BenchError(
            f"Backbone {name!r}: the module {module!r} cannot be imported ({type(exc).__name__}: {exc}); "
            f"{FACTORY_FORM}."
        ) from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise BenchError(f"Backbone {name!r}: {module!r} has no function {attr!r}; {FACTORY_FORM}.")
    spec = BackboneSpec(name, name, builder=fn)
    BACKBONES.origins.setdefault(name, f"factory {name}")
    return spec


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
    if spec.builder is not None:
        raise BenchError(f"Backbone {name!r} has no weights to load; set `pretrained: false` for it.")
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


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained_cfg of a backbone (input size, mean/std, whether the input size is fixed); {} if none."""
    import timm

    spec = resolve(name)
    if spec.builder is not None:
        return {}
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    return cfg.to_dict() if cfg is not None else {}


def fixed_input_size(name: str) -> bool:
    """Models built for one input size (ViT, DeiT, Swin, MaxViT, CoAtNet, EVA, DINOv2 …): timm rebuilds them for
    another through `img_size`, resampling pretrained position embeddings as it loads them."""
    return bool(pretrained_cfg(name).get("fixed_input_size", False))


def model_input_size(name: str) -> tuple[int, int]:
    size = pretrained_cfg(name).get("input_size")
    if not size:
        raise BenchError(
            f"Backbone {name!r}: timm records no input size for it, so `input_size: model` has nothing to resize "
            "to. Give `input_size: [H, W]`, or `native`."
        )
    return int(size[-2]), int(size[-1])


def resize_target(name: str, input_size) -> tuple[int, int] | None:
    """The size images are resized to for this backbone, None for the images' own size: the suite's
    `input_size` ([H, W], `model`, `native`), else the registry's default."""
    if input_size == "native":
        return None
    if input_size == "model":
        return model_input_size(name)
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    spec = resolve(name)
    return tuple(spec.input_size) if spec.input_size else None  # type: ignore[return-value]


def _size_kwargs(name: str, size) -> dict:
    return {"img_size": (int(size[0]), int(size[1]))} if size is not None and fixed_input_size(name) else {}


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None, size=None):
    """(module, feature size, registered input size). The module maps images to a pooled (B, d) feature vector;
    `size` (H, W) is the size it will see, which fixed-size models are built for."""
    import timm

    spec = resolve(name)
    if spec.builder is not None:
        if pretrained:
            raise BenchError(f"Backbone {name!r} has no weights to load; set `pretrained: false` for it.")
        model = spec.builder()
        d = getattr(model, "num_features", None)
        if not isinstance(d, int) or d < 1:
            raise BenchError(
                f"Backbone {name!r}: the module its factory returned has no `num_features` (the size d of the "
                f"features it returns, an int), so no head can be sized for it; {FACTORY_FORM}."
            )
        return model, d, spec.input_size
    kwargs = _size_kwargs(name, size)
    if not pretrained:
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **kwargs)
        return model, model.num_features, spec.input_size
    path = ensure_weights(name, weights)
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}, **kwargs
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


def _meta_forward(name: str, size) -> str | None:
    """Build the backbone on the meta device (no memory, no weights) and pass one image of this size through
    it: timm's own size assertions and every shape check run, in well under a second. None if it works."""
    return _meta_pass(resolve(name), (int(size[0]), int(size[1])))[0]


@functools.lru_cache(maxsize=256)
def _meta_pass(spec: BackboneSpec, size: tuple[int, int]) -> tuple[str | None, int | None]:
    """(problem, forward FLOPs) of one pass on the meta device. One pass serves both the size check and the
    FLOPs count (`bench plan` and the runner ask for both), so each backbone and size is built once per process;
    keyed by the spec, so a name registered anew is built anew."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            model, _, _ = create_backbone(spec.name, size=size)
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model.eval()(torch.zeros(1, 3, size[0], size[1]))  # eval: batch norm takes one image
    except Exception as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__), None
    return None, int(counter.get_total_flops())


def check_input_size(name: str, size, resized: bool) -> None:
    """Refuse, before anything is trained, a backbone that cannot take images of this size, with a size it
    can take."""
    problem = _meta_forward(name, size)
    if problem is None:
        return
    h, w = int(size[0]), int(size[1])
    suggestion = None
    for multiple in (32, 64, 112, 224):
        candidate = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
        if candidate != (h, w) and _meta_forward(name, candidate) is None:
            suggestion = candidate
            break
    where = "resized to" if resized else "of the dataset's own size"
    fixes = []
    if suggestion:
        fixes.append(f"`input_size: [{suggestion[0]}, {suggestion[1]}]` (a size it takes)")
    try:
        mh, mw = model_input_size(name)
        if (mh, mw) != (h, w) and _meta_forward(name, (mh, mw)) is None:
            fixes.append(f"`input_size: model` ({mh}×{mw}, its weights' own size)")
    except BenchError:
        pass
    fix = " or ".join(fixes) if fixes else "another `input_size: [H, W]`, or another backbone"
    raise BenchError(
        f"Backbone {name!r} cannot take images {where} {h}×{w} (timm: {problem}). Nothing was trained. Set {fix} "
        "under this backbone in the suite's `backbones:`."
    )


def check_lr_decay(name: str) -> None:
    """Layer-wise decay needs timm's layer grouping of the model (its `group_matcher`)."""
    import torch

    with torch.device("meta"):
        model, _, _ = create_backbone(name)
    if not hasattr(model, "group_matcher"):
        raise BenchError(
            f"Backbone {name!r}: `lr_decay` needs timm's layer grouping (`group_matcher`), which this model does "
            "not define. Remove `lr_decay` for it."
        )


def pretrained_stats(name: str) -> tuple[list[float], list[float]]:
    """The weights' own normalisation (`normalise: pretrained`), in [0, 1] units like the fold statistics."""
    cfg = pretrained_cfg(name)
    if not cfg.get("mean") or not cfg.get("std"):
        raise BenchError(
            f"Backbone {name!r}: timm records no mean/std for its weights, so `normalise: pretrained` has nothing "
            "to use. Use `normalise: fold`."
        )
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


def optimizer_groups(backbone, head, lr: float, weight_decay: float, lr_decay: float | None) -> list[dict]:
    """Trainable parameters in Adam's groups. Without decay: one group (exactly `Adam(model.parameters())`).
    With decay: timm's layer-wise groups (`param_groups_layer_decay`: each layer's lr scaled by decay^depth,
    no weight decay on norms and biases) with their lr set, the head at the full lr."""
    trainable = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    if lr_decay is None:
        return [{"params": trainable}]
    from timm.optim import param_groups_layer_decay

    groups = []
    for g in param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=lr_decay):
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({**g, "params": params, "lr": lr * g["lr_scale"]})
    groups.append({"params": [p for p in head.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay})
    return groups


def gradcam_target(backbone, layer: str | None = None):
    """(module, reshape_transform) for pytorch-grad-cam. CNNs: the last feature map of timm's `feature_info`
    (so MobileNet-v3, whose head pools before its last conv, is explained at its last block). ViT-style models:
    the last block's `norm1`, as pytorch-grad-cam documents: with class-token pooling only the class token
    reaches the head after the last block, so gradients on the patch tokens vanish there. Tokens are put back
    on the patch grid (prefix tokens dropped); NHWC outputs (Swin) are permuted to NCHW. `layer` overrides."""
    from torch import nn

    tokens = hasattr(backbone, "blocks") and hasattr(backbone, "num_prefix_tokens") and hasattr(backbone, "patch_embed")
    nhwc = getattr(backbone, "output_fmt", None) == "NHWC" or str(getattr(backbone, "output_fmt", "")) == "Format.NHWC"
    if layer:
        try:
            module = backbone.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in backbone.named_modules() if n]
            raise BenchError(
                f"gradcam_layer {layer!r} is not a module of this backbone; its last modules are "
                f'{", ".join(names[-5:])} (`python -c "import timm; print(timm.create_model(NAME))"` lists all).'
            ) from None
    elif tokens:
        module = backbone.blocks[-1].norm1
    else:
        info = getattr(backbone, "feature_info", None)
        if info:
            last = info[-1]
            module = backbone.get_submodule(last["module"] if isinstance(last, dict) else info.module_name()[-1])
        else:
            convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
            if not convs:
                raise BenchError("this backbone has no convolutional layer for Grad-CAM; set `gradcam_layer:`")
            module = convs[-1]

    def to_nchw(t):
        if t.ndim == 3 and tokens:
            t = t[:, backbone.num_prefix_tokens :, :]
            gh, gw = backbone.patch_embed.grid_size
            if gh * gw != t.shape[1]:
                raise BenchError(
                    f"Grad-CAM: {t.shape[1]} patch tokens do not fill the {gh}×{gw} patch grid of this model"
                )
            return t.reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)
        if t.ndim == 4 and nhwc:
            return t.permute(0, 3, 1, 2)
        return t

    return module, (to_nchw if tokens or nhwc else None)


def model_cost(model, size) -> dict:
    """Parameters and forward FLOPs per image (torch's FlopCounterMode; a multiply-add counts 2), counted on a
    meta-device copy so that nothing is computed or allocated."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    try:
        meta = copy.deepcopy(model).to("meta").eval()  # eval: inference FLOPs, and batch norm takes one image
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.zeros(1, 3, int(size[0]), int(size[1]), device="meta"))
        flops = int(counter.get_total_flops())
    except Exception:
        flops = None  # a layer without a FLOP formula: the column says "—" rather than guess
    return {"params": int(params), "flops_per_image": flops}


def flops_per_image(name: str, size) -> int | None:
    """Forward FLOPs of one image of this size, counted on the meta device (no weights, no memory): what the
    runner orders cells by, longest first."""
    return _meta_pass(resolve(name), (int(size[0]), int(size[1])))[1]
