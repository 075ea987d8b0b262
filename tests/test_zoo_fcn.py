"""FCN family: the caffe geometry of FCN-32s/16s/8s (pad 100, ceil pools, crop offsets), their
initialisation, VGG classifier surgery, and parity of fcn_resnet50 with torchvision's."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imseg.models import SegOutput, build_encoder, create_model
from imseg.models.fcn import (
    FCN,
    FCN_CAFFE_PREPROCESSING,
    CaffeMaxPool,
    FCN8sAtOnce,
    FixedBilinearUpsample,
    _crop,
    load_torchvision_fcn,
)
from imseg.models.layers import upsampling_deconv
from imseg.preprocessing import TORCHVISION

# fc6 at 4096 channels is 103M parameters: the registry-wide tests use a slim one.
FAST_KWARGS: dict[str, dict] = {name: {"fc_channels": 32} for name in ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")}

VGG_FCNS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")
K = 5


@lru_cache(maxsize=None)
def slim(name: str) -> FCN:
    torch.manual_seed(0)
    return create_model(name, K, fc_channels=8).eval()


# --------------------------------------------------------------------------- caffe geometry


def _layer_map(m: nn.Module) -> tuple[float, float] | None:
    """(scale, shift) of the map output coordinate -> input coordinate of one layer (caffe.coord_map)."""
    if isinstance(m, nn.Conv2d):
        k, s, p, d = m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0]
        return s, (k - 1) * d / 2 - p
    if isinstance(m, CaffeMaxPool):  # 2x2 / 2; its extra pad is bottom/right only
        return 2, 0.5
    if isinstance(m, nn.ConvTranspose2d):
        k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
        return 1 / s, (p - (k - 1) / 2) / s
    if isinstance(m, FixedBilinearUpsample):
        k, s, p = m.weight.shape[-1], m.factor, m.padding
        return 1 / s, (p - (k - 1) / 2) / s
    return None


def coord_map(layers) -> tuple[float, float]:
    """Compose the layers' maps: a cell x of the last layer's output sits at input coordinate a*x + b."""
    a, b = 1.0, 0.0
    for layer in layers:
        lm = _layer_map(layer)
        if lm is not None:
            a, b = a * lm[0], a * lm[1] + b
    return a, b


def test_caffe_trunk_is_the_released_one() -> None:
    model = slim("fcn8s")
    assert model.geometry == "caffe"
    features = model.encoder.features
    assert features[0].padding == (100, 100) and features[2].padding == (1, 1)
    assert sum(isinstance(m, CaffeMaxPool) for m in features) == 5
    assert not any(isinstance(m, nn.MaxPool2d) for m in features)
    assert model.fc6.kernel_size == (7, 7) and model.fc6.padding == (0, 0)
    assert model.fc7.kernel_size == (1, 1)
    assert model.drop6.p == model.drop7.p == 0.5
    for deconv in (model.upscore2, model.upscore_pool4):
        assert (deconv.kernel_size, deconv.stride, deconv.padding, deconv.bias) == ((4, 4), (2, 2), (0, 0), None)
    assert (model.upscore8.weight.shape[-1], model.upscore8.factor, model.upscore8.padding) == (16, 8, 0)
    assert slim("fcn16s").upscore16.weight.shape[-1] == 32
    assert slim("fcn32s").upscore.weight.shape[-1] == 64


@pytest.mark.parametrize("size", [(1, 1), (5, 8), (33, 31), (64, 96)])
def test_caffe_max_pool_rounds_up_like_ceil_mode(size) -> None:
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(CaffeMaxPool()(x), F.max_pool2d(x, 2, 2, ceil_mode=True))


@pytest.mark.parametrize("name, final", [("fcn32s", 19), ("fcn16s", 27), ("fcn8s", 31), ("fcn8s_atonce", 31)])
def test_crop_offsets_follow_from_the_layer_geometry(name: str, final: int) -> None:
    """The hard-coded offsets are what caffe.coord_map derives from the modules as built."""
    model = slim(name)
    features = list(model.encoder.features)
    pools = [i for i, m in enumerate(features) if isinstance(m, CaffeMaxPool)]
    trunk = features + [model.fc6]
    if name == "fcn32s":
        chain = trunk + [model.upscore]
    else:
        up2 = trunk + [model.upscore2]
        a, b = coord_map(up2)
        a4, b4 = coord_map(features[: pools[3] + 1])
        assert a == a4 == 16 and (b - b4) / 16 == 5  # score_pool4 cropped at 5
        chain = up2 + [model.upscore16] if name == "fcn16s" else up2 + [model.upscore_pool4]
        if name.startswith("fcn8s"):
            a, b = coord_map(chain)
            a3, b3 = coord_map(features[: pools[2] + 1])
            assert a == a3 == 8 and (b - b3) / 8 == 9  # score_pool3 cropped at 9
            chain = chain + [model.upscore8]
    a, b = coord_map(chain)
    assert (a, -b) == (1, final) == (1, model.final_offset)


@pytest.mark.parametrize("name", VGG_FCNS)
def test_any_size_comes_back_at_input_size(name: str) -> None:
    """Tiny and odd sizes here; 97x131 and 64x96 in tests/test_models.py, 360x480 below (slow)."""
    model = slim(name)
    fc6_sizes = []
    hook = model.fc6.register_forward_hook(lambda m, i, o: fc6_sizes.append(tuple(o.shape[-2:])))
    try:
        for size in [(1, 1), (33, 50)]:
            with torch.no_grad():
                assert model(torch.randn(1, 3, *size)).shape == (1, K, *size)
    finally:
        hook.remove()
    # Caffe's sizes: five round-up pools of H + 198, then a 7x7 valid conv.
    assert fc6_sizes == [tuple(-(-(s + 198) // 32) - 6 for s in size) for size in [(1, 1), (33, 50)]]


def test_crop_is_slicing() -> None:
    x = torch.randn(1, 2, 20, 23)
    torch.testing.assert_close(_crop(x, 5, (9, 11)), x[..., 5:14, 5:16])


@pytest.mark.slow
@pytest.mark.parametrize("name", VGG_FCNS)
def test_camvid_size_comes_back(name: str) -> None:
    with torch.no_grad():
        assert slim(name)(torch.randn(1, 3, 360, 480)).shape == (1, K, 360, 480)


# --------------------------------------------------------------------------- layers and init


def test_score_layers_start_at_zero_and_2x_upsamplers_learn() -> None:
    """Paper sec. 4.3 and Caffe's default filler: every class-scoring layer is zero-initialised. fc7 and
    below then learn from the second step on (tests/test_models.py::test_every_parameter_learns)."""
    model = slim("fcn8s")
    for conv in (model.score_fr, model.score_pool4, model.score_pool3):
        assert not conv.weight.any() and not conv.bias.any()
    params = dict(model.named_parameters())
    assert "upscore2.weight" in params and "upscore_pool4.weight" in params
    # The final upsampling is fixed: a buffer, neither a parameter nor checkpoint state.
    assert not any(k.startswith("upscore8") for k in params)
    assert not any(k.startswith("upscore8") for k in model.state_dict())


def test_fcn8s_atonce_scales_pool4_and_pool3_before_scoring() -> None:
    """voc-fcn8s-atonce: fixed Scale layers (x0.01 on pool4, x0.0001 on pool3) in front of the score convs.
    Scoring a scaled map is scoring the map with scaled weights: the at-once net with weights W equals FCN-8s
    with its skip weights times the scales."""
    atonce, reference = (create_model(name, K, fc_channels=8).eval() for name in ("fcn8s_atonce", "fcn8s"))
    assert isinstance(atonce, FCN8sAtOnce) and (atonce.pool4_scale, atonce.pool3_scale) == (0.01, 1e-4)
    assert set(atonce.state_dict()) == set(reference.state_dict())
    state = {k: torch.randn_like(v) if k.startswith(("score_", "fc")) else v for k, v in atonce.state_dict().items()}
    atonce.load_state_dict(state)
    reference.load_state_dict(dict(state, **{"score_pool4.weight": state["score_pool4.weight"] * 0.01,
                                             "score_pool3.weight": state["score_pool3.weight"] * 1e-4}))
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(atonce(x), reference(x), rtol=1e-4, atol=1e-4)


def test_fixed_upsampler_is_the_bilinear_deconv() -> None:
    x = torch.randn(1, 3, 7, 9)
    for factor in (2, 8, 32):
        fixed = FixedBilinearUpsample(3, factor, padding=factor // 2)
        torch.testing.assert_close(fixed(x), upsampling_deconv(3, factor)(x))


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s"])  # fcn8s: tests/test_models.py
def test_fc6_fc7_come_from_vgg_classifier(name: str, tmp_path) -> None:
    fc = 8
    state = build_encoder("vgg16").state_dict()
    classifier = {
        "classifier.0.weight": torch.randn(fc, 512 * 7 * 7),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
    }
    path = tmp_path / "vgg16.pth"
    torch.save({**state, **classifier}, path)
    model = create_model(name, K, encoder_weights=str(path), fc_channels=fc)
    torch.testing.assert_close(model.fc6.weight.detach(), classifier["classifier.0.weight"].view(fc, 512, 7, 7))
    torch.testing.assert_close(model.fc7.bias.detach(), classifier["classifier.3.bias"])
    assert model.encoder.features[0].padding == (100, 100)
    with pytest.warns(UserWarning, match="fc_channels=4"):
        create_model(name, K, encoder_weights=str(path), fc_channels=4)


def test_geometry_choice() -> None:
    padded = create_model("fcn8s", K, fc_channels=8, geometry="padded").eval()
    assert padded.encoder.features[0].padding == (1, 1) and padded.fc6.padding == (3, 3)
    with torch.no_grad():
        assert padded(torch.randn(1, 3, 33, 47)).shape == (1, K, 33, 47)
    assert create_model("fcn16s", K, fc_channels=8, encoder="resnet18").geometry == "padded"
    with pytest.raises(ValueError, match="geometry='padded'"):
        create_model("fcn32s", K, fc_channels=8, encoder="resnet18", geometry="caffe")
    with pytest.raises(ValueError, match="geometry must be one of"):
        create_model("fcn32s", K, fc_channels=8, geometry="same")


def test_preprocessing_follows_the_encoder_weights() -> None:
    assert slim("fcn8s").preprocessing == TORCHVISION
    assert FCN_CAFFE_PREPROCESSING.channel_order == "BGR" and FCN_CAFFE_PREPROCESSING.scale == 1.0
    assert FCN_CAFFE_PREPROCESSING.mean == pytest.approx((104.00698793, 116.66876762, 122.67891434))


@pytest.mark.slow
@pytest.mark.parametrize("name", VGG_FCNS)
def test_paper_parameter_count(name: str) -> None:
    """ARCHITECTURES.md: 134.3M without the fixed deconvs (published: 134M), at 21 classes."""
    model = create_model(name, 21)
    assert model.fc6.weight.shape == (4096, 512, 7, 7)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.3e6) / 134.3e6 < 0.02, n


# --------------------------------------------------------------------------- torchvision FCN-ResNet


def _torchvision_fcn_resnet50(aux: bool) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=aux)
    # Non-trivial BatchNorm statistics, so eval-mode parity means something.
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return tv.eval()


def test_fcn_resnet50_matches_torchvision(tmp_path) -> None:
    tv = _torchvision_fcn_resnet50(aux=True)
    path = tmp_path / "fcn_resnet50.pth"
    torch.save(tv.state_dict(), path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = tv(x)

    ours = create_model("fcn_resnet50", K, aux=True).eval()
    load_torchvision_fcn(ours, path)
    with torch.no_grad():
        got = ours(x)
    assert isinstance(got, SegOutput)
    torch.testing.assert_close(got.out, expected["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.aux, expected["aux"], atol=1e-5, rtol=1e-5)

    # Without an aux head the file's aux weights are skipped (they only serve training).
    plain = create_model("fcn_resnet50", K).eval()
    load_torchvision_fcn(plain, tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected["out"], atol=1e-5, rtol=1e-5)
    # The reverse is missing keys: a loud error.
    with pytest.raises(ValueError, match="missing keys: aux_classifier"):
        load_torchvision_fcn(ours, {k: v for k, v in tv.state_dict().items() if not k.startswith("aux")})


def test_fcn_resnet50_structure_and_parameter_count() -> None:
    """torchvision's meta: 35,322,218 parameters for fcn_resnet50 with aux at 21 classes."""
    model = create_model("fcn_resnet50", 21, aux=True)
    assert sum(p.numel() for p in model.parameters()) == 35_322_218
    assert model.encoder.output_stride == 8
    # torchvision's replace_stride_with_dilation: the first block of a dilated stage keeps the previous
    # dilation, the others take the new one.
    assert model.encoder.layer4[0].conv2.stride == model.encoder.layer3[0].conv2.stride == (1, 1)
    assert model.encoder.layer4[1].conv2.dilation == (4, 4) and model.encoder.layer3[1].conv2.dilation == (2, 2)
    assert [m.out_channels for m in model.classifier.modules() if isinstance(m, nn.Conv2d)] == [512, 21]
    assert [m.out_channels for m in model.aux_classifier.modules() if isinstance(m, nn.Conv2d)] == [256, 21]
    assert [m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)] == [0.1]
    assert model.preprocessing == TORCHVISION


@pytest.mark.slow
def test_fcn_resnet101_parameter_count() -> None:
    model = create_model("fcn_resnet101", 21, aux=True)
    assert sum(p.numel() for p in model.parameters()) == 54_314_346
