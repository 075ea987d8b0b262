"""Encoder contract: reported channels/strides, torchvision/timm weight files, input-channel adaptation."""
from __future__ import annotations

import urllib.error

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from imseg.models import build_encoder, list_encoders
from imseg.models.encoders import Encoder, torchvision_taps
from imseg.preprocessing import TORCHVISION

TIMM_ENCODERS = ["timm:resnet18", "timm:mobilenetv3_small_050", "timm:convnext_atto"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _resnet_features(net: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The five feature maps of a plain torchvision ResNet, computed the torchvision way."""
    f2 = net.relu(net.bn1(net.conv1(x)))
    f4 = net.layer1(net.maxpool(f2))
    f8 = net.layer2(f4)
    f16 = net.layer3(f8)
    return [f2, f4, f8, f16, net.layer4(f16)]


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", list_encoders() + TIMM_ENCODERS)
def test_channels_and_strides_match_features(name: str, output_stride: int) -> None:
    enc = build_encoder(name, output_stride=output_stride).eval()
    assert isinstance(enc, Encoder)
    h, w = 64, 96
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, h, w))
    assert len(feats) == len(enc.channels) == len(enc.strides)
    assert max(enc.strides) == output_stride == enc.output_stride
    assert enc.strides == sorted(enc.strides)
    for f, c, s in zip(feats, enc.channels, enc.strides):
        assert tuple(f.shape) == (1, c, h // s, w // s), (name, output_stride, enc.channels, enc.strides)


def test_odd_input_size_works() -> None:
    enc = build_encoder("vgg16", output_stride=8).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 97, 131))
    assert [f.shape[1] for f in feats] == enc.channels


def test_torchvision_resnet18_file_matches_torchvision(tmp_path) -> None:
    ref = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, which the encoder must ignore
    enc = build_encoder("resnet18", weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(enc(x), _resnet_features(ref, x)):
            torch.testing.assert_close(ours, theirs)


def test_safetensors_file_loads(tmp_path) -> None:
    ref = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.safetensors"
    save_file(ref.state_dict(), str(path))
    enc = build_encoder("resnet18", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], _resnet_features(ref, x)[-1])


def test_wrong_file_lists_unexpected_and_missing_keys(tmp_path) -> None:
    path34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path34)
    with pytest.raises(ValueError, match=r"resnet34\.pth.*unexpected keys: layer1\.2\.conv1\.weight"):
        build_encoder("resnet18", weights=str(path34))
    path18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path18)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*missing keys: layer1\.2\."):
        build_encoder("resnet34", weights=str(path18))


def test_shape_mismatch_is_reported(tmp_path) -> None:
    path = tmp_path / "mnv3_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ValueError, match="do not fit encoder 'mobilenet_v3_large'"):
        build_encoder("mobilenet_v3_large", weights=str(path))


def test_missing_file_and_bad_arguments() -> None:
    with pytest.raises(FileNotFoundError, match="imagenet"):
        build_encoder("resnet18", weights="/nonexistent/resnet18.pth")
    with pytest.raises(ValueError, match="resnet18.*vgg16.*timm:"):
        build_encoder("resnet9")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_encoder("timm:not_a_model_xyz")
    with pytest.raises(ValueError, match="output_stride"):
        build_encoder("resnet18", output_stride=4)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels_adapts_loaded_first_conv(tmp_path, in_channels: int) -> None:
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    enc = build_encoder("resnet18", in_channels=in_channels, weights=str(path))
    rgb = state["conv1.weight"]
    if in_channels == 1:
        expected = rgb.sum(dim=1, keepdim=True)
    else:  # RGB repeated, rescaled so activations keep their magnitude
        expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4
    torch.testing.assert_close(enc.conv1.weight.detach(), expected)
    torch.testing.assert_close(enc.layer4[1].conv2.weight.detach(), state["layer4.1.conv2.weight"])
    assert enc.preprocessing.num_channels == in_channels
    assert enc(torch.randn(2, in_channels, 64, 64))[-1].shape[1] == 512


def test_imagenet_offline_says_how_to_use_a_file(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth.*(?s:.*)download.*pass its path"):
        build_encoder("resnet18", weights="imagenet")


def test_resnet50_dilation_matches_torchvision_deeplabv3_backbone(tmp_path) -> None:
    ref = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2)
    backbone = ref.backbone.eval()
    path = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    enc = build_encoder("resnet50", output_stride=8, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], backbone(x)["out"])


def test_mobilenet_v3_os16_matches_torchvision_dilated(tmp_path) -> None:
    ref = torchvision.models.mobilenet_v3_large(dilated=True).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(ref.state_dict(), path)
    enc = build_encoder("mobilenet_v3_large", output_stride=16, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], ref.features(x))


def test_resnet18_dilation_keeps_weights_meaningful() -> None:
    """OS8 only changes strides/dilations, never parameters: the same state dict fits every OS."""
    state = build_encoder("resnet18").state_dict()
    enc8 = build_encoder("resnet18", output_stride=8)
    enc8.load_state_dict(state)
    assert enc8.layer3[0].conv1.dilation == (1, 1) and enc8.layer3[0].conv1.stride == (1, 1)
    assert enc8.layer3[1].conv1.dilation == (2, 2)
    assert enc8.layer4[0].conv1.dilation == (2, 2)
    assert enc8.layer4[1].conv2.dilation == (4, 4)


def test_timm_file_loads_strictly(tmp_path) -> None:
    ref = timm.create_model("resnet18").eval()
    path = tmp_path / "timm_resnet18.safetensors"
    save_file(ref.state_dict(), str(path))
    enc = build_encoder("timm:resnet18", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], ref.forward_features(x))
    assert enc.preprocessing.mean == tuple(ref.pretrained_cfg["mean"])

    path34 = tmp_path / "timm_resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path34)
    with pytest.raises(ValueError, match=r"timm_resnet34\.pth.*unexpected keys: layer1\.2"):
        build_encoder("timm:resnet18", weights=str(path34))


def test_timm_feature_extractor_with_renamed_modules_loads(tmp_path) -> None:
    """convnext's feature extractor renames stem.0 -> stem_0; a timm file must still load (1 input channel)."""
    ref = timm.create_model("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(ref.state_dict(), path)
    enc = build_encoder("timm:convnext_atto", in_channels=1, weights=str(path))
    torch.testing.assert_close(enc.model.stem_0.weight.detach(), ref.stem[0].weight.detach().sum(1, keepdim=True))


def test_timm_imagenet_offline_says_how_to_use_a_file(monkeypatch) -> None:
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("network is unreachable")
        return create_model(*args, **kwargs)

    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"huggingface\.co/timm/resnet18\.\S+/model\.safetensors.*pass its path"):
        build_encoder("timm:resnet18", weights="imagenet")


# --------------------------------------------------------------------------- the contract and taps


class _Tiny(Encoder):
    def __init__(self, **contract) -> None:
        base = {"name": "tiny", "in_channels": 3, "channels": [8, 16], "strides": [4, 8], "output_stride": 8,
                "preprocessing": TORCHVISION}
        super().__init__(**{**base, **contract})


@pytest.mark.parametrize(
    "contract, message",
    [
        ({"strides": [4]}, "strides must hold one positive integer per feature map"),
        ({"strides": [8, 4]}, "strides must never fall"),
        ({"strides": [4, 16]}, "strides must never fall .* nor pass output_stride 8; got \\[4, 16\\]"),
        ({"channels": []}, "channels must be a non-empty list"),
        ({"in_channels": 4}, "preprocessing must be a Preprocessing for 4 channels"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"preprocessing": None}, "preprocessing must be a Preprocessing"),
    ],
)
def test_a_broken_contract_fails_when_the_encoder_is_built(contract: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"_Tiny breaks the encoder contract: {message}"):
        _Tiny(**contract)
    assert _Tiny().channels == [8, 16]


def test_an_encoder_that_forgets_part_of_the_contract_fails_when_built() -> None:
    class Forgetful(Encoder):
        def __init__(self) -> None:
            super().__init__(name="forgetful", in_channels=3, channels=[8], strides=[4], output_stride=4)

    with pytest.raises(TypeError, match="preprocessing"):
        Forgetful()


@pytest.mark.parametrize(
    "name, taps, channels, strides",
    [
        ("resnet18", (1, 3), [64, 256], [4, 16]),
        ("vgg16", (3, 4, 30), [64, 64, 512], [1, 2, 32]),  # conv1_2, pool1, pool5
        ("mobilenet_v3_large", (4, 16), [40, 960], [8, 32]),
        ("timm:resnet18", (1, 4), [64, 512], [4, 32]),
    ],
)
def test_taps_choose_the_returned_maps(name: str, taps: tuple, channels: list, strides: list) -> None:
    enc = build_encoder(name, taps=taps).eval()
    assert enc.taps == taps and enc.channels == channels and enc.strides == strides
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, strides)]


def test_taps_keep_the_weights_layout(tmp_path) -> None:
    """Taps only change what forward returns: a full torchvision file still loads, and the maps are its own."""
    ref = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    enc = build_encoder("resnet18", weights=str(path), taps=(2, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = enc(x), _resnet_features(ref, x)
    torch.testing.assert_close(ours[0], theirs[2])
    torch.testing.assert_close(ours[1], theirs[4])


def test_bad_taps_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"taps of encoder 'resnet18' must be increasing indices from 0 to 4"):
        build_encoder("resnet18", taps=(3, 1))
    with pytest.raises(ValueError, match=r"from 0 to 16, got \(4, 17\)"):
        build_encoder("mobilenet_v3_large", taps=(4, 17))
    with pytest.raises(ValueError, match="encoder 'xception65' does not take taps"):
        build_encoder("xception65", taps=(0, 1))


def test_torchvision_taps_read_mobilenet_v3_where_torchvision_does() -> None:
    assert torchvision_taps("resnet50", 8) is None  # torchvision reads ResNets at the default maps
    large = build_encoder("mobilenet_v3_large", output_stride=16, taps=torchvision_taps("mobilenet_v3_large", 16))
    assert large.taps == (1, 3, 4, 12, 16) and large.strides == [2, 4, 8, 16, 16]
    assert torchvision_taps("mobilenet_v3_small", 16)[2] == 2
    # At output stride 8 the stride-8 map is the deepest one: it stays the last block.
    assert torchvision_taps("mobilenet_v3_large", 8) == build_encoder("mobilenet_v3_large", output_stride=8).taps
