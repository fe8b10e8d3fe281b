"""Pretrained weights as timm users expect them — a local file, the cache, else a download unless offline —
exercised against a local file server and a prepared cache, never the network."""

import functools
import http.server
import os
import threading

import pytest
import torch

from benchmark.cli import main


@pytest.fixture
def server(tmp_path):
    """A local HTTP server holding a test_resnet checkpoint with recognisable weights."""
    import timm

    root = tmp_path / "served"
    root.mkdir()
    model = timm.create_model("test_resnet", num_classes=0)
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.dtype.is_floating_point)
    state[first] = torch.full_like(state[first], 0.125)
    torch.save(state, root / "test_resnet_marked.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/test_resnet_marked.pth", first
    httpd.shutdown()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("MESBENCH_OFFLINE", "")  # recorded, so whatever `--offline` sets is undone afterwards
    return tmp_path


def test_online_the_weights_are_downloaded_once_then_offline_comes_from_the_cache(
    server, caches, make_suite, capsys, monkeypatch
):
    from backbones import create_backbone

    url, first = server
    suite = make_suite(
        name="pre", formulations=["softmax"], backbones=[{"name": "tiny", "pretrained": True, "weights": url}]
    )
    capsys.readouterr()
    assert main(["weights", "fetch", str(suite)]) == 0
    from backbones import url_cache_path

    cached = url_cache_path("tiny", url)
    assert cached.parent == caches / "torch" / "hub" / "checkpoints" / "mesbench"
    assert cached.is_file() and str(cached) in " ".join(capsys.readouterr().out.split())
    model, _, _ = create_backbone("tiny", True, url)
    assert torch.all(model.state_dict()[first] == 0.125)  # the served weights, loaded
    monkeypatch.setenv("MESBENCH_OFFLINE", "1")  # offline: the cached copy still serves
    assert main(["run", str(suite), "--out", str(caches / "run"), "--quiet", "--only", "fold=0", "--offline"]) == 0


def test_offline_without_the_weights_is_a_clear_error_and_nothing_is_fetched(server, caches, make_suite, capsys):
    url, _ = server
    suite = make_suite(
        name="off", formulations=["softmax"], backbones=[{"name": "tiny", "pretrained": True, "weights": url}]
    )
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(caches / "run"), "--quiet", "--offline"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "offline" in err and "bench weights fetch" in err
    assert not list((caches / "torch").rglob("*test_resnet_marked.pth"))


def test_a_prepared_cache_is_used_without_any_url(caches, monkeypatch):
    """timm's own layout: the checkpoint named by the model's pretrained config, in the torch hub cache."""
    import timm

    from backbones import cached_weights, ensure_weights

    monkeypatch.setenv("MESBENCH_OFFLINE", "1")
    cfg = timm.models.get_pretrained_cfg("resnet18").to_dict()
    if not cfg.get("url"):  # served from the HF hub: prepare the HF cache layout instead
        repo = "/".join(cfg["hf_hub_id"].split("/", 2)[:2])
        snap = caches / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "0" * 1
        snap.mkdir(parents=True)
        (snap / "model.safetensors").write_bytes(b"x")
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text(snap.name)
    else:
        path = caches / "torch" / "hub" / "checkpoints" / os.path.basename(cfg["url"])
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    assert cached_weights("resnet18") is not None
    assert ensure_weights("resnet18") == cached_weights("resnet18")


def test_the_cache_is_keyed_by_the_whole_url(server, caches, tmp_path):
    """The audit: …/v1/good.pth then …/v2/good.pth trained the second suite with v1's file."""
    from backbones import ensure_weights, url_cache_path

    url, first = server
    root = url.rsplit("/", 1)[0]
    served = tmp_path / "served"
    for version, value in (("v1", 0.25), ("v2", 0.5)):
        (served / version).mkdir()
        state = torch.load(served / "test_resnet_marked.pth", weights_only=True)
        state[first] = torch.full_like(state[first], value)
        torch.save(state, served / version / "good.pth")
    paths = [ensure_weights("tiny", f"{root}/{v}/good.pth") for v in ("v1", "v2")]
    paths.append(ensure_weights("tiny", f"{root}/v1/good.pth?token=x"))
    assert len(set(paths)) == 3 and all(p.name.endswith("-good.pth") for p in paths)
    values = [float(torch.load(p, weights_only=True)[first].flatten()[0]) for p in paths]
    assert values == [0.25, 0.5, 0.25]
    assert url_cache_path("tiny", f"{root}/v1/good.pth") == paths[0]


@pytest.mark.parametrize(
    "content, name",
    [
        (b"<html><body>404 Not Found</body></html>", "page.pth"),
        (None, "truncated.pth"),  # the served checkpoint cut at a third
        (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94.", "pickle.pth"),  # a plain pickle
    ],
)
def test_a_bad_download_is_refused_and_never_cached(server, caches, tmp_path, make_suite, capsys, content, name):
    url, _ = server
    served = tmp_path / "served"
    full = (served / "test_resnet_marked.pth").read_bytes()
    (served / name).write_bytes(content if content is not None else full[: len(full) // 3])
    bad = url.rsplit("/", 1)[0] + "/" + name
    suite = make_suite(
        name="bad", formulations=["softmax"], backbones=[{"name": "tiny", "pretrained": True, "weights": bad}]
    )
    capsys.readouterr()
    assert main(["weights", "fetch", str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a weights file" in err and "Nothing was cached" in err and "internal error" not in err
    assert not [p for p in (caches / "torch").rglob("*") if p.is_file()]


def test_a_url_without_a_file_name_is_refused(caches, make_suite, capsys):
    suite = make_suite(
        name="nofile",
        formulations=["softmax"],
        backbones=[{"name": "tiny", "pretrained": True, "weights": "http://127.0.0.1:9/"}],
    )
    capsys.readouterr()
    assert main(["weights", "fetch", str(suite)]) == 2
    assert "names no file" in capsys.readouterr().err
