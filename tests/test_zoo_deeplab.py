"""DeepLab family (v1 LargeFOV, v2 ASPP, v3, v3+, DPC, LR-ASPP) and the aligned Xception encoders:
layer facts from the papers / official code, parameter counts, and exact parity with torchvision's
DeepLabV3 / LR-ASPP and timm's aligned Xception."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision.models import segmentation as tv_seg

from imseg.models import SegOutput, build_encoder, create_model
from imseg.models.deeplab import deeplabv3_from_torchvision
from imseg.models.dpc import DensePredictionCell
from imseg.models.layers import resize_to
from imseg.models.lraspp import lraspp_from_torchvision

# Small settings for the registry-wide tests in tests/test_models.py (64x96 on a 2-core CPU).
FAST_KWARGS: dict[str, dict] = {
    "deeplabv1": {"fc_channels": 64},
    "deeplabv2": {"encoder": "resnet18"},
    "deeplabv3": {"encoder": "resnet18", "multi_grid": (1, 2)},  # ResNet-18's layer4 has 2 units
    "deeplabv3plus_dpc": {"encoder": "resnet18"},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_bn_statistics(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode parity also checks that BN layers line up."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)


# --------------------------------------------------------------------------- v1 / v2


def test_deeplabv1_largefov_layout_and_params() -> None:
    model = create_model("deeplabv1", 21).eval()
    # Paper (DeepLab v2 TPAMI, LargeFOV row): 20.5M parameters.
    assert abs(n_params(model) - 20.5e6) / 20.5e6 < 0.02
    pools = [m for m in model.encoder.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    conv5 = [m for m in model.encoder.features[24:] if isinstance(m, nn.Conv2d)]
    assert [c.dilation for c in conv5] == [(2, 2)] * 3
    head = model.branches[0]
    assert len(model.branches) == 1
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert (head.fc7.kernel_size, head.fc7.out_channels, head.fc8.out_channels) == ((1, 1), 1024, 21)
    assert head.drop6.p == head.drop7.p == 0.5
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        # Output stride 8 with DeepLab's padded 3x3 pools: ceil(97/8) x ceil(131/8).
        assert model.encoder(x)[-1].shape[-2:] == (13, 17)
        assert model(x).shape == (1, 21, 97, 131)


def test_deeplabv1_fc6_fc7_are_thinned_vgg_classifier(tmp_path) -> None:
    """With VGG weights, fc6 = VGG fc6 decimated to 3x3 and every 4th filter; fc7 likewise (net surgery)."""
    rows, fc = 8, 2  # 4096 -> 1024 is the same every-4th subsample at full size
    state = build_encoder("vgg16").state_dict()
    w6, b6, w7, b7 = torch.randn(rows, 512 * 49), torch.randn(rows), torch.randn(rows, rows), torch.randn(rows)
    classifier = {
        "classifier.0.weight": w6,
        "classifier.0.bias": b6,
        "classifier.3.weight": w7,
        "classifier.3.bias": b7,
    }
    path = tmp_path / "vgg16.pth"
    torch.save({**state, **classifier}, path)
    model = create_model("deeplabv1", 3, encoder_weights=str(path), fc_channels=fc)
    head = model.branches[0]
    torch.testing.assert_close(head.fc6.weight.detach(), w6.view(rows, 512, 7, 7)[::4, :, ::3, ::3])
    torch.testing.assert_close(head.fc6.bias.detach(), b6[::4])
    torch.testing.assert_close(head.fc7.weight.detach()[:, :, 0, 0], w7[::4, ::4])
    assert model.encoder.classifier_state == {}


def test_deeplabv2_sums_four_atrous_branches() -> None:
    model = create_model("deeplabv2", 5, encoder="resnet18").eval()
    assert [b.dilation for b in model.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.kernel_size == (3, 3) and b.out_channels == 5 and b.bias is not None for b in model.branches)
    assert model.encoder.output_stride == 8
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        f = model.encoder(x)[-1]
        expected = resize_to(sum(b(f) for b in model.branches), x.shape[-2:])
        torch.testing.assert_close(model(x), expected)
    at16 = create_model("deeplabv2", 5, encoder="resnet18", output_stride=16)
    assert [b.dilation[0] for b in at16.branches] == [3, 6, 9, 12]  # same image area at OS16


def test_deeplabv2_vgg_aspp_l_branches() -> None:
    model = create_model("deeplabv2", 5, encoder="vgg16", branch_channels=32).eval()
    assert [b.fc6.dilation[0] for b in model.branches] == [6, 12, 18, 24]
    assert [(b.fc6.out_channels, b.fc7.out_channels) for b in model.branches] == [(32, 32)] * 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 5, 50, 70)


# --------------------------------------------------------------------------- v3


def aspp_rates(model: nn.Module) -> list[int]:
    return [c.dilation[0] for c in model.aspp.convs[1:4].modules() if isinstance(c, nn.Conv2d)]


def test_deeplabv3_aspp_rates_multi_grid_and_aux() -> None:
    model = create_model("deeplabv3", 5, encoder="resnet50", output_stride=8, multi_grid=(1, 2, 4), aux=True)
    assert aspp_rates(model) == [12, 24, 36]  # (6, 12, 18) doubled at OS8
    assert [u.conv2.dilation[0] for u in model.encoder.layer4] == [4, 8, 16]  # 4 x (1, 2, 4) at OS8
    pooling = model.aspp.convs[4]
    assert isinstance(pooling[0], nn.AdaptiveAvgPool2d) and isinstance(pooling[1][1], nn.BatchNorm2d)
    assert model.aspp.project[0][0].in_channels == 5 * 256 and model.head is None
    out = model.train()(torch.randn(2, 3, 49, 67))
    assert isinstance(out, SegOutput) and out.out.shape == out.aux.shape == (2, 5, 49, 67)
    assert model.aux_classifier[0][0].in_channels == 1024  # layer3

    at16 = create_model("deeplabv3", 5, encoder="resnet18", multi_grid=(1, 2))
    assert aspp_rates(at16) == [6, 12, 18]
    assert [u.conv2.dilation[0] for u in at16.encoder.layer4] == [2, 4]  # 2 x (1, 2) at OS16


def test_deeplabv3_defaults_are_the_papers_77_21_setting() -> None:
    """ResNet-101 at OS16 with multi-grid (1, 2, 4) (block4 rates 2, 4, 8) and ASPP 6/12/18 + image pooling."""
    with torch.device("meta"):  # structure only
        model, plain = create_model("deeplabv3", 21), create_model("deeplabv3", 21, multi_grid=None)
    assert model.encoder.name == "resnet101" and model.encoder.output_stride == 16
    assert [u.conv2.dilation[0] for u in model.encoder.layer4] == [2, 4, 8]
    assert aspp_rates(model) == [6, 12, 18] and model.head is None
    # Without it, torchvision's dilation: the first unit keeps the previous rate.
    assert [u.conv2.dilation[0] for u in plain.encoder.layer4] == [1, 2, 2]


def test_deeplabv3_multi_grid_errors() -> None:
    with pytest.raises(ValueError, match="one rate per unit.*multi_grid=None"):
        create_model("deeplabv3", 5, encoder="resnet18", multi_grid=(1, 2, 4))  # ResNet-18 has 2 units
    with pytest.raises(ValueError, match="ResNet encoders.*multi_grid=None"):
        create_model("deeplabv3", 5, encoder="mobilenet_v3_small", multi_grid=(1, 2, 4))
    # The default applies the paper's grid only where it fits: ResNet-18 and MobileNetV3 keep their own rates.
    rates = [[m.dilation[0] for m in (u.conv1, u.conv2)] for u in create_model("deeplabv3", 5, encoder="resnet18").encoder.layer4]
    plain = create_model("deeplabv3", 5, encoder="resnet18", multi_grid=None).encoder.layer4
    assert rates == [[m.dilation[0] for m in (u.conv1, u.conv2)] for u in plain] == [[1, 2], [2, 2]]
    create_model("deeplabv3", 5, encoder="mobilenet_v3_small")
    assert create_model("deeplabv3", 5, encoder="mobilenet_v3_small", multi_grid=None).encoder.output_stride == 16
    with pytest.raises(ValueError, match="output_stride 16 or 8"):
        create_model("deeplabv3", 5, encoder="resnet18", multi_grid=None, output_stride=32)


def test_deeplabv3_matches_torchvision_resnet50(tmp_path) -> None:
    ref = tv_seg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    randomise_bn_statistics(ref)
    path = tmp_path / "deeplabv3_resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = deeplabv3_from_torchvision(path).eval()
    assert n_params(model) == 42_004_074  # torchvision's published num_params
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    torch.testing.assert_close(ours.out, theirs["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.aux, theirs["aux"], rtol=1e-5, atol=1e-5)


def test_deeplabv3_matches_torchvision_mobilenet_v3_large(tmp_path) -> None:
    ref = tv_seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    ref.eval()
    randomise_bn_statistics(ref)
    path = tmp_path / "deeplabv3_mobilenet_v3_large.pth"
    torch.save(ref.state_dict(), path)
    model = deeplabv3_from_torchvision(path).eval()
    assert n_params(model) == 11_029_328  # torchvision's published num_params
    assert model.aux_classifier[0][0].in_channels == 40  # features[4], the first stride-8 block
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    torch.testing.assert_close(ours.out, theirs["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.aux, theirs["aux"], rtol=1e-5, atol=1e-5)

    # Without aux_loss the state dict has no aux keys and the model no aux head.
    plain = tv_seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    assert isinstance(deeplabv3_from_torchvision(plain.state_dict()).eval()(x[:1]), torch.Tensor)


def test_torchvision_loaders_reject_other_weights() -> None:
    with pytest.raises(ValueError, match="not a torchvision DeepLabV3"):
        deeplabv3_from_torchvision({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a torchvision LR-ASPP"):
        lraspp_from_torchvision({"conv1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- LR-ASPP


def test_lraspp_matches_torchvision(tmp_path) -> None:
    ref = tv_seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    randomise_bn_statistics(ref)
    path = tmp_path / "lraspp.pth"
    torch.save(ref.state_dict(), path)
    model = lraspp_from_torchvision(path).eval()
    assert n_params(model) == 3_221_538  # torchvision's published num_params
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x)["out"], rtol=1e-5, atol=1e-5)


def test_lraspp_low_level_input_is_the_first_stride8_block() -> None:
    model = create_model("lraspp", 5)  # the demo's configuration
    enc = model.encoder
    assert sorted(enc.taps) == [1, 3, 4, 12, 16] and enc.strides == [2, 4, 8, 16, 16]
    assert model.classifier.low_classifier.in_channels == 40
    small = create_model("lraspp", 5, encoder="mobilenet_v3_small").encoder
    assert sorted(small.taps)[2] == 2  # torchvision's stage_indices[-4] of the small model


# --------------------------------------------------------------------------- v3+ and Xception


def test_xception65_matches_timm_aligned_xception(tmp_path) -> None:
    """Same layout and names as timm's port of TF DeepLab's Xception-65: its weights load strictly."""
    ref = timm.create_model("xception65", output_stride=16).eval()
    randomise_bn_statistics(ref)
    path = tmp_path / "xception65.pth"
    torch.save(ref.state_dict(), path)  # includes head.fc, which the encoder drops
    enc = build_encoder("xception65", output_stride=16, weights=str(path)).eval()
    assert enc.channels == [128, 256, 728, 1024, 2048] and enc.strides == [2, 4, 8, 16, 16]
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        ours = enc(x)
        _, theirs = ref.forward_intermediates(x)
    torch.testing.assert_close(ours[-1], theirs[-1])
    # Our taps are TF's separable_conv2_pointwise end points (before the next ReLU), timm's are after it.
    for a, b in zip(ours[:-1], theirs[:-1]):
        torch.testing.assert_close(a.relu(), b)
    assert ours[1].min() < 0


def test_xception_layout() -> None:
    enc = build_encoder("xception65", output_stride=8)
    assert len(enc.blocks) == 3 + 16 + 2
    assert n_params(enc) == 37_867_312  # timm xception65 without its ImageNet classifier
    # At OS8 the entry flow's last module runs at stride 1, the middle flow at rate 2, exit/block2 at 4.
    assert enc.blocks[2].stack.conv3.conv_dw.stride == (1, 1)
    assert enc.blocks[10].stack.conv1.conv_dw.dilation == (2, 2)
    assert enc.blocks[20].stack.conv3.conv_dw.dilation == (4, 4)
    assert enc.blocks[20].shortcut is None and not enc.blocks[20].identity_shortcut  # exit/block2: no skip
    assert isinstance(enc.blocks[20].stack.conv1.act_dw, nn.ReLU)  # BN + ReLU inside its separable convs
    assert enc.preprocessing.mean == (0.5, 0.5, 0.5)
    x71 = build_encoder("xception71", output_stride=8)
    # One state dict for every output stride: the projection shortcut of the stride-1 entry/block5 stays.
    assert x71.blocks[4].shortcut is not None
    assert n_params(x71) == 40_289_736  # timm xception71 without its classifier, as at OS32


def test_xception_imagenet_offline_says_how_to_use_a_file(monkeypatch) -> None:
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("network is unreachable")
        return create(*args, **kwargs)

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"huggingface\.co/timm/xception65\.tf_in1k/\S+safetensors.*its path"):
        build_encoder("xception65", weights="imagenet")


def test_deeplabv3plus_xception71_is_the_published_43_48m() -> None:
    """Auto-DeepLab's Table 2 quotes DeepLabv3+ at 43.48M parameters next to its Cityscapes val 79.55, which
    is DeepLabv3+'s Xception-71 result: aligned Xception-71 with the separable ASPP and decoder at 19
    classes counts 43,477,323, the published figure to its last digit (Xception-71 40.29M, ASPP 3.02M,
    decoder and classifier 0.17M). Xception-65 with the same head is the VOC model, 41.05M."""
    model = create_model("deeplabv3plus", 19, encoder="xception71", separable=True)
    assert model.encoder.channels[model.low_index] == 256  # entry/block2 separable_conv2_pointwise, OS4
    aspp = n_params(model.aspp)
    assert aspp == 524_800 + 3 * (18_432 + 4_096 + 524_288 + 512) + 524_800 + 328_192
    head = aspp + 12_384 + 81_680 + 68_864 + 4_883
    assert n_params(model) == 40_289_736 + head == 43_477_323
    assert round(n_params(model) / 1e4) == 4348  # 43.48M
    x65 = create_model("deeplabv3plus", 19, encoder="xception65", separable=True)
    assert n_params(x65) == 37_867_312 + head


def test_deeplabv3plus_mobilenet_v3_large() -> None:
    model = create_model("deeplabv3plus", 5, encoder="mobilenet_v3_large").eval()
    assert model.aspp.convs[0][0].in_channels == 960
    assert model.low_project[0].in_channels == 24  # last stride-4 block
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 5, 97, 131)


# --------------------------------------------------------------------------- DPC


@pytest.mark.parametrize("in_channels, published", [(2048, 0.81e6), (320, 0.36e6)])
def test_dpc_branch_parameters_match_the_paper(in_channels: int, published: float) -> None:
    cell = DensePredictionCell(in_channels)
    branches = n_params(cell.branches)
    # The paper's module sizes leave out the 1x1 projection of the concatenation.
    assert abs(branches - published) / published < 0.02
    convs = sum(m.weight.numel() for m in cell.branches.modules() if isinstance(m, nn.Conv2d))
    assert convs == in_channels * 9 + in_channels * 256 + 4 * (256 * 9 + 256 * 256)
    assert cell.project[0].in_channels == 1280


def test_dpc_structure_and_rates() -> None:
    model = create_model("deeplabv3plus_dpc", 5, encoder="resnet18")
    cell = model.dpc
    assert cell.inputs == (-1, 0, 1, 0, 0)
    assert [b[0].dilation for b in cell.branches] == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
    assert [b[0].in_channels for b in cell.branches] == [512, 256, 256, 256, 256]
    assert cell.dropout.p == pytest.approx(0.1)
    at8 = create_model("deeplabv3plus_dpc", 5, encoder="resnet18", output_stride=8).dpc
    assert [b[0].dilation for b in at8.branches] == [(2, 12), (36, 30), (12, 6), (2, 2), (12, 42)]
    with pytest.raises(ValueError, match="may read -1"):
        DensePredictionCell(16, branches=((-1, (1, 1)), (1, (1, 1))))


def test_dpc_default_is_the_papers_xception71() -> None:
    """The Cityscapes val 80.85 is DPC on the "modified Xception" (Xception-71) with the v3+ decoder."""
    model = create_model("deeplabv3plus_dpc", 19).eval()
    assert model.encoder.name == "xception71" and model.dpc.branches[0][0].in_channels == 2048
    assert n_params(model) == 41_608_523
    assert isinstance(model.decoder[0][0][0], nn.Conv2d) and model.decoder[0][0][0].groups == 304  # separable
    with torch.no_grad():
        assert model(torch.randn(1, 3, 57, 75)).shape == (1, 19, 57, 75)

