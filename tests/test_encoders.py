"""Encoder contract: reported channels/strides, torchvision/timm weight files, input-channel adaptation."""
from __future__ import annotations

import urllib.error

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from imseg.models import build_encoder, list_encoders
from imseg.models.encoders import Encoder

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
